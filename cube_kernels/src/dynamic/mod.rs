//! Dynamic block-sparse attention (spec section 8): from each query block's estimated mass per
//! key block, the key blocks it keeps (the masses come from the attention engine itself).

mod launch;
mod select;

pub use launch::{SelectJob, SelectOutput, launch_select, select_fits};
pub use select::block_select;
