//! Attention over a local pattern's block map (NATTEN, tiled NATTEN, Swin, CLEAR, STA) as a
//! module: the map is built once at init.

use std::sync::Arc;

use burn::config::Config;
use burn::module::Module;
use burn::tensor::Tensor;

use super::functional::attention_with_plan;
use crate::canvas::{Canvas, TextSpec, TileShape, TokenOrder, VideoLayout};

use crate::glue::SparseAttentionBackend;
use crate::mask::{AttentionMask, BlockMap, BlockPartition, PatternSpec};
use crate::plan::KernelPlan;
use crate::reference::{AttentionOptions, AttentionOutput};

/// Configuration of [`BlockSparseAttention`].
#[derive(Config, Debug, PartialEq)]
pub struct BlockSparseAttentionConfig {
    /// Latent canvas `[t, h, w]`.
    pub canvas: [usize; 3],
    /// Tile `[t, h, w]` (the unit of tile-major order and of per-tile blocks).
    pub tile: [usize; 3],
    /// The local pattern.
    pub pattern: PatternSpec,
    /// Text tokens before or after the video (default: none). Text is global.
    #[config(default = "TextSpec::none()")]
    pub text: TextSpec,
    /// Order of the video tokens in the input; the map is built for it (default: natural).
    #[config(default = "TokenOrder::Natural")]
    pub order: TokenOrder,
    /// How the sequence is cut into blocks (default: 64 tokens).
    #[config(default = "BlockPartition::Uniform(64)")]
    pub partition: BlockPartition,
    /// Score scale (default: `1 / sqrt(head_dim)`).
    #[config(default = "None")]
    pub scale: Option<f64>,
}

impl BlockSparseAttentionConfig {
    /// Validates the config and builds the block map.
    pub fn init(&self) -> crate::Result<BlockSparseAttention> {
        let layout =
            VideoLayout::new(Canvas::from_slice(&self.canvas)?, TileShape::from_slice(&self.tile)?, self.text)?;
        AttentionOptions { scale: self.scale }.validate()?;
        let mask = AttentionMask::new(layout, self.pattern.clone())?;
        let map = Arc::new(BlockMap::from_mask(&mask, self.order, self.partition)?);
        // The scale is set per call; the plan keeps its kernel arrays between calls.
        Ok(BlockSparseAttention { scale: self.scale, plan: KernelPlan::from_map(map, 1.0) })
    }
}

/// Block-sparse attention over a fixed block map (no parameters).
#[derive(Module, Debug, Clone)]
pub struct BlockSparseAttention {
    #[module(skip)]
    scale: Option<f64>,
    #[module(skip)]
    plan: KernelPlan,
}

impl BlockSparseAttention {
    /// The block map.
    pub fn block_map(&self) -> &BlockMap {
        self.plan.map().expect("built from a block map")
    }

    /// Attention output.
    ///
    /// # Shapes
    /// - q, k `[b, h, n, d]`, v `[b, h, n, dv]`, `n` the map's sequence length
    /// - output `[b, h, n, dv]`
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
    /// - q, k `[b, h, n, d]`, v `[b, h, n, dv]`, bias `[b or 1, h or 1, n]`
    /// - output `[b, h, n, dv]`, lse `[b, h, n]`
    pub fn forward_with<B: SparseAttentionBackend>(
        &self,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        bias: Option<Tensor<B, 3>>,
    ) -> crate::Result<AttentionOutput<B>> {
        let options = AttentionOptions { scale: self.scale };
        let plan = self.plan.with_scale(options.scale_for(q.dims()[3]));
        attention_with_plan(q, k, v, bias, &plan)
    }
}
