//! Merge and unmerge data movement: segment sums over the plan's slots, and the row gather back.

use cubecl::prelude::*;

/// Segment sums: `out[gr, slot, ch]` = `x[gr, kept, ch]` plus, for a destination slot, the sum of
/// `x[gr, m, ch]` over its merged sources `m` (ascending), accumulated in f32.
///
/// `x` is `[groups * reps, n, channels]`, `out` `[groups * reps, n_kept, channels]`; row `gr`
/// uses plan group `gr / reps` (a plan shared by every head has `reps` = heads). The plan
/// tables are [`super::merge_plan`]'s. One unit per output element.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn segment_sum<F: Float, I: Int>(
    x: &Array<F>,
    kept_token: &Array<I>,
    member_offsets: &Array<I>,
    members: &Array<I>,
    out: &mut Array<F>,
    total: u32,
    reps: u32,
    n: u32,
    n_kept: u32,
    channels: u32,
    dsts: u32,
    dst_slot0: u32,
    r_stride: u32,
) {
    let pos = ABSOLUTE_POS;
    if pos < total as usize {
        let c = channels as usize;
        let slots = n_kept as usize;
        let ch = pos % c;
        let rest = pos / c;
        let slot = rest % slots;
        let gr = rest / slots;
        let g = gr / reps as usize;
        let base = gr * n as usize * c + ch;
        let tok = usize::cast_from(kept_token[g * slots + slot]);
        let mut acc = f32::cast_from(x[base + tok * c]);
        let first = dst_slot0 as usize;
        if slot >= first && slot < first + dsts as usize {
            let j = g * (dsts as usize + 1) + slot - first;
            let a = usize::cast_from(member_offsets[j]);
            let b = usize::cast_from(member_offsets[j + 1]);
            let row = g * r_stride as usize;
            for m in a..b {
                let src = usize::cast_from(members[row + m]);
                acc += f32::cast_from(x[base + src * c]);
            }
        }
        out[pos] = F::cast_from(acc);
    }
}

/// Unmerge: `out[gr, t, ch]` = `y[gr, slot_of_token[gr / reps, t], ch]`; `y` is
/// `[groups * reps, n_kept, channels]`, `out` `[groups * reps, n, channels]`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn gather_rows<F: Float, I: Int>(
    y: &Array<F>,
    slot_of_token: &Array<I>,
    out: &mut Array<F>,
    total: u32,
    reps: u32,
    n: u32,
    n_kept: u32,
    channels: u32,
) {
    let pos = ABSOLUTE_POS;
    if pos < total as usize {
        let c = channels as usize;
        let tokens = n as usize;
        let ch = pos % c;
        let rest = pos / c;
        let t = rest % tokens;
        let gr = rest / tokens;
        let g = gr / reps as usize;
        let slot = usize::cast_from(slot_of_token[g * tokens + t]);
        out[pos] = y[(gr * n_kept as usize + slot) * c + ch];
    }
}
