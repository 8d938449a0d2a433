//! Dynamic block-sparse attention (spec section 8): the estimated mass of each query block per
//! key block (from the attention engine's chunked one-hot attention), and the key blocks each
//! query block keeps.

mod launch;
mod masses;
mod select;

pub use launch::{SelectJob, SelectOutput, blocks_per_lane, index_mask, launch_select, select_fits};
pub use masses::{ChunkGeometry, chunk_masses, launch_chunk_masses, row_lse};
pub use select::block_select;
