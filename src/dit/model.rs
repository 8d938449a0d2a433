//! [`VideoDit`]: the host model. Latent video + timestep + text features in, the predicted velocity
//! (or noise, whatever it was trained on) out; attention from the run's schedule.

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::Tensor;
use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;

use super::block::DitBlock;
use super::config::VideoDitConfig;
use super::layers::{layer_norm, linear, modulate, timestep_features};
use super::patch::{patch_canvas, patchify, unpatchify};
use super::rope::Rope3d;
use super::schedule::AttentionContext;
use crate::canvas::{TextPlacement, TextSpec};
use crate::error::DitAttentionError;
use crate::glue::SparseAttentionBackend;

/// A video diffusion transformer whose attention is chosen by an
/// [`AttentionSchedule`](super::AttentionSchedule) per layer, step and (for STA) head.
#[derive(Module, Debug)]
pub struct VideoDit<B: Backend> {
    patch_embed: Linear<B>,
    text_embed: Linear<B>,
    text_pool: Linear<B>,
    time_in: Linear<B>,
    time_out: Linear<B>,
    blocks: Vec<DitBlock<B>>,
    final_modulation: Linear<B>,
    final_proj: Linear<B>,
    #[module(skip)]
    config: VideoDitConfig,
}

impl<B: Backend> VideoDit<B> {
    pub(crate) fn new(config: &VideoDitConfig, device: &B::Device) -> Self {
        let (h, zero) = (config.hidden, config.zero_init);
        let patch_dim = config.channels * config.patch.iter().product::<usize>();
        Self {
            patch_embed: linear(patch_dim, h, false, device),
            text_embed: linear(config.text_dim, h, false, device),
            text_pool: linear(config.text_dim, h, false, device),
            time_in: linear(config.time_freq_dim, h, false, device),
            time_out: linear(h, h, false, device),
            blocks: (0..config.depth).map(|_| DitBlock::new(config, device)).collect(),
            final_modulation: linear(h, 2 * h, zero, device),
            final_proj: linear(h, patch_dim, zero, device),
            config: config.clone(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &VideoDitConfig {
        &self.config
    }

    /// The token canvas of a latent of spatial dims `[T, H, W]`.
    pub fn canvas(&self, dims: [usize; 3]) -> crate::Result<[usize; 3]> {
        patch_canvas(dims, self.config.patch)
    }

    /// The text layout of the joint sequence for `len` text tokens.
    pub fn text_spec(&self, len: usize) -> TextSpec {
        TextSpec { len, placement: self.config.text_placement }
    }
}

impl<B: SparseAttentionBackend> VideoDit<B> {
    /// One denoising evaluation.
    ///
    /// # Shapes
    /// - latent `[b, channels, T, H, W]` with the patch dividing `T, H, W`
    /// - timesteps `[b]` in `[0, 1]`
    /// - text `[b, l, text_dim]` (`l` may be 0)
    /// - output `[b, channels, T, H, W]`
    pub fn forward(
        &self,
        latent: Tensor<B, 5>,
        timesteps: Tensor<B, 1>,
        text: Tensor<B, 3>,
        ctx: &mut AttentionContext<'_, B>,
    ) -> crate::Result<Tensor<B, 5>> {
        let c = &self.config;
        let [b, channels, t, h, w] = latent.dims();
        let [tb, l, text_dim] = text.dims();
        if channels != c.channels || timesteps.dims()[0] != b || tb != b || text_dim != c.text_dim {
            return Err(DitAttentionError::Invalid(format!(
                "VideoDit expects latent [b, {}, T, H, W], timesteps [b] and text [b, l, {}]; got latent {:?}, timesteps {:?}, text {:?}",
                c.channels,
                c.text_dim,
                latent.dims(),
                timesteps.dims(),
                text.dims()
            )));
        }
        if let Some(layer) = ctx.schedule().config().max_layer()
            && layer >= c.depth
        {
            return Err(DitAttentionError::Invalid(format!(
                "the attention schedule names layer {layer} but the model has {} layers",
                c.depth
            )));
        }
        let canvas = patch_canvas([t, h, w], c.patch)?;
        let video = self.patch_embed.forward(patchify(latent, c.patch)?);
        let n_video = video.dims()[1];

        let mut cond = self.time_out.forward(silu(self.time_in.forward(timestep_features(timesteps, c.time_freq_dim))));
        if l > 0 {
            cond = cond + self.text_pool.forward(text.clone().mean_dim(1).reshape([b, c.text_dim]));
        }
        let text_spec = self.text_spec(l);
        let mut x = match (l, c.text_placement) {
            (0, _) => video,
            (_, TextPlacement::Before) => Tensor::cat(vec![self.text_embed.forward(text), video], 1),
            (_, TextPlacement::After) => Tensor::cat(vec![video, self.text_embed.forward(text)], 1),
        };
        let rope = Rope3d::new(canvas, text_spec, c.rope(), c.rope_theta, &x.device(), x.dtype())?;
        for (layer, block) in self.blocks.iter().enumerate() {
            x = block.forward(x, cond.clone(), &rope, layer, ctx)?;
        }

        let video_start = if c.text_placement == TextPlacement::Before { l } else { 0 };
        let x = x.narrow(1, video_start, n_video);
        let m = self.final_modulation.forward(silu(cond)).chunk(2, 1);
        let x = modulate(layer_norm(x), m[0].clone(), m[1].clone());
        unpatchify(self.final_proj.forward(x), canvas, c.patch, c.channels)
    }
}
