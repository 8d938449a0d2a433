//! Exact merge of two partial attention results over disjoint key sets (spec section 4).

use burn::tensor::backend::Backend;

use super::AttentionOutput;

/// `L = log(exp L1 + exp L2)`, `O = O1 exp(L1 - L) + O2 exp(L2 - L)`; two empty rows stay empty
/// (0 and `-inf`).
///
/// # Shapes
/// outputs `[b, h, n, dv]`, LSEs `[b, h, n]` (both inputs alike)
pub fn merge_attention<B: Backend>(a: AttentionOutput<B>, b: AttentionOutput<B>) -> AttentionOutput<B> {
    let max = a.lse.clone().max_pair(b.lse.clone());
    let shift = max.clone().mask_fill(max.is_inf(), 0.0);
    let wa = (a.lse - shift.clone()).exp();
    let wb = (b.lse - shift.clone()).exp();
    let sum = wa.clone() + wb.clone();
    let safe = sum.clone().mask_fill(sum.clone().equal_elem(0.0), 1.0);
    let output = (a.output * wa.unsqueeze_dim::<4>(3) + b.output * wb.unsqueeze_dim::<4>(3)) / safe.unsqueeze_dim::<4>(3);
    AttentionOutput { output, lse: shift + sum.log() }
}
