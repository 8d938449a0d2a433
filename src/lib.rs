//! # dit-attention
//!
//! Fast sparse attention for video diffusion transformers on [burn]: Sliding Tile Attention,
//! neighbourhood-style local patterns and token merging (ToMe in 3D) and smart attention (Sparse
//! VideoGen), all on one block-sparse flash-attention engine.
//!
//! - [`attention`]: the public API: `dense_attention`, `block_sparse_attention`,
//!   `sliding_tile_attention`, their modules and the swappable [`VideoAttentionConfig`], on every
//!   backend through [`SparseAttentionBackend`] (the CubeCL kernel on `CubeBackend` and `Fusion`,
//!   the references elsewhere, `Autodiff` over either);
//! - [`merge`]: token merging: destinations, matching, `merge` / `unmerge`, proportional
//!   attention, [`TokenMergeAttention`];
//! - [`smart`]: smart attention (Sparse VideoGen): spatial or temporal band per head, profiled
//!   online, [`SmartAttention`];
//! - [`dynamic`]: dynamic block-sparse attention: block masses estimated from sampled tokens,
//!   the key blocks holding a fraction `tau` of them kept, [`DynamicSparseAttention`];
//! - [`combined`]: pattern (cross-frame shared) attention and Combined attention, pattern or
//!   dynamic per head after a dense warm-up, [`CombinedAttention`];
//! - [`dit`]: a host video DiT whose attention is swapped by a serde schedule (by layer, step
//!   and, for STA, head), and the STA mask search that writes such schedules;
//! - [`rng`]: the seeded splitmix64 generator behind every sampled choice;
//! - [`plan`]: the kernel contract (counts and key-block indices per query block);
//! - [`canvas`]: canvases `T x H x W`, tiles, text placement, token orders;
//! - [`permutation`]: the exact natural <-> tile-major permutation (ragged canvases included), as
//!   index arrays and as burn ops;
//! - [`mask`]: mask geometry in plain Rust: token predicates, block maps, exact sparsity and
//!   block statistics, pictures of block maps;
//! - [`reference`](mod@reference): reference attention from burn tensor ops on any backend (dense with bias and
//!   LSE, block-map attention, STA, LSE merge, backward): the oracles of every kernel;
//! - [`glue`]: everything that depends on burn's API details.
//!
//! ```
//! use dit_attention::{AttentionMask, BlockPartition, Canvas, MaskStats, PatternSpec, TextSpec, TileShape,
//!                     TokenOrder, VideoLayout};
//!
//! // HunyuanVideo: 30 x 48 x 80 latent tokens, 6 x 8 x 8 tiles, 256 text tokens after the video.
//! let layout = VideoLayout::new(Canvas::new(30, 48, 80)?, TileShape::new(6, 8, 8)?, TextSpec::after(256))?;
//! let mask = AttentionMask::new(layout, PatternSpec::sta([3, 3, 3]))?;
//! let stats = MaskStats::compute(&mask, TokenOrder::TileMajor, BlockPartition::Uniform(384))?;
//! assert!((stats.sparsity - 0.91).abs() < 1e-12); // the STA paper's 91%
//! assert_eq!(stats.mixed_blocks, 0.0); // tile-major blocks are whole tiles: dense or empty
//! # Ok::<(), dit_attention::DitAttentionError>(())
//! ```
//!
//! Choices the spec leaves open, written down here:
//! - Text is global in every pattern: video queries see all text keys, text queries see all keys.
//! - Blocks never straddle the text / video boundary (each segment is cut on its own).
//! - Tiles need not divide the canvas: edge tiles are partial, and a tile longer than the canvas
//!   is one partial tile. NATTEN and Swin windows larger than the canvas are errors; STA windows
//!   may exceed the tile count (the whole dimension, as the spec says).
//! - Canvases hold fewer than 2^31 tokens (kernels index with u32).
//! - STA mask search: the loss averages over batch, every token (text rows included) and
//!   features; the tolerance is relative to the full output's mean square (the best loss is 0
//!   for a covering window); "cheapest" is the fewest kept video pairs on the canvas, ties to the
//!   lower loss; skipped steps get the smallest odd window covering every tile and count as
//!   sparsity 0 in the overall sparsity; the JSON is one flat object with a `"sparsity"` key
//!   beside the `"<step>_<layer>_<head>"` keys.
//! - The LSE is f32 on the kernel backends and in the input dtype on the reference backends.
//! - The references create every tensor in the dtype of their inputs, never in the device's
//!   default dtype (burn keeps one default per device, shared by e.g. `NdArray<f32>` and
//!   `NdArray<f64>`).

pub mod attention;
pub mod canvas;
pub mod combined;
pub mod dit;
pub mod dynamic;
pub mod error;
pub mod glue;
pub mod mask;
pub mod merge;
pub mod permutation;
pub mod plan;
pub mod reference;
pub mod rng;
pub mod smart;

pub use attention::{
    BlockSparseAttention, BlockSparseAttentionConfig, CallPosition, DenseAttention, DenseAttentionConfig,
    SlidingTileAttention, SlidingTileAttentionConfig, VideoAttention, VideoAttentionConfig, attention_with_plan,
    block_sparse_attention, dense_attention, sliding_tile_attention,
};
pub use canvas::{Canvas, TextPlacement, TextSpec, TileShape, Tiling, Token, TokenOrder, VideoLayout};
pub use combined::{CombinedAttention, CombinedAttentionConfig, CombinedOutput, HeadChoice};
pub use dynamic::{DynamicOutput, DynamicSparseAttention, DynamicSparseAttentionConfig, ThresholdSchedule, Thresholds};
pub use error::{DitAttentionError, Result};
pub use glue::{BackwardGrads, GradInputs, SparseAttentionBackend};
pub use mask::{AttentionMask, BlockKind, BlockMap, BlockPartition, MaskStats, PatternSpec};
pub use merge::{MergeAmount, MergeMode, MergePlan, MergeState, TokenMergeAttention, TokenMergeAttentionConfig};
pub use permutation::{TokenPermutation, to_natural, to_tile_major};
pub use plan::KernelPlan;
pub use reference::{AttentionOptions, AttentionOutput, SCALE_RANGE};
pub use smart::{BandSpec, HeadClass, SmartAttention, SmartAttentionConfig, SmartOutput};
