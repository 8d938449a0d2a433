//! The functional API: validate once, then hand the call to the backend's path (kernel or
//! reference).

use std::sync::Arc;

use burn::tensor::Tensor;

use crate::error::{DitAttentionError, Result};
use crate::glue::{SparseAttentionBackend, unwrap, wrap};
use crate::mask::BlockMap;
use crate::plan::KernelPlan;
use crate::reference::{AttentionOptions, AttentionOutput, check_qkv};

/// Dense softmax attention (every query sees every key), `nq` and `nk` may differ.
///
/// # Shapes
/// - q `[b, h, nq, d]`, k `[b, h, nk, d]`, v `[b, h, nk, dv]`, bias `[b or 1, h or 1, nk]`
/// - output `[b, h, nq, dv]`, lse `[b, h, nq]` (f32 on the kernel backends, the input dtype on
///   the reference backends; `-inf` never occurs here)
pub fn dense_attention<B: SparseAttentionBackend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    bias: Option<Tensor<B, 3>>,
    options: AttentionOptions,
) -> Result<AttentionOutput<B>> {
    check_qkv(&q, &k, &v, bias.as_ref())?;
    options.validate()?;
    let plan = KernelPlan::dense(q.dims()[2], k.dims()[2], options.scale_for(q.dims()[3]));
    attention_with_plan(q, k, v, bias, &plan)
}

/// Self-attention over the pairs a block map allows (full blocks whole, partial blocks through
/// the map's predicate). The tensors are in the map's token order.
///
/// # Shapes
/// - q, k `[b, h, n, d]`, v `[b, h, n, dv]`, `n` = the map's sequence length
/// - bias `[b or 1, h or 1, n]`
/// - output `[b, h, n, dv]`, lse `[b, h, n]` (`-inf` for a row with no key)
pub fn block_sparse_attention<B: SparseAttentionBackend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    map: &BlockMap,
    bias: Option<Tensor<B, 3>>,
    options: AttentionOptions,
) -> Result<AttentionOutput<B>> {
    check_qkv(&q, &k, &v, bias.as_ref())?;
    options.validate()?;
    let plan = KernelPlan::from_map(Arc::new(map.clone()), options.scale_for(q.dims()[3]));
    attention_with_plan(q, k, v, bias, &plan)
}

/// Attention over a prepared plan (modules build theirs once). Every input is checked here.
///
/// # Shapes
/// - q `[b, h, nq, d]`, k `[b, h, nk, d]`, v `[b, h, nk, dv]` with `nq`, `nk` the plan's
/// - bias `[b or 1, h or 1, nk]`, in any float dtype (cast to q's)
/// - output `[b, h, nq, dv]`, lse `[b, h, nq]`
pub fn attention_with_plan<B: SparseAttentionBackend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    bias: Option<Tensor<B, 3>>,
    plan: &KernelPlan,
) -> Result<AttentionOutput<B>> {
    check_qkv(&q, &k, &v, bias.as_ref())?;
    crate::reference::check_scale(plan.scale())?;
    let [_, heads, nq, _] = q.dims();
    let nk = v.dims()[2];
    if nq != plan.q_len() || nk != plan.k_len() {
        return Err(DitAttentionError::Invalid(format!(
            "the block map is for {} queries x {} keys, the tensors have {nq} x {nk}",
            plan.q_len(),
            plan.k_len()
        )));
    }
    if plan.map_heads() != 1 && plan.map_heads() != heads {
        return Err(DitAttentionError::Invalid(format!(
            "the block map has {} per-head rows but the tensors have {heads} heads",
            plan.map_heads()
        )));
    }
    check_backend(&q, &k, &v, plan)?;
    let dtype = q.dtype();
    let bias = bias.map(|b| unwrap(b.cast(dtype)));
    let (out, lse) = B::sparse_attention_forward(unwrap(q), unwrap(k), unwrap(v), bias, plan);
    Ok(AttentionOutput { output: wrap(out), lse: wrap(lse) })
}

/// Each named dtype equals the query's `dtype`, else an error naming both.
pub(crate) fn check_dtypes(dtype: burn::tensor::DType, others: &[(&str, burn::tensor::DType)]) -> Result<()> {
    for &(name, t) in others {
        if t != dtype {
            return Err(DitAttentionError::Invalid(format!(
                "the {name} dtype {t:?} differs from the query dtype {dtype:?}"
            )));
        }
    }
    Ok(())
}

/// Dtypes agree, the backend's path takes them and the head dims, and the kernel's grid takes
/// the plan's blocks for `b * h` batch-heads.
pub(crate) fn check_backend<B: SparseAttentionBackend>(
    q: &Tensor<B, 4>,
    k: &Tensor<B, 4>,
    v: &Tensor<B, 4>,
    plan: &KernelPlan,
) -> Result<()> {
    let [b, heads, _, d] = q.dims();
    let dv = v.dims()[3];
    let dtype = q.dtype();
    check_dtypes(dtype, &[("key", k.dtype()), ("value", v.dtype())])?;
    B::sparse_attention_support(&q.device(), dtype, d, dv)?;
    B::sparse_attention_check_plan(&q.device(), plan, b * heads)
}
