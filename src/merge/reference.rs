//! The merge plan and its data movement from burn tensor ops (any backend, differentiable): the
//! oracle of the kernels, and the path of backends without them.

use burn::tensor::{IndexingUpdateOp, Int, Tensor, TensorData, backend::Backend};

use super::layout::{MergeLayout, NONE};
use crate::glue::MergeIndices;

/// A host table repeated for `groups` rows, `[groups, len]` ints, `NONE` entries as 0.
fn table<B: Backend>(v: &[u32], groups: usize, device: &B::Device) -> Tensor<B, 2, Int> {
    // Repeated on the host: one upload, no device op (a fused `repeat_dim` of a tiny int upload
    // once returned float bits on wgpu).
    let row = v.iter().map(|&x| if x == NONE { 0 } else { x as i64 });
    let data: Vec<i64> = (0..groups).flat_map(|_| row.clone()).collect();
    Tensor::from_data(TensorData::new(data, [groups, v.len()]), device)
}

/// Matching from the scores `[b, m, sources, >= dsts]` (spec section 5, step 3; columns past
/// the layout's destinations are padding and ignored): each source's
/// best destination (the lowest index on ties), the top `r` sources by that score (the lower
/// source index first on ties), and the slots of the merged sequence ([`MergeLayout`]), per
/// group `(b, m)`.
pub fn match_reference<B: Backend>(scores: Tensor<B, 4>, layout: &MergeLayout) -> MergeIndices<B> {
    let device = scores.device();
    let [b, m, sources, _] = scores.dims();
    let (groups, dsts) = (b * m, layout.dst_token.len());
    let scores = scores.slice([0..b, 0..m, 0..sources, 0..dsts]).reshape([groups, sources, dsts]);
    if layout.r == 0 || sources == 0 {
        return unmerged_indices(layout, groups, &device);
    }
    let fixed_slot = table::<B>(&layout.fixed_slot, groups, &device);
    let fixed_kept = table::<B>(&layout.fixed_kept, groups, &device);
    // Best destination: the maximum, then the lowest column holding it.
    let best = scores.clone().max_dim(2);
    let cols = Tensor::<B, 1, Int>::arange(0..dsts as i64, &device)
        .reshape([1, 1, dsts])
        .repeat_dim(0, groups)
        .repeat_dim(1, sources);
    let beyond = Tensor::<B, 3, Int>::full([groups, sources, dsts], dsts as i64, &device);
    let node_idx = beyond.mask_where(scores.equal(best.clone().expand([groups, sources, dsts])), cols).min_dim(2);
    let node_idx = node_idx.reshape([groups, sources]);
    let node_max = best.reshape([groups, sources]);
    // Top r: the r-th largest score, everything above it, and the first ties in source order.
    let threshold = node_max.clone().sort_descending(1).slice([0..groups, layout.r - 1..layout.r]);
    let threshold = threshold.expand([groups, sources]);
    let above = node_max.clone().greater(threshold.clone());
    let tie = node_max.equal(threshold);
    let need = -above.clone().int().sum_dim(1) + layout.r as i64;
    let tie_rank = tie.clone().int().cumsum(1);
    let merged = above.bool_or(tie.bool_and(tie_rank.lower_equal(need.expand([groups, sources]))));
    // Slots: a merged source takes its destination's, the others follow the destinations.
    let unmerged_rank = merged.clone().bool_not().int().cumsum(1) - 1;
    let src_slots =
        (unmerged_rank + layout.src_slot0() as i64).mask_where(merged.clone(), node_idx + layout.dst_slot0() as i64);
    assemble(layout, fixed_slot, fixed_kept, src_slots, Some(merged), &device)
}

/// The tables of a plan that merges nothing (`r = 0`): every token keeps its own slot.
pub fn unmerged_indices<B: Backend>(layout: &MergeLayout, groups: usize, device: &B::Device) -> MergeIndices<B> {
    let fixed_slot = table::<B>(&layout.fixed_slot, groups, device);
    let fixed_kept = table::<B>(&layout.fixed_kept, groups, device);
    let sources = layout.src_token.len();
    if sources == 0 {
        // Every video token is a destination (e.g. a single frame): the fixed tables are the
        // plan. (No empty tensor is ever created: some runtimes reject zero-size uploads.)
        return MergeIndices { slot_of_token: fixed_slot, kept_token: fixed_kept, members: None };
    }
    let src_slot0 = layout.src_slot0() as u32;
    let slots: Vec<u32> = (0..sources as u32).map(|s| src_slot0 + s).collect();
    assemble(layout, fixed_slot, fixed_kept, table::<B>(&slots, groups, device), None, device)
}

/// The plan's tables from the slots of the sources (`[groups, sources]`).
fn assemble<B: Backend>(
    layout: &MergeLayout,
    fixed_slot: Tensor<B, 2, Int>,
    fixed_kept: Tensor<B, 2, Int>,
    src_slots: Tensor<B, 2, Int>,
    merged: Option<Tensor<B, 2, burn::tensor::Bool>>,
    device: &B::Device,
) -> MergeIndices<B> {
    let [groups, sources] = src_slots.dims();
    let src_idx: Vec<i64> = layout.src_token.iter().map(|&t| t as i64).collect();
    let src_idx = Tensor::<B, 1, Int>::from_data(TensorData::new(src_idx, [sources]), device);
    let slot_of_token = fixed_slot.select_assign(1, src_idx.clone(), src_slots.clone(), IndexingUpdateOp::Add);
    // Unmerged sources write their token into their slot; merged ones add 0 to a destination's.
    let mut tokens = table::<B>(&layout.src_token, groups, device);
    if let Some(merged) = merged {
        tokens = tokens.mask_fill(merged, 0);
    }
    let kept_token = fixed_kept.scatter(1, src_slots, tokens, IndexingUpdateOp::Add);
    MergeIndices { slot_of_token, kept_token, members: None }
}

/// Segment sums: `x [groups, reps, n, c]` summed into the slots, `[groups, reps, n_kept, c]`.
pub fn segment_sum_reference<B: Backend>(
    x: Tensor<B, 4>,
    indices: &MergeIndices<B>,
    layout: &MergeLayout,
) -> Tensor<B, 4> {
    let [groups, reps, n, c] = x.dims();
    let idx = indices.slot_of_token.clone().reshape([groups, 1, n, 1]).repeat_dim(1, reps).repeat_dim(3, c);
    let zeros = Tensor::zeros([groups, reps, layout.n_kept(), c], (&x.device(), x.dtype()));
    zeros.scatter(2, idx, x, IndexingUpdateOp::Add)
}

/// Unmerge: every token takes its slot's row, `[groups, reps, n_kept, c]` -> `[groups, reps, n, c]`.
pub fn gather_reference<B: Backend>(y: Tensor<B, 4>, indices: &MergeIndices<B>, layout: &MergeLayout) -> Tensor<B, 4> {
    let [groups, reps, _, c] = y.dims();
    let idx = indices.slot_of_token.clone().reshape([groups, 1, layout.n, 1]).repeat_dim(1, reps).repeat_dim(3, c);
    y.gather(2, idx)
}
