//! Matching: each source's best destination, then the top-`r` sources and the merge plan.

use cubecl::prelude::*;

use super::scan::{cube_sum, inclusive_scan};
use crate::rank::{order_key, rth_largest_key};

/// "No value" in the `u32` tables (not a slot, not merged).
pub const NONE: u32 = 0xFFFF_FFFF;

/// Best column of every row: `best[row]` = the largest score (as f32), `best_idx[row]` = its
/// column, the lowest one on ties. `scores` is `[outer, inner, sources, cols]` with any strides
/// (a matmul's output as it lies, no copy); row `r` is `(g, s)` with `g = r / sources` split as
/// `(g / inner, g % inner)`. One unit per row.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn row_argmax<F: Float, I: Int>(
    scores: &Array<F>,
    best: &mut Array<f32>,
    best_idx: &mut Array<I>,
    rows: u32,
    cols: u32,
    sources: u32,
    inner: u32,
    stride_outer: u32,
    stride_inner: u32,
    stride_row: u32,
    stride_col: u32,
) {
    let row = ABSOLUTE_POS;
    if row < rows as usize {
        let n = cols as usize;
        let g = row / sources as usize;
        let s = row % sources as usize;
        let base = (g / inner as usize) * stride_outer as usize
            + (g % inner as usize) * stride_inner as usize
            + s * stride_row as usize;
        let step = stride_col as usize;
        // Below every finite f32 score; WGSL has no infinity literal.
        let mut m = f32::new(-3.0e38);
        let mut at = 0u32;
        for j in 0..n {
            let x = f32::cast_from(scores[base + j * step]);
            if x > m {
                m = x;
                at = j as u32;
            }
        }
        best[row] = m;
        best_idx[row] = I::cast_from(at);
    }
}

/// The merge plan of one group per cube (`CUBE_DIM = units`).
///
/// Sources are ranked by `node_max` (descending, the lower source index first on ties); the
/// first `r` merge into destination `node_idx`. Merged sequence: text before, destinations in
/// order from slot `dst_slot0`, unmerged sources in order from slot `src_slot0`, text after.
///
/// Inputs per group `g` (row-major): `node_max [g, sources]`, `node_idx [g, sources]`; shared by
/// every group: `src_token [sources]` (each source's token), `fixed_slot [n]` (the slot of a text
/// or destination token, `NONE` for a source), `fixed_kept [n_kept]` (the token of a text or
/// destination slot, `NONE` for a source slot).
///
/// Outputs: `slot_of_token [g, n]`, `kept_token [g, n_kept]`, `member_offsets [g, dsts + 1]` and
/// `members [g, r_stride]` (the tokens merged into destination `j` are
/// `members[offsets[j]..offsets[j + 1]]`, ascending); `member_rank [g, sources]` is scratch.
///
/// The top `r` come from a bisection on the keys' bits (32 cube-wide counts), the ties from a
/// prefix count in source order, the member lists from a stable counting sort whose counts
/// live in shared memory (`d_cap >= dsts` of them). No atomics: the result is deterministic.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn merge_plan<I: Int>(
    node_max: &Array<f32>,
    node_idx: &Array<I>,
    src_token: &Array<u32>,
    fixed_slot: &Array<u32>,
    fixed_kept: &Array<u32>,
    slot_of_token: &mut Array<I>,
    kept_token: &mut Array<I>,
    member_offsets: &mut Array<I>,
    members: &mut Array<I>,
    member_rank: &mut Array<u32>,
    sources: u32,
    dsts: u32,
    n: u32,
    n_kept: u32,
    r: u32,
    r_stride: u32,
    dst_slot0: u32,
    src_slot0: u32,
    #[comptime] units: usize,
    #[comptime] d_cap: usize,
) {
    let g = CUBE_POS_X as usize;
    let u = UNIT_POS as usize;
    let s_len = sources as usize;
    let n_dst = dsts as usize;
    let n_tok = n as usize;
    let n_slots = n_kept as usize;
    let row = g * s_len;
    let mut buf = SharedMemory::<u32>::new(units);
    let mut chunk_dst = SharedMemory::<u32>::new(units);
    let mut counts = SharedMemory::<u32>::new(d_cap);

    // Text and destination tokens keep fixed slots.
    let mut t = u;
    while t < n_tok {
        let f = fixed_slot[t];
        if f != 0xFFFF_FFFFu32 {
            slot_of_token[g * n_tok + t] = I::cast_from(f);
        }
        t += units;
    }
    let mut k = u;
    while k < n_slots {
        let f = fixed_kept[k];
        if f != 0xFFFF_FFFFu32 {
            kept_token[g * n_slots + k] = I::cast_from(f);
        }
        k += units;
    }
    let mut j0 = u;
    while j0 < d_cap {
        counts[j0] = 0u32;
        j0 += units;
    }

    // The r-th largest key: the largest `lo` with at least r keys >= lo.
    let lo = rth_largest_key(node_max, row, s_len, r, &mut buf);
    let threshold = lo;
    let mut above = 0u32;
    let mut s = u;
    while s < s_len {
        if order_key(node_max[row + s]) > threshold {
            above += 1;
        }
        s += units;
    }
    // r == 0: threshold = u32::MAX, nothing above it, and no tie may merge.
    let need = r - cube_sum(above, &mut buf);

    // Sources in order, one chunk of `units` at a time.
    let n_chunks = s_len.div_ceil(units);
    let mut eq_run = 0u32;
    let mut unmerged_run = 0u32;
    for c in 0..n_chunks {
        let s = c * units + u;
        let valid = s < s_len;
        let mut key = 0u32;
        let mut dst = 0u32;
        if valid {
            key = order_key(node_max[row + s]);
            dst = u32::cast_from(node_idx[row + s]);
        }
        let mut eq = 0u32;
        if valid && key == threshold {
            eq = 1u32;
        }
        let eq_before = eq_run + inclusive_scan(eq, &mut buf) - eq;
        eq_run += buf[units - 1];
        let merged = valid && (key > threshold || (eq == 1u32 && eq_before < need));
        let mut unmerged = 0u32;
        if valid && !merged {
            unmerged = 1u32;
        }
        let unmerged_before = unmerged_run + inclusive_scan(unmerged, &mut buf) - unmerged;
        unmerged_run += buf[units - 1];
        if valid {
            let tok = src_token[s];
            let mut slot = dst_slot0 + dst;
            if !merged {
                slot = src_slot0 + unmerged_before;
                kept_token[g * n_slots + slot as usize] = I::cast_from(tok);
            }
            slot_of_token[g * n_tok + tok as usize] = I::cast_from(slot);
        }

        // Stable counting sort by destination: rank among this destination's merged sources.
        let mut mine = 0xFFFF_FFFFu32;
        if merged {
            mine = dst;
        }
        chunk_dst[u] = mine;
        sync_cube();
        let mut before = 0u32;
        let mut last = true;
        if merged {
            for v in 0..u {
                if chunk_dst[v] == mine {
                    before += 1;
                }
            }
            for v in u + 1..units {
                if chunk_dst[v] == mine {
                    last = false;
                }
            }
            member_rank[row + s] = counts[dst as usize] + before;
        } else if valid {
            member_rank[row + s] = 0xFFFF_FFFFu32;
        }
        sync_cube();
        // The last of each destination in the chunk adds the chunk's count (one writer each).
        if merged && last {
            counts[dst as usize] += before + 1;
        }
        sync_cube();
    }

    // Member offsets: an exclusive prefix sum of the counts, kept in `counts` for the fill.
    let offsets_row = g * (n_dst + 1);
    let mut off_run = 0u32;
    let d_chunks = n_dst.div_ceil(units);
    for c in 0..d_chunks {
        let j = c * units + u;
        let mut cnt = 0u32;
        if j < n_dst {
            cnt = counts[j];
        }
        let off = off_run + inclusive_scan(cnt, &mut buf) - cnt;
        off_run += buf[units - 1];
        if j < n_dst {
            member_offsets[offsets_row + j] = I::cast_from(off);
            counts[j] = off;
        }
    }
    if u == 0 {
        member_offsets[offsets_row + n_dst] = I::cast_from(off_run);
    }
    sync_cube();

    // Fill: each unit revisits its own sources (it wrote their ranks itself).
    let members_row = g * r_stride as usize;
    for c in 0..n_chunks {
        let s = c * units + u;
        if s < s_len {
            let rank = member_rank[row + s];
            if rank != 0xFFFF_FFFFu32 {
                let dst = u32::cast_from(node_idx[row + s]) as usize;
                members[members_row + (counts[dst] + rank) as usize] = I::cast_from(src_token[s]);
            }
        }
    }
}
