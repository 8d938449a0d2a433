//! Swapping the attention of a burn DiT that knows nothing about this crate: a plain burn
//! self-attention layer ("before") and the same layer with one field added and one line changed
//! ("after"). With dense attention the two agree to rounding; with STA the swapped layer runs the
//! sparse engine (on Cuda/Wgpu our CubeCL kernel, here the NdArray reference).
//!
//! ```text
//! cargo run --release --example swap_attention
//! ```

use burn::backend::NdArray;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::Distribution;
use burn::tensor::Tensor;
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use dit_attention::{
    DenseAttentionConfig, SlidingTileAttentionConfig, SparseAttentionBackend, TextSpec, VideoAttention,
    VideoAttentionConfig,
};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Before: a user's joint self-attention, softmax attention written with burn ops.
#[derive(Module, Debug)]
struct UserAttention<B: Backend> {
    qkv: Linear<B>,
    out: Linear<B>,
    heads: usize,
}

impl<B: Backend> UserAttention<B> {
    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, n, c] = x.dims();
        let d = c / self.heads;
        let qkv = self.qkv.forward(x).reshape([b, n, 3, self.heads, d]).permute([2, 0, 3, 1, 4]);
        let part = |i: usize| qkv.clone().narrow(0, i, 1).reshape([b, self.heads, n, d]);
        let (q, k, v) = (part(0), part(1), part(2));
        let scores = q.matmul(k.swap_dims(2, 3)) / (d as f64).sqrt();
        let o = softmax(scores, 3).matmul(v); // <- the line the swap replaces
        self.out.forward(o.swap_dims(1, 2).reshape([b, n, c]))
    }
}

/// After: the same layer, one field added (no parameters: the weights load unchanged).
#[derive(Module, Debug)]
struct SwappedAttention<B: Backend> {
    qkv: Linear<B>,
    out: Linear<B>,
    heads: usize,
    #[module(skip)] // not part of the record: saved weights of the layer above load unchanged
    core: VideoAttention, // + the attention core, chosen by configuration
}

impl<B: SparseAttentionBackend> SwappedAttention<B> {
    fn forward(&self, x: Tensor<B, 3>) -> dit_attention::Result<Tensor<B, 3>> {
        let [b, n, c] = x.dims();
        let d = c / self.heads;
        let qkv = self.qkv.forward(x).reshape([b, n, 3, self.heads, d]).permute([2, 0, 3, 1, 4]);
        let part = |i: usize| qkv.clone().narrow(0, i, 1).reshape([b, self.heads, n, d]);
        let (q, k, v) = (part(0), part(1), part(2));
        let o = self.core.forward(q, k, v)?; // <- the swapped line
        Ok(self.out.forward(o.swap_dims(1, 2).reshape([b, n, c])))
    }
}

fn rel(a: Tensor<NdArray, 3>, b: Tensor<NdArray, 3>) -> f32 {
    let diff: f32 = (a - b.clone()).square().sum().sqrt().into_scalar();
    diff / b.square().sum().sqrt().into_scalar()
}

fn main() -> Res<()> {
    type B = NdArray<f32>;
    let device = Default::default();
    // A HunyuanVideo-like layout, small: 8 x 16 x 16 latent tokens, 4 text tokens after them.
    let (canvas, text, hidden, heads) = ([8, 16, 16], 4, 128, 4);
    let n = canvas.iter().product::<usize>() + text;
    let user = UserAttention::<B> {
        qkv: LinearConfig::new(hidden, 3 * hidden).init(&device),
        out: LinearConfig::new(hidden, hidden).init(&device),
        heads,
    };
    let x = Tensor::<B, 3>::random([1, n, hidden], Distribution::Normal(0.0, 1.0), &device);
    let want = user.forward(x.clone());

    let swap = |core: VideoAttentionConfig| -> Res<SwappedAttention<B>> {
        Ok(SwappedAttention { qkv: user.qkv.clone(), out: user.out.clone(), heads, core: core.init()? })
    };
    let dense = swap(VideoAttentionConfig::Dense(DenseAttentionConfig::new()))?;
    let dense_diff = rel(dense.forward(x.clone())?, want.clone());
    println!("dense core   vs the user's softmax: relative difference {dense_diff:.2e}");
    if dense_diff > 1e-5 {
        return Err(format!("the dense core should reproduce the user's softmax, differs by {dense_diff:.2e}").into());
    }
    let sta = SlidingTileAttentionConfig::new(canvas, [2, 4, 4], vec![[3, 3, 3]]).with_text(TextSpec::after(text));
    let sparse = swap(VideoAttentionConfig::SlidingTile(sta))?;
    println!("STA 3x3x3    vs the user's softmax: relative difference {:.2e}", rel(sparse.forward(x.clone())?, want));
    Ok(())
}
