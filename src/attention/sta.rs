//! Sliding Tile Attention (spec section 2) on the engine: the block map of whole tiles, the
//! tile-major permutation when the tokens come in natural order, and the dense fast path when
//! the windows cover the canvas.

use std::sync::Arc;

use burn::config::Config;
use burn::module::Module;
use burn::tensor::Tensor;

use super::functional::attention_with_plan;
use crate::canvas::{Canvas, TextSpec, TileShape, TokenOrder, VideoLayout};
use crate::error::DitAttentionError;
use crate::glue::SparseAttentionBackend;
use crate::mask::{AttentionMask, BlockMap, BlockPartition, PatternSpec};
use crate::permutation::TokenPermutation;
use crate::plan::KernelPlan;
use crate::reference::{AttentionOptions, AttentionOutput};

/// Configuration of [`SlidingTileAttention`].
#[derive(Config, Debug, PartialEq)]
pub struct SlidingTileAttentionConfig {
    /// Latent canvas `[t, h, w]` (use 1 for missing dimensions: `[1, h, w]` for images).
    pub canvas: [usize; 3],
    /// Tile `[t, h, w]` in tokens; edge tiles may be partial.
    pub tile: [usize; 3],
    /// Windows in tiles, odd per dimension: one shared by all heads, or one per head.
    pub windows: Vec<[usize; 3]>,
    /// Text tokens before or after the video (default: none). Text is global.
    #[config(default = "TextSpec::none()")]
    pub text: TextSpec,
    /// Order of the video tokens in the input (default: natural; tile-major input skips the
    /// permutation).
    #[config(default = "TokenOrder::Natural")]
    pub order: TokenOrder,
    /// Score scale (default: `1 / sqrt(head_dim)`).
    #[config(default = "None")]
    pub scale: Option<f64>,
}

impl SlidingTileAttentionConfig {
    /// The layout, validated.
    pub fn layout(&self) -> crate::Result<VideoLayout> {
        VideoLayout::new(
            Canvas::new(self.canvas[0], self.canvas[1], self.canvas[2])?,
            TileShape::from_slice(&self.tile)?,
            self.text,
        )
    }

    /// Validates the config and prepares the block map (once; modules keep it).
    pub fn init(&self) -> crate::Result<SlidingTileAttention> {
        let layout = self.layout()?;
        let mask = AttentionMask::new(layout, PatternSpec::Sta { windows: self.windows.clone() })?;
        // Fast path: windows covering every tile are dense attention, in any token order.
        let plan = if mask.covers_everything() {
            None
        } else {
            let map = Arc::new(BlockMap::from_mask(&mask, TokenOrder::TileMajor, BlockPartition::PerTile)?);
            // The scale is set per call (it may depend on the head dim).
            let plan = KernelPlan::sta(map, &self.windows, 1.0)?;
            // Natural-order input: kernels gather rows through the permutation as they load them.
            Some(match self.order {
                TokenOrder::Natural => match TokenPermutation::to_tile_major(&layout) {
                    permutation if permutation.is_identity() => plan,
                    permutation => plan.with_gather(Arc::new(permutation))?,
                },
                TokenOrder::TileMajor => plan,
            })
        };
        Ok(SlidingTileAttention { config: self.clone(), prepared: Prepared { layout, mask_heads: mask.heads(), plan } })
    }
}

/// What [`SlidingTileAttentionConfig::init`] prepares.
#[derive(Debug, Clone)]
struct Prepared {
    layout: VideoLayout,
    mask_heads: usize,
    /// `None` on the dense fast path.
    plan: Option<KernelPlan>,
}

/// Sliding Tile Attention as a module (no parameters): swap it in for a DiT's attention core.
#[derive(Module, Debug, Clone)]
pub struct SlidingTileAttention {
    #[module(skip)]
    config: SlidingTileAttentionConfig,
    #[module(skip)]
    prepared: Prepared,
}

impl SlidingTileAttention {
    /// The configuration.
    pub fn config(&self) -> &SlidingTileAttentionConfig {
        &self.config
    }

    /// The prepared block map (`None` when the windows cover the canvas: dense attention).
    pub fn block_map(&self) -> Option<&BlockMap> {
        self.prepared.plan.as_ref().and_then(|p| p.map()).map(|m| m.as_ref())
    }

    /// Attention output.
    ///
    /// # Shapes
    /// - q, k `[b, h, n, d]`, v `[b, h, n, dv]`, `n` = canvas tokens + text tokens, video tokens
    ///   in the configured order
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
        let p = &self.prepared;
        p.layout.check_seq_len(q.dims()[2])?;
        p.layout.check_seq_len(k.dims()[2])?;
        let heads = q.dims()[1];
        if p.mask_heads != 1 && p.mask_heads != heads {
            return Err(DitAttentionError::Invalid(format!(
                "the STA config has {} per-head windows but the tensors have {heads} heads",
                p.mask_heads
            )));
        }
        let options = AttentionOptions { scale: self.config.scale };
        options.validate()?;
        let scale = options.scale_for(q.dims()[3]);
        let plan = match &p.plan {
            Some(plan) => plan.with_scale(scale),
            None => KernelPlan::dense(q.dims()[2], k.dims()[2], scale),
        };
        attention_with_plan(q, k, v, bias, &plan)
    }
}

/// Sliding Tile Attention in one call (prepares the block map each time; keep a
/// [`SlidingTileAttention`] module to prepare it once).
///
/// # Shapes
/// - q, k `[b, h, n, d]`, v `[b, h, n, dv]`, bias `[b or 1, h or 1, n]`
/// - output `[b, h, n, dv]`, lse `[b, h, n]`
pub fn sliding_tile_attention<B: SparseAttentionBackend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    config: &SlidingTileAttentionConfig,
    bias: Option<Tensor<B, 3>>,
) -> crate::Result<AttentionOutput<B>> {
    config.init()?.forward_with(q, k, v, bias)
}
