//! Everything that depends on burn's API details lives here, so that a burn upgrade touches one
//! module: tensor helpers, and the [`SparseAttentionBackend`] extension trait with its
//! implementations for the CubeCL backends (plain and fused), `Autodiff`, and the CPU backends.

mod autodiff;
mod backend;
mod cpu;
#[cfg(feature = "cube")]
mod cube;
#[cfg(feature = "cube")]
mod cube_dynamic;
#[cfg(feature = "cube")]
mod fusion;

pub use backend::{
    BackwardGrads, BlockLists, BlockSelection, FrameStatistics, GradInputs, MergeIndices, SparseAttentionBackend,
    reference_backward, reference_forward,
};
pub(crate) use backend::{unwrap, wrap};

use burn::tensor::{Bool, Int, Tensor, TensorData, backend::Backend};

use crate::error::{DitAttentionError, Result};

/// Gathers `x` along `dim` with the given indices (`y[.., i, ..] = x[.., idx[i], ..]`).
pub(crate) fn gather_seq<B: Backend, const D: usize>(x: Tensor<B, D>, dim: usize, idx: &[u32]) -> Result<Tensor<B, D>> {
    let dims = x.dims();
    if dim >= D {
        return Err(DitAttentionError::Invalid(format!(
            "dimension {dim} does not exist in a {D}-d tensor of shape {dims:?}"
        )));
    }
    if dims[dim] != idx.len() {
        return Err(DitAttentionError::Shape {
            what: format!("sequence dimension {dim} of a tensor to permute"),
            expected: vec![idx.len()],
            got: vec![dims[dim]],
        });
    }
    let device = x.device();
    Ok(x.select(dim, index_tensor::<B>(idx.iter().map(|&i| i as usize), &device)))
}

/// A 1D integer tensor of indices.
pub(crate) fn index_tensor<B: Backend>(idx: impl IntoIterator<Item = usize>, device: &B::Device) -> Tensor<B, 1, Int> {
    let v: Vec<i64> = idx.into_iter().map(|i| i as i64).collect();
    let n = v.len();
    Tensor::from_data(TensorData::new(v, [n]), device)
}

/// A boolean tensor from row-major values.
pub(crate) fn bool_tensor<B: Backend, const D: usize>(
    v: Vec<bool>,
    shape: [usize; D],
    device: &B::Device,
) -> Tensor<B, D, Bool> {
    Tensor::from_data(TensorData::new(v, shape), device)
}

/// A float tensor filled with `value`, in the dtype of `like` (not the device's default dtype:
/// burn keeps one default per device, shared by e.g. `NdArray<f32>` and `NdArray<f64>`).
pub(crate) fn full_like_dtype<B: Backend, const D: usize, const E: usize>(
    like: &Tensor<B, E>,
    shape: [usize; D],
    value: f64,
) -> Tensor<B, D> {
    Tensor::full(shape, value, (&like.device(), like.dtype()))
}

/// The values of a tensor as `f64`, row-major.
pub fn to_f64_vec<B: Backend, const D: usize>(x: Tensor<B, D>) -> Vec<f64> {
    x.into_data().iter::<f64>().collect()
}

/// burn's own (dense, unfused) attention, the oracle every reference is tested against.
/// `mask` uses burn's convention: `true` = masked out.
pub fn burn_attention_fallback<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: Option<Tensor<B, 4, Bool>>,
    scale: Option<f64>,
) -> Tensor<B, 4> {
    let options = burn::tensor::ops::AttentionModuleOptions { scale, softcap: None, is_causal: false };
    burn::tensor::module::attention_fallback(q, k, v, mask, None, options)
}
