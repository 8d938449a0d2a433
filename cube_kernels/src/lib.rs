//! CubeCL kernels of `dit-attention` (no burn dependency).
//!
//! The block-sparse flash-attention engine for every CubeCL runtime: a tensor-core path (cmma,
//! f16/bf16) where the runtime reports cooperative matrices, and a portable path (plain loads,
//! shared memory, f32 accumulation) everywhere else, Mesa lavapipe included
//! ([`attention::ForwardPath::choose`]). The contract both read is the root crate's kernel plan
//! (counts and key-block indices per query block, `dit_attention::KernelPlan`).

pub mod attention;
pub mod dynamic;
pub mod merge;
pub mod rank;
pub mod stats;

pub use cubecl;
