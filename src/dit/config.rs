//! [`VideoDitConfig`]: the host model's dimensions, from a tiny CPU model to HunyuanVideo's width.

use burn::config::Config;
use burn::tensor::backend::Backend;

use super::model::VideoDit;
use super::rope::{check_rope_dims, default_rope_dims};
use crate::canvas::TextPlacement;
use crate::error::DitAttentionError;

/// Configuration of a [`VideoDit`]: 3D patchify, joint text + video self-attention with 3D rotary
/// embedding, adaLN-Zero modulation from the timestep (plus pooled text), MLP, unpatchify.
#[derive(Config, Debug, PartialEq)]
pub struct VideoDitConfig {
    /// Latent channels (in and out).
    pub channels: usize,
    /// Model width.
    pub hidden: usize,
    /// Attention heads (`hidden / heads` is the head dim).
    pub heads: usize,
    /// Transformer blocks.
    pub depth: usize,
    /// Width of the text features the model is conditioned on.
    pub text_dim: usize,
    /// Patch `[t, h, w]` in latent pixels (default `[1, 2, 2]`, HunyuanVideo's).
    #[config(default = "[1, 2, 2]")]
    pub patch: [usize; 3],
    /// Text before the video (CogVideoX) or after it (HunyuanVideo, the default).
    #[config(default = "TextPlacement::After")]
    pub text_placement: TextPlacement,
    /// MLP width over model width (default 4).
    #[config(default = 4.0)]
    pub mlp_ratio: f64,
    /// Rotary widths `[t, h, w]`, even, summing to the head dim (default: a quarter for time,
    /// the rest split between height and width; HunyuanVideo uses `[16, 56, 56]`).
    #[config(default = "None")]
    pub rope_dims: Option<[usize; 3]>,
    /// Rotary base (default 10000).
    #[config(default = 10000.0)]
    pub rope_theta: f64,
    /// Sinusoidal features of the timestep (default 256).
    #[config(default = 256)]
    pub time_freq_dim: usize,
    /// RMS-normalise queries and keys per head (default true, as HunyuanVideo and CogVideoX).
    #[config(default = true)]
    pub qk_norm: bool,
    /// adaLN-Zero: modulation and output layers start at zero, so every block starts as the
    /// identity (default true; false gives a random map, for tests of the attention path).
    #[config(default = true)]
    pub zero_init: bool,
}

impl VideoDitConfig {
    /// A small model for CPU work: 4 heads of 16, 4 blocks.
    pub fn tiny(channels: usize, text_dim: usize) -> Self {
        Self::new(channels, 64, 4, 4, text_dim)
    }

    /// HunyuanVideo's block width: 24 heads of 128, rotary `[16, 56, 56]`, 16 latent channels,
    /// 4096-wide text features, text after the video.
    pub fn hunyuan_width(depth: usize) -> Self {
        Self::new(16, 3072, 24, depth, 4096).with_rope_dims(Some([16, 56, 56]))
    }

    /// Head dim.
    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads.max(1)
    }

    /// Rotary widths in use.
    pub fn rope(&self) -> [usize; 3] {
        self.rope_dims.unwrap_or_else(|| default_rope_dims(self.head_dim()))
    }

    /// MLP hidden width.
    pub fn mlp_width(&self) -> usize {
        ((self.hidden as f64 * self.mlp_ratio).round() as usize).max(1)
    }

    /// Checks every dimension; errors name the values.
    pub fn validate(&self) -> crate::Result<()> {
        let positive = [
            ("channels", self.channels),
            ("hidden", self.hidden),
            ("heads", self.heads),
            ("depth", self.depth),
            ("text_dim", self.text_dim),
            ("time_freq_dim", self.time_freq_dim),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(DitAttentionError::Invalid(format!("VideoDitConfig::{name} must be at least 1, got 0")));
        }
        if self.patch.contains(&0) {
            return Err(DitAttentionError::Invalid(format!("the patch {:?} has a zero dimension", self.patch)));
        }
        if !self.hidden.is_multiple_of(self.heads) {
            return Err(DitAttentionError::Invalid(format!(
                "hidden {} is not a multiple of heads {}",
                self.hidden, self.heads
            )));
        }
        if !self.time_freq_dim.is_multiple_of(2) {
            return Err(DitAttentionError::Invalid(format!(
                "time_freq_dim must be even (sines and cosines), got {}",
                self.time_freq_dim
            )));
        }
        if !(self.mlp_ratio.is_finite() && self.mlp_ratio > 0.0) {
            return Err(DitAttentionError::Invalid(format!("mlp_ratio must be positive, got {}", self.mlp_ratio)));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 1.0) {
            return Err(DitAttentionError::Invalid(format!("rope_theta must exceed 1, got {}", self.rope_theta)));
        }
        check_rope_dims(self.rope(), self.head_dim())
    }

    /// Validates the config and initialises the weights.
    pub fn init<B: Backend>(&self, device: &B::Device) -> crate::Result<VideoDit<B>> {
        self.validate()?;
        Ok(VideoDit::new(self, device))
    }
}
