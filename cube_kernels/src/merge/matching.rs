//! Matching: each source's best destination, then the top-`r` sources and the merge plan.

use cubecl::prelude::*;

use super::scan::cube_scan;
use crate::rank::{order_key, rth_largest_cached, rth_largest_key};

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
/// `out[base + i] = table[i]` for every `i < len` whose entry is not `NONE` (a fixed slot or
/// token), the cube's units striding. Four entries a round, so their loads are in flight
/// together (the plan kernel's other loops over global memory do the same).
#[cube]
fn copy_fixed<I: Int>(table: &Array<u32>, out: &mut Array<I>, base: usize, len: usize, #[comptime] units: usize) {
    let u = UNIT_POS as usize;
    for i in 0..len.div_ceil(units * 4) {
        #[unroll]
        for q in 0..4usize {
            let t = (i * 4 + q) * units + u;
            if t < len {
                let f = table[t];
                if f != 0xFFFF_FFFFu32 {
                    out[base + t] = I::cast_from(f);
                }
            }
        }
    }
}

/// Inputs per group `g` (row-major): `node_max [g, sources]`, `node_idx [g, sources]`; shared by
/// every group: `src_token [sources]` (each source's token), `fixed_slot [n]` (the slot of a text
/// or destination token, `NONE` for a source), `fixed_kept [n_kept]` (the token of a text or
/// destination slot, `NONE` for a source slot).
///
/// Outputs: `slot_of_token [g, n]`, `kept_token [g, n_kept]`, `member_offsets [g, dsts + 1]` and
/// `members [g, r_stride]` (the tokens merged into destination `j` are
/// `members[offsets[j]..offsets[j + 1]]`, ascending); `member_rank [g, sources]` is scratch.
///
/// The top `r` come from a bisection on the keys' bits (32 cube-wide counts over the `cached`
/// keys each unit holds in registers, or over global memory when `cached` is 0), the ties
/// from a prefix count in source order, the member lists from a stable counting sort whose
/// counts live in shared memory (`d_cap >= dsts` of them). No atomics: the result is
/// deterministic.
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
    #[comptime] cached: usize,
    #[comptime] planes: bool,
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
    copy_fixed(fixed_slot, slot_of_token, g * n_tok, n_tok, units);
    copy_fixed(fixed_kept, kept_token, g * n_slots, n_slots, units);
    let mut j0 = u;
    while j0 < d_cap {
        counts[j0] = 0u32;
        j0 += units;
    }

    // The r-th largest key: the largest `lo` with at least r keys >= lo; from registers when
    // this unit's `cached` keys cover the row.
    let mut keys = Array::<u32>::new(comptime![cached.max(1)]);
    #[unroll]
    for i in 0..cached {
        let s = i * units + u;
        let mut key = 0u32;
        if s < s_len {
            key = order_key(node_max[row + s]);
        }
        keys[i] = key;
    }
    let threshold = if comptime![cached > 0] {
        rth_largest_cached(&keys, r, &mut buf, cached, planes)
    } else {
        rth_largest_key(node_max, row, s_len, r, &mut buf)
    };
    let mut above = 0u32;
    #[unroll]
    for i in 0..cached {
        if keys[i] > threshold {
            above += 1;
        }
    }
    if comptime![cached == 0] {
        let mut s = u;
        while s < s_len {
            if order_key(node_max[row + s]) > threshold {
                above += 1;
            }
            s += units;
        }
    }
    // r == 0: threshold = u32::MAX, nothing above it, and no tie may merge.
    let need = r - cube_scan(above, &mut buf, planes).total;

    // Sources in order, one chunk of `units` at a time. One scan per chunk counts the keys
    // above the threshold (high half) and at it (low half; `units` < 65,536): ties merge in
    // source order while `need` lasts.
    let n_chunks = s_len.div_ceil(units);
    let mut eq_run = 0u32;
    let mut unmerged_run = 0u32;
    // Each round loads the next chunk's values before its scans (they arrive meanwhile).
    let mut next_key = 0u32;
    let mut next_dst = 0u32;
    let mut next_tok = 0u32;
    if u < s_len {
        next_key = order_key(node_max[row + u]);
        next_dst = u32::cast_from(node_idx[row + u]);
        next_tok = src_token[u];
    }
    for c in 0..n_chunks {
        let s = c * units + u;
        let valid = s < s_len;
        let key = next_key;
        let dst = next_dst;
        let tok = next_tok;
        if s + units < s_len {
            next_key = order_key(node_max[row + s + units]);
            next_dst = u32::cast_from(node_idx[row + s + units]);
            next_tok = src_token[s + units];
        }
        let mut flags = 0u32;
        if valid {
            if key > threshold {
                flags = 0x1_0000u32;
            } else if key == threshold {
                flags = 1u32;
            }
        }
        let scan = cube_scan(flags, &mut buf, planes);
        let prefix = scan.inclusive - flags;
        let total = scan.total;
        let remaining = need - u32::min(eq_run, need);
        let eq_before = prefix & 0xFFFFu32;
        let merged = valid && (key > threshold || (flags == 1u32 && eq_before < remaining));
        // Units before a valid one are valid: `u` sources precede it in the chunk.
        let merged_before = (prefix >> 16) + u32::min(eq_before, remaining);
        let unmerged_before = unmerged_run + u as u32 - merged_before;
        let in_chunk = u32::min(units as u32, s_len as u32 - (c * units) as u32);
        let chunk_merged = (total >> 16) + u32::min(total & 0xFFFFu32, remaining);
        eq_run += total & 0xFFFFu32;
        unmerged_run += in_chunk - chunk_merged;
        if valid {
            let mut slot = dst_slot0 + dst;
            if !merged {
                slot = src_slot0 + unmerged_before;
                kept_token[g * n_slots + slot as usize] = I::cast_from(tok);
            }
            slot_of_token[g * n_tok + tok as usize] = I::cast_from(slot);
        }

        // Stable counting sort by destination: rank among this destination's merged sources.
        // The chunk's merged sources are listed compactly (in source order) so each one
        // compares against those only.
        if merged {
            chunk_dst[merged_before as usize] = dst;
        }
        sync_cube();
        let mut before = 0u32;
        let mut last = true;
        if merged {
            before = count_equal(&chunk_dst, 0u32, merged_before, dst);
            last = count_equal(&chunk_dst, merged_before + 1, chunk_merged, dst) == 0u32;
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
        let scan = cube_scan(cnt, &mut buf, planes);
        let off = off_run + scan.inclusive - cnt;
        off_run += scan.total;
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
    for i in 0..n_chunks.div_ceil(4) {
        #[unroll]
        for q in 0..4usize {
            let s = (i * 4 + q) * units + u;
            if s < s_len {
                let rank = member_rank[row + s];
                if rank != 0xFFFF_FFFFu32 {
                    let dst = u32::cast_from(node_idx[row + s]) as usize;
                    members[members_row + (counts[dst] + rank) as usize] = I::cast_from(src_token[s]);
                }
            }
        }
    }
}

/// How many of `list[from..to]` equal `value`; four loads a round, so they are in flight
/// together.
#[cube]
fn count_equal(list: &SharedMemory<u32>, from: u32, to: u32, value: u32) -> u32 {
    let mut n = 0u32;
    let quads = (to - u32::min(from, to)) / 4;
    for q in 0..quads {
        let at = (from + 4 * q) as usize;
        #[unroll]
        for k in 0..4usize {
            if list[at + k] == value {
                n += 1;
            }
        }
    }
    for v in from + 4 * quads..to {
        if list[v as usize] == value {
            n += 1;
        }
    }
    n
}
