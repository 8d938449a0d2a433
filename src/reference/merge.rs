//! Exact merge of two partial attention results over disjoint key sets (spec section 4).

use burn::tensor::backend::Backend;

use super::AttentionOutput;
use crate::error::{DitAttentionError, Result};

/// `L = log(exp L1 + exp L2)`, `O = O1 exp(L1 - L) + O2 exp(L2 - L)`; two empty rows stay empty
/// (0 and `-inf`).
///
/// # Shapes
/// outputs `[b, h, n, dv]`, LSEs `[b, h, n]` (both inputs alike)
pub fn merge_attention<B: Backend>(a: AttentionOutput<B>, b: AttentionOutput<B>) -> Result<AttentionOutput<B>> {
    let (oa, ob, la, lb) = (a.output.dims(), b.output.dims(), a.lse.dims(), b.lse.dims());
    if oa != ob || la != lb || la[..] != oa[..3] {
        return Err(DitAttentionError::Invalid(format!(
            "cannot merge attention results of shapes output {oa:?} / lse {la:?} and output {ob:?} / lse {lb:?}"
        )));
    }
    let max = a.lse.clone().max_pair(b.lse.clone());
    let shift = max.clone().mask_fill(max.equal_elem(f64::NEG_INFINITY), 0.0);
    let wa = (a.lse - shift.clone()).exp();
    let wb = (b.lse - shift.clone()).exp();
    let sum = wa.clone() + wb.clone();
    let safe = sum.clone().mask_fill(sum.clone().equal_elem(0.0), 1.0);
    let output =
        (a.output * wa.unsqueeze_dim::<4>(3) + b.output * wb.unsqueeze_dim::<4>(3)) / safe.unsqueeze_dim::<4>(3);
    Ok(AttentionOutput { output, lse: shift + sum.log() })
}
