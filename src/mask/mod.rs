//! Mask geometry in plain Rust (no tensors, no N x N matrix): token predicates, block maps and
//! exact statistics for STA, neighbourhood attention (plain and tiled), Swin and CLEAR.

mod axis;
mod block_map;
mod blocks;
mod pattern;
mod picture;
mod stats;

pub use block_map::{BlockKind, BlockMap, IndexArrays, OrderedMask, TokenPredicate};
pub use blocks::{BlockLayout, BlockPartition, Box3, Segment};
pub use pattern::{AttentionMask, PatternSpec};
pub use picture::{Picture, draw_block_map};
pub use stats::MaskStats;
