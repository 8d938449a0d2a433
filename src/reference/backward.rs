//! Gradients of attention over a plan, from burn tensor ops: the composite that `Autodiff`
//! differentiates through until the backward kernels land, and their future oracle.
//!
//! Dense in memory (an `nq x nk` mask and probability matrix per head): for training at small
//! shapes and for tests, not for full video sequences.

use burn::tensor::Tensor;

use crate::glue::{SparseAttentionBackend, bool_tensor};
use crate::plan::KernelPlan;

/// Gradients of the attention inputs.
#[derive(Debug, Clone)]
pub struct AttentionGrads<B: SparseAttentionBackend> {
    /// `[b, h, nq, d]`.
    pub dq: Tensor<B, 4>,
    /// `[b, h, nk, d]`.
    pub dk: Tensor<B, 4>,
    /// `[b, h, nk, dv]`.
    pub dv: Tensor<B, 4>,
    /// The bias's shape `[b or 1, h or 1, nk]`, when there is a bias.
    pub dbias: Option<Tensor<B, 3>>,
}

/// Backward of `(output, lse) = attention(q, k, v, bias)` over `plan`, given the forward's
/// `output` and `lse` and the upstream gradients of either or both.
///
/// With `P = softmax(S)`, `S = scale * q k^T + bias` restricted to allowed pairs:
/// `dS = P * (dO v^T - rowsum(dO * O)) + P * dLSE`, `dq = scale * dS k`, `dk = scale * dS^T q`,
/// `dv = P^T dO`, `dbias = sum over queries of dS` (then over the bias's broadcast dims).
///
/// # Shapes
/// - q `[b, h, nq, d]`, k `[b, h, nk, d]`, v `[b, h, nk, dv]`, bias `[b or 1, h or 1, nk]`
/// - output, d_out `[b, h, nq, dv]`; lse, d_lse `[b, h, nq]` (any float dtype)
#[allow(clippy::too_many_arguments)]
pub fn attention_backward_reference<B: SparseAttentionBackend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    bias: Option<Tensor<B, 3>>,
    plan: &KernelPlan,
    output: Tensor<B, 4>,
    lse: Tensor<B, 3>,
    d_out: Option<Tensor<B, 4>>,
    d_lse: Option<Tensor<B, 3>>,
) -> AttentionGrads<B> {
    let [b, h, nq, _] = q.dims();
    let nk = k.dims()[2];
    let dtype = q.dtype();
    let device = q.device();
    let scale = plan.scale();

    let mut scores = B::checked_matmul(q.clone(), k.clone().swap_dims(2, 3)).mul_scalar(scale);
    if let Some(bias) = &bias {
        scores = scores + bias.clone().unsqueeze_dim::<4>(2);
    }
    let hm = if plan.map_heads() == 1 { 1 } else { h };
    let mut masked = Vec::with_capacity(hm * nq * nk);
    for head in 0..hm {
        for qi in 0..nq {
            masked.extend((0..nk).map(|ki| !plan.allows(head, qi, ki)));
        }
    }
    let masked = bool_tensor::<B, 4>(masked, [1, hm, nq, nk], &device).expand([b, h, nq, nk]);
    scores = scores.mask_fill(masked, f64::NEG_INFINITY);
    // Rows with no key have lse = -inf and all scores -inf: shift by 0 so that P = 0, not NaN.
    let lse = lse.cast(dtype);
    let lse = lse.clone().mask_fill(lse.equal_elem(f64::NEG_INFINITY), 0.0);
    let p = (scores - lse.unsqueeze_dim::<4>(3)).exp();

    let mut ds = Tensor::<B, 4>::zeros([b, h, nq, nk], (&device, dtype));
    let mut dv = Tensor::<B, 4>::zeros(v.dims(), (&device, dtype));
    if let Some(d_out) = d_out {
        let d_out = d_out.cast(dtype);
        dv = B::checked_matmul(p.clone().swap_dims(2, 3), d_out.clone());
        let dp = B::checked_matmul(d_out.clone(), v.swap_dims(2, 3));
        let delta = (d_out * output.cast(dtype)).sum_dim(3);
        ds = ds + p.clone() * (dp - delta);
    }
    if let Some(d_lse) = d_lse {
        ds = ds + p * d_lse.cast(dtype).unsqueeze_dim::<4>(3);
    }
    let dq = B::checked_matmul(ds.clone(), k).mul_scalar(scale);
    let dk = B::checked_matmul(ds.clone().swap_dims(2, 3), q).mul_scalar(scale);
    let dbias = bias.map(|bias| {
        let bd = bias.dims();
        let mut g: Tensor<B, 3> = ds.sum_dim(2).squeeze_dim(2);
        if bd[0] == 1 {
            g = g.sum_dim(0);
        }
        if bd[1] == 1 {
            g = g.sum_dim(1);
        }
        g
    });
    AttentionGrads { dq, dk, dv, dbias }
}
