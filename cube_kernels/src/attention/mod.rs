//! Block-sparse flash-attention forward kernels and their host-side launchers.

mod launch;
mod portable;
mod tiles;

pub use launch::{BlockMapArrays, ForwardOutput, ForwardProblem, KernelElem, forward_portable, forward_portable_elem};
pub use portable::{NEG_BIG, block_sparse_forward_portable};
pub use tiles::{PortableTiles, portable_tiles};
