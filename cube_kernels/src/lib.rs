//! CubeCL kernels of `dit-attention` (no burn dependency).
//!
//! The block-sparse flash-attention engine for every CubeCL runtime: a tensor-core path (cmma,
//! f16/bf16) where the runtime reports cooperative matrices, and a portable path (plain loads,
//! shared memory, f32 accumulation) everywhere else, Mesa lavapipe included
//! ([`attention::ForwardPath::choose`]). The contract both read is the root crate's kernel plan
//! (counts and key-block indices per query block, `dit_attention::KernelPlan`).

pub mod attention;
pub mod dynamic;
pub mod matmul;
pub mod matmul_tensor_core;
pub mod merge;
pub mod rank;
pub mod stats;

pub use cubecl;

/// A launch argument over the first `len` elements of `handle` (at least one: empty arrays are
/// not launchable). Callers pass the element count the handle was created with.
pub(crate) fn array_arg<R: cubecl::Runtime>(
    handle: &cubecl::server::Handle,
    len: usize,
) -> cubecl::prelude::ArrayArg<R> {
    // SAFETY: `len` is at most the element count the handle was created with (callers' contract).
    unsafe { cubecl::prelude::ArrayArg::from_raw_parts(handle.clone(), len.max(1)) }
}
