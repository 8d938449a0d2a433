//! Dynamic block-sparse attention (spec section 8): from the scores of sampled tokens, each
//! query block's estimated mass per key block, and the key blocks it keeps.

mod launch;
mod select;

pub use launch::{SelectJob, SelectOutput, launch_select, select_fits};
pub use select::block_select;
