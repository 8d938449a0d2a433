//! Dynamic block-sparse attention (spec section 8): per call, the mass of every (query block,
//! key block) pair is estimated from a few sampled tokens per block, and each query block keeps
//! the fewest key blocks holding a fraction `tau` of its mass (clamped, plus sink blocks).
//!
//! - [`DynamicSparseAttentionConfig`] -> [`DynamicSparseAttention`]: the module;
//! - [`Thresholds`], [`ThresholdSchedule`]: `tau`, `min_ratio`, `max_ratio`, constant or over
//!   denoising steps;
//! - [`select_blocks`]: the selection rule on one row of masses (the kernels' contract);
//! - [`sample_positions`]: the sampled tokens of every block.
//!
//! The masses come from the attention engine over the sampled tokens (values = one-hot block
//! membership, so no score matrix is written). On the CubeCL backends the selection runs as one
//! kernel per (batch-head, query block) (`dit_attention_kernels::dynamic`), and the attention
//! reads the kept blocks where the kernel wrote them.

mod attention;
mod masses;
mod schedule;
mod select;

pub use attention::{DynamicOutput, DynamicSparseAttention, DynamicSparseAttentionConfig};
pub use schedule::{ThresholdSchedule, Thresholds};
pub(crate) use select::select_reference;
pub use select::{BlockBudget, sample_positions, select_blocks};
