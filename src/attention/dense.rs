//! Dense attention as a module, the baseline every sparse variant is swapped against.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::Tensor;

use super::functional::dense_attention;

use crate::glue::SparseAttentionBackend;
use crate::reference::{AttentionOptions, AttentionOutput};

/// Configuration of [`DenseAttention`].
#[derive(Config, Debug, PartialEq)]
pub struct DenseAttentionConfig {
    /// Score scale (default: `1 / sqrt(head_dim)`).
    #[config(default = "None")]
    pub scale: Option<f64>,
}

impl DenseAttentionConfig {
    /// Validates the config.
    pub fn init(&self) -> crate::Result<DenseAttention> {
        AttentionOptions { scale: self.scale }.validate()?;
        Ok(DenseAttention { scale: self.scale })
    }
}

/// Dense softmax attention (no parameters), on the engine's kernel where the backend has one.
#[derive(Module, Debug, Clone)]
pub struct DenseAttention {
    #[module(skip)]
    scale: Option<f64>,
}

impl DenseAttention {
    /// Attention output.
    ///
    /// # Shapes
    /// - q `[b, h, nq, d]`, k `[b, h, nk, d]`, v `[b, h, nk, dv]`
    /// - output `[b, h, nq, dv]`
    pub fn forward<B: SparseAttentionBackend>(
        &self,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
    ) -> crate::Result<Tensor<B, 4>> {
        Ok(self.forward_with(q, k, v, None)?.output)
    }

    /// Output and LSE, with an optional per-key bias.
    ///
    /// # Shapes
    /// - q `[b, h, nq, d]`, k `[b, h, nk, d]`, v `[b, h, nk, dv]`, bias `[b or 1, h or 1, nk]`
    /// - output `[b, h, nq, dv]`, lse `[b, h, nq]`
    pub fn forward_with<B: SparseAttentionBackend>(
        &self,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        bias: Option<Tensor<B, 3>>,
    ) -> crate::Result<AttentionOutput<B>> {
        dense_attention(q, k, v, bias, AttentionOptions { scale: self.scale })
    }
}
