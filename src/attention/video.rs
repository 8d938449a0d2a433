//! One configuration enum, one module enum: swap a DiT's attention by changing its config.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::Tensor;

use super::block_sparse::{BlockSparseAttention, BlockSparseAttentionConfig};
use super::dense::{DenseAttention, DenseAttentionConfig};
use super::sta::{SlidingTileAttention, SlidingTileAttentionConfig};

use crate::combined::{CombinedAttention, CombinedAttentionConfig};
use crate::dynamic::{DynamicSparseAttention, DynamicSparseAttentionConfig};
use crate::error::DitAttentionError;
use crate::glue::SparseAttentionBackend;
use crate::merge::{MergeState, TokenMergeAttention, TokenMergeAttentionConfig};
use crate::reference::AttentionOutput;
use crate::smart::{SmartAttention, SmartAttentionConfig};

/// Where a call sits in a denoising run: variants with a warm-up or per-call sampling read it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct CallPosition {
    /// Transformer layer (block) index.
    pub layer: usize,
    /// Denoising step index.
    pub step: usize,
}

impl CallPosition {
    /// Layer `layer` at denoising step `step`.
    pub fn new(layer: usize, step: usize) -> Self {
        Self { layer, step }
    }
}

/// Which attention a video DiT uses.
#[derive(Config, Debug, PartialEq)]
#[non_exhaustive]
pub enum VideoAttentionConfig {
    /// Dense attention.
    Dense(DenseAttentionConfig),
    /// Sliding Tile Attention.
    SlidingTile(SlidingTileAttentionConfig),
    /// A local pattern's block map.
    BlockSparse(BlockSparseAttentionConfig),
    /// Token merging (keys/values, or full with the output unmerged).
    TokenMerge(TokenMergeAttentionConfig),
    /// Smart attention: spatial or temporal band per head, profiled online.
    Smart(SmartAttentionConfig),
    /// Dynamic block-sparse attention: the key blocks holding most of each query block's
    /// estimated mass.
    Dynamic(DynamicSparseAttentionConfig),
    /// Combined attention: dense warm-up, then pattern or dynamic attention per head.
    Combined(CombinedAttentionConfig),
}

impl VideoAttentionConfig {
    /// Validates the config and prepares the module.
    pub fn init(&self) -> crate::Result<VideoAttention> {
        Ok(match self {
            VideoAttentionConfig::Dense(c) => VideoAttention::Dense(c.init()?),
            VideoAttentionConfig::SlidingTile(c) => VideoAttention::SlidingTile(c.init()?),
            VideoAttentionConfig::BlockSparse(c) => VideoAttention::BlockSparse(c.init()?),
            VideoAttentionConfig::TokenMerge(c) => VideoAttention::TokenMerge(c.init()?),
            VideoAttentionConfig::Smart(c) => VideoAttention::Smart(c.init()?),
            VideoAttentionConfig::Dynamic(c) => VideoAttention::Dynamic(c.init()?),
            VideoAttentionConfig::Combined(c) => VideoAttention::Combined(c.init()?),
        })
    }
}

/// The attention core of a video DiT block, one of the engine's variants.
// Built once per layer and never moved in a hot loop: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug, Clone)]
#[non_exhaustive]
pub enum VideoAttention {
    /// Dense attention.
    Dense(DenseAttention),
    /// Sliding Tile Attention.
    SlidingTile(SlidingTileAttention),
    /// A local pattern's block map.
    BlockSparse(BlockSparseAttention),
    /// Token merging.
    TokenMerge(TokenMergeAttention),
    /// Smart attention.
    Smart(SmartAttention),
    /// Dynamic block-sparse attention.
    Dynamic(DynamicSparseAttention),
    /// Combined attention.
    Combined(CombinedAttention),
}

impl VideoAttention {
    /// Attention output.
    ///
    /// # Shapes
    /// - q, k `[b, h, n, d]`, v `[b, h, n, dv]` (dense: k and v may have another length)
    /// - output `[b, h, n, dv]`
    pub fn forward<B: SparseAttentionBackend>(
        &self,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
    ) -> crate::Result<Tensor<B, 4>> {
        Ok(self.forward_with(q, k, v, None)?.output)
    }

    /// Output and LSE, with an optional per-key bias (token merging takes none: its keys are
    /// merged, and it adds its own `log(size)` bias), for a call outside any schedule (no
    /// warm-up). Token merging matches on every call here; use
    /// [`TokenMergeAttention::forward_with_state`] to reuse a matching.
    ///
    /// # Shapes
    /// - q, k `[b, h, n, d]`, v `[b, h, n, dv]`, bias `[b or 1, h or 1, n]`
    /// - output `[b, h, n, dv]`, lse `[b, h, n]`
    pub fn forward_with<B: SparseAttentionBackend>(
        &self,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        bias: Option<Tensor<B, 3>>,
    ) -> crate::Result<AttentionOutput<B>> {
        self.forward_at(q, k, v, bias, None)
    }

    /// [`forward_with`](Self::forward_with) for a call at `position` (layer, denoising step):
    /// smart attention runs dense in its warm-up and samples its rows per position; dynamic
    /// attention takes its step's thresholds and samples its tokens per position; combined
    /// attention runs dense in its warm-up steps.
    ///
    /// # Shapes
    /// - q, k `[b, h, n, d]`, v `[b, h, n, dv]`, bias `[b or 1, h or 1, n]`
    /// - output `[b, h, n, dv]`, lse `[b, h, n]`
    pub fn forward_at<B: SparseAttentionBackend>(
        &self,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        bias: Option<Tensor<B, 3>>,
        position: Option<CallPosition>,
    ) -> crate::Result<AttentionOutput<B>> {
        match self {
            VideoAttention::Smart(m) => {
                let out = m.forward_at(q, k, v, bias, position)?;
                Ok(AttentionOutput { output: out.output, lse: out.lse })
            }
            VideoAttention::Dynamic(m) => {
                let out = m.forward_at(q, k, v, bias, position)?;
                Ok(AttentionOutput { output: out.output, lse: out.lse })
            }
            VideoAttention::Combined(m) => {
                if bias.is_some() {
                    return Err(DitAttentionError::Invalid(
                        "combined attention takes no per-key bias (its pattern heads mix whole frames)".into(),
                    ));
                }
                let out = m.forward_at(q, k, v, position)?;
                Ok(AttentionOutput { output: out.output, lse: out.lse })
            }
            VideoAttention::Dense(m) => m.forward_with(q, k, v, bias),
            VideoAttention::SlidingTile(m) => m.forward_with(q, k, v, bias),
            VideoAttention::BlockSparse(m) => m.forward_with(q, k, v, bias),
            VideoAttention::TokenMerge(m) => {
                if bias.is_some() {
                    return Err(DitAttentionError::Invalid(
                        "token merging takes no per-key bias (it merges the keys and adds log(size) itself)".into(),
                    ));
                }
                m.forward_with_state(q, k, v, None, &mut MergeState::new())
            }
        }
    }
}
