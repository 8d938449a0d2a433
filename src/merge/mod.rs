//! Token merging for video DiTs (ToMe in 3D, spec section 5).
//!
//! - [`Destinations`]: frame 0 plus one (seeded random, or first) token per `st x sy x sx` box of
//!   the later frames; every other video token is a source; text never merges.
//! - [`MergeLayout`]: the merged sequence (text in place, destinations, unmerged sources).
//! - [`MergePlan`]: cosine matching of sources to destinations, top-`r` selection, then
//!   `merge` / `unmerge` of any tensor laid out like the sequence and the sizes for proportional
//!   attention. On CubeCL backends the matching, the merge and the unmerge run as kernels
//!   (`dit_attention_kernels::merge`): the unit metric in one pass, the cosine scores fused with
//!   each source's best destination (tensor cores on CUDA), so the score matrix is never formed;
//!   elsewhere the scores are one burn matmul ([`unit_scores`]).
//! - [`TokenMergeAttention`]: attention with merged keys/values (KV-only, the default) or merged
//!   queries too with the output unmerged (full), `log(size)` per-key bias, matching reused
//!   every `gap` calls through a [`MergeState`] the caller owns.
//!
//! Choices the spec leaves open: ties go to the lowest destination index and, in the ranking, to
//! the lower source index; a merge window may not exceed the canvas in any dimension; the boxes
//! of the later frames start at frame 1; `MergeAmount::Ratio` counts video tokens (text
//! excluded) and rounds down.

mod attention;
mod layout;
mod plan;
pub mod reference;

pub use attention::{MergeMetric, MergeMode, MergeState, TokenMergeAttention, TokenMergeAttentionConfig};
pub use layout::{Destinations, MergeAmount, MergeLayout};
pub use plan::{MergePlan, MergeWeighting, cosine_scores, metric_rows, unit_metric, unit_metric_width, unit_scores};
