//! Pattern attention and Combined attention (spec section 8).
//!
//! - [`CombinedAttentionConfig`] -> [`CombinedAttention`]: dense for the first `warmup_steps`,
//!   then per (batch, head) pattern attention where the head is not sparse and its attention
//!   repeats across frames, dynamic block-sparse attention elsewhere; it reports each head's
//!   choice, statistics and density;
//! - [`KvMergeConfig`]: token merging (spec section 5) of the dynamic heads' keys and values,
//!   stacked on top;
//! - [`PatternStats`]: the frame-to-frame mass map and the two head statistics from sampled
//!   query rows.

mod attention;
mod kv_merge;
mod pattern;

pub use attention::{CombinedAttention, CombinedAttentionConfig, CombinedOutput, HeadChoice};
pub use kv_merge::{DEAD_KEY_BIAS, KvMergeConfig};
pub use pattern::PatternStats;
#[cfg(feature = "cube")]
pub(crate) use pattern::top_mass_of_probabilities;
pub(crate) use pattern::top_sum_reference;
