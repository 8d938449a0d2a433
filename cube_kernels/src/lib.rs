//! CubeCL kernels of `dit-attention` (no burn dependency).
//!
//! The block-sparse flash-attention engine: one kernel source for every CubeCL runtime. This
//! release has the portable path (plain loads, shared memory, f32 accumulation) that runs on
//! wgpu, Mesa lavapipe included; the tensor-core path for CUDA comes next. The contract it reads
//! is the root crate's block map (`dit_attention::mask::BlockMap::to_index_arrays`).

pub mod attention;

pub use cubecl;
