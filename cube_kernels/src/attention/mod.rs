//! Block-sparse flash-attention forward kernels and their host-side launchers: a portable path
//! (every runtime) and a tensor-core path (cmma), chosen from the runtime's reported features.

mod common;
mod launch;
mod portable;
mod tensor_core;
mod tiles;

pub use launch::{
    BlockMapArrays, ForwardOutput, ForwardPath, ForwardProblem, KernelElem, forward, forward_elem, forward_portable,
};
pub use portable::{NEG_BIG, block_sparse_forward_portable};
pub use tensor_core::{TC_ROWS, TC_TILE_K, TC_WARPS, block_sparse_forward_tensor_core};
pub use tiles::{PortableTiles, portable_tiles};
