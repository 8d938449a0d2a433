//! Block-sparse flash-attention forward kernels and their host-side launchers: a portable path
//! (every runtime) and a tensor-core path (cmma), chosen from the runtime's reported features.

mod common;
mod geometry;
mod launch;
mod mma;
mod portable;
mod tensor_core;
mod tiles;

pub use common::{MapConfig, MapSource, SparseMap, SparseMapLaunch};
pub use geometry::StaGeometry;
pub use launch::{
    BlockMapArrays, ForwardOutput, ForwardPath, ForwardProblem, KernelElem, KeyBlocks, forward, forward_elem,
    forward_portable,
};
pub use mma::{MMA_TILE_K, block_sparse_forward_mma};
pub use portable::{NEG_BIG, block_sparse_forward_portable};
pub use tensor_core::{TC_ROWS, TC_TILE_K, TC_WARPS, block_sparse_forward_tensor_core};
pub use tiles::{PortableTiles, mma_warps, portable_tiles};
