//! One DiT block: adaLN-Zero modulated joint self-attention (QK norm, 3D rotary) and MLP.

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::Tensor;
use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;

use super::config::VideoDitConfig;
use super::layers::{HeadNorm, gelu_tanh, layer_norm, linear, modulate};
use super::rope::Rope3d;
use super::schedule::AttentionContext;
use crate::glue::SparseAttentionBackend;

/// A transformer block whose attention core comes from the run's schedule.
#[derive(Module, Debug)]
pub struct DitBlock<B: Backend> {
    modulation: Linear<B>,
    qkv: Linear<B>,
    q_norm: Option<HeadNorm<B>>,
    k_norm: Option<HeadNorm<B>>,
    out: Linear<B>,
    mlp_in: Linear<B>,
    mlp_out: Linear<B>,
    #[module(skip)]
    heads: usize,
}

impl<B: Backend> DitBlock<B> {
    pub(crate) fn new(config: &VideoDitConfig, device: &B::Device) -> Self {
        let (h, zero) = (config.hidden, config.zero_init);
        let norm = || config.qk_norm.then(|| HeadNorm::new(config.head_dim(), device));
        Self {
            modulation: linear(h, 6 * h, zero, device),
            qkv: linear(h, 3 * h, false, device),
            q_norm: norm(),
            k_norm: norm(),
            out: linear(h, h, false, device),
            mlp_in: linear(h, config.mlp_width(), false, device),
            mlp_out: linear(config.mlp_width(), h, false, device),
            heads: config.heads,
        }
    }
}

impl<B: SparseAttentionBackend> DitBlock<B> {
    /// # Shapes
    /// - x `[b, n, hidden]` (the joint sequence), cond `[b, hidden]`, output `[b, n, hidden]`
    pub(crate) fn forward(
        &self,
        x: Tensor<B, 3>,
        cond: Tensor<B, 2>,
        rope: &Rope3d<B>,
        layer: usize,
        ctx: &mut AttentionContext<'_, B>,
    ) -> crate::Result<Tensor<B, 3>> {
        let [b, n, hidden] = x.dims();
        let (heads, d) = (self.heads, hidden / self.heads);
        let m = self.modulation.forward(silu(cond)).chunk(6, 1);
        let [shift1, scale1, gate1, shift2, scale2, gate2]: [Tensor<B, 2>; 6] =
            m.try_into().expect("chunk(6) of a width 6 * hidden gives six parts");

        let y = modulate(layer_norm(x.clone()), shift1, scale1);
        let qkv = self.qkv.forward(y).reshape([b, n, 3, heads, d]).permute([2, 0, 3, 1, 4]);
        let part = |i: usize| qkv.clone().narrow(0, i, 1).reshape([b, heads, n, d]);
        let (mut q, mut k, v) = (part(0), part(1), part(2));
        if let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm) {
            q = qn.forward(q);
            k = kn.forward(k);
        }
        let o = ctx.attend(layer, rope.apply(q)?, rope.apply(k)?, v)?;
        let o = self.out.forward(o.swap_dims(1, 2).reshape([b, n, hidden]));
        let x = x + o * gate1.unsqueeze_dim::<3>(1);

        let y = modulate(layer_norm(x.clone()), shift2, scale2);
        let y = self.mlp_out.forward(gelu_tanh(self.mlp_in.forward(y)));
        Ok(x + y * gate2.unsqueeze_dim::<3>(1))
    }
}
