//! Dense attention with an optional boolean mask and per-key bias.

use burn::tensor::{Bool, Tensor, backend::Backend};

use super::{AttentionOptions, AttentionOutput, check_qkv};
use crate::error::{DitAttentionError, Result};

/// Dense softmax attention, returning the output and the LSE.
///
/// `masked` follows burn's convention (`true` = the pair is masked out), shape
/// `[batch, heads, seq_q, seq_k]`. `bias` is added to every query's score of a key, shape
/// `[batch or 1, heads or 1, seq_k]`.
///
/// # Shapes
/// - q `[b, h, nq, d]`, k `[b, h, nk, d]`, v `[b, h, nk, dv]`
/// - output `[b, h, nq, dv]`, lse `[b, h, nq]`
pub fn dense_attention_reference<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    masked: Option<Tensor<B, 4, Bool>>,
    bias: Option<Tensor<B, 3>>,
    options: AttentionOptions,
) -> Result<AttentionOutput<B>> {
    check_qkv(&q, &k, &v, bias.as_ref())?;
    options.validate()?;
    if let Some(m) = &masked {
        let (qd, kd, md) = (q.dims(), k.dims(), m.dims());
        let expected = [qd[0], qd[1], qd[2], kd[2]];
        if md != expected {
            return Err(DitAttentionError::Shape {
                what: "mask [batch, heads, seq_q, seq_k]".into(),
                expected: expected.to_vec(),
                got: md.to_vec(),
            });
        }
    }
    Ok(attend(q, k, v, masked, bias, options))
}

/// The math, unchecked. Rows with every key masked give 0 and `-inf` (no NaN).
pub(crate) fn attend<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    masked: Option<Tensor<B, 4, Bool>>,
    bias: Option<Tensor<B, 3>>,
    options: AttentionOptions,
) -> AttentionOutput<B> {
    let scale = options.scale_for(q.dims()[3]);
    let mut scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(scale);
    if let Some(b) = bias {
        scores = scores + b.unsqueeze_dim::<4>(2);
    }
    if let Some(m) = masked {
        scores = scores.mask_fill(m, f64::NEG_INFINITY);
    }
    let max = scores.clone().max_dim(3);
    // A fully masked row has max = -inf; shifting by 0 instead keeps exp(-inf) = 0 and avoids NaN.
    let shift = max.clone().mask_fill(max.equal_elem(f64::NEG_INFINITY), 0.0);
    let p = (scores - shift.clone()).exp();
    let sum = p.clone().sum_dim(3);
    let safe_sum = sum.clone().mask_fill(sum.clone().equal_elem(0.0), 1.0);
    let output = p.matmul(v) / safe_sum;
    let lse = (shift + sum.log()).squeeze_dim::<3>(3);
    AttentionOutput { output, lse }
}
