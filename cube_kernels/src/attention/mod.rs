//! Block-sparse flash-attention kernels and their host-side launchers: forward on a portable path
//! (every runtime) and tensor-core paths (cmma, mma.sync), chosen from the runtime's reported
//! features; the backward (dQ, dK, dV, dbias) on the portable path and with mma.sync.

mod backward;
mod backward_launch;
mod common;
mod geometry;
mod launch;
pub(crate) mod mma;
pub(crate) mod mma_backward;
mod mma_pipeline;
mod mma_wide;
mod portable;
mod tensor_core;
mod tiles;

pub use backward::{
    DELTA_UNITS, backward_delta, block_sparse_backward_dkv_portable, block_sparse_backward_dq_portable,
};
pub use backward_launch::{
    BackwardInputs, BackwardOutput, TransposedLists, backward, backward_elem, backward_portable,
};
pub use common::{MapConfig, MapSource, SparseMap, SparseMapCompilationArg, SparseMapLaunch};
pub use geometry::StaGeometry;
pub use launch::{
    BlockMapArrays, ForwardOutput, ForwardPath, ForwardProblem, KernelElem, KeyBlocks, forward, forward_elem,
    forward_portable, mma_available,
};
pub use mma::{MMA_TILE_K, block_sparse_forward_mma};
pub use mma_backward::{block_sparse_backward_dkv_mma, block_sparse_backward_dq_mma};
pub use mma_wide::{WIDE_ROWS, block_sparse_forward_mma_wide};
pub use portable::{NEG_BIG, block_sparse_forward_portable};
pub use tensor_core::{TC_ROWS, TC_TILE_K, TC_WARPS, block_sparse_forward_tensor_core};
pub use tiles::{
    PortableTiles, dkv_warps, dq_warps, match_row_tiles, match_warps, mma_rows, mma_shape, mma_warps, portable_tiles,
};
