//! CubeCL kernels of `dit-attention` (no burn dependency).
//!
//! The block-sparse flash-attention engine lands here: one kernel source compiled to CUDA (tensor
//! cores) and to wgpu (a portable path that runs on Mesa lavapipe). The contract it will consume
//! is defined in the root crate (`dit_attention::mask::BlockMap::to_index_arrays`). Until then
//! this crate only pins the CubeCL version the kernels are written against.

pub use cubecl;
