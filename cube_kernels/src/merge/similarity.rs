//! Each source's best destination straight from the unit metric: cosine scores a tile of
//! destinations at a time, a running maximum per source row, and only that maximum and its
//! column written. The score matrix (sources x destinations per group, 3.4 GB at the
//! CogVideoX-2B shape) never exists.
//!
//! `unit` is the metric `[groups, n, channels]` with unit rows (zero-padded channels are
//! harmless); source `s` of group `g` is row `g * n + src_token[s]`, destination `j` is row
//! `g * n + dst_token[j]`. Both kernels write `best[g * sources + s]` (the largest cosine, f32)
//! and `best_idx[g * sources + s]` (its destination, the lowest index on ties), which is what
//! [`super::merge_plan`] ranks.

use cubecl::prelude::barrier::{Barrier, copy_async};
use cubecl::prelude::*;

use crate::attention::mma::{PAD, Pair, lane_offset, tile_row};
use crate::attention::mma_backward::{load_b, mma_add};

/// Below every finite f32 score; WGSL has no infinity literal.
const NO_SCORE: f32 = -3.0e38;

/// One unit per source row (any runtime: plain loads, shared memory, f32 arithmetic). The
/// cube's `units` rows share each tile of `tile` destinations staged in shared memory; the grid
/// is `(ceil(sources / units), groups)`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn best_match_portable<F: Float, I: Int>(
    unit: &Array<F>,
    src_token: &Array<u32>,
    dst_token: &Array<u32>,
    best: &mut Array<f32>,
    best_idx: &mut Array<I>,
    n: u32,
    sources: u32,
    dsts: u32,
    #[comptime] channels: usize,
    #[comptime] tile: usize,
    #[comptime] units: usize,
) {
    let g = CUBE_POS_Y as usize;
    let s = CUBE_POS_X as usize * units + UNIT_POS as usize;
    let n_src = sources as usize;
    let n_dst = dsts as usize;
    let group_row = g * n as usize;
    // Units past the last source compute on it too (they stage tiles) and write nothing.
    let src_base = (group_row + src_token[tile_row(0, n_src, s)] as usize) * channels;
    let mut shared = SharedMemory::<f32>::new(tile * channels);
    let mut m = f32::new(NO_SCORE);
    let mut at = 0u32;
    let mut start = 0usize;
    while start < n_dst {
        // Everyone is done with the previous tile.
        sync_cube();
        let mut idx = UNIT_POS as usize;
        while idx < tile * channels {
            let r = tile_row(start, n_dst, idx / channels);
            shared[idx] = f32::cast_from(unit[(group_row + dst_token[r] as usize) * channels + idx % channels]);
            idx += units;
        }
        sync_cube();
        let mut acc = Array::<f32>::new(tile);
        #[unroll]
        for j in 0..tile {
            acc[j] = 0.0f32;
        }
        for ch in 0..channels {
            let x = f32::cast_from(unit[src_base + ch]);
            #[unroll]
            for j in 0..tile {
                acc[j] += x * shared[j * channels + ch];
            }
        }
        // Ascending columns and a strict comparison: the lowest column wins a tie.
        #[unroll]
        for j in 0..tile {
            if start + j < n_dst && acc[j] > m {
                m = acc[j];
                at = (start + j) as u32;
            }
        }
        start += tile;
    }
    if s < n_src {
        best[g * n_src + s] = m;
        best_idx[g * n_src + s] = I::cast_from(at);
    }
}

/// Copies destination rows `start..start + rows` (clamped to the last one before `end`) of one
/// group into `dst` from element `to_base` on, row stride `stride`, by `cp.async` 16 bytes at a
/// time.
#[cube]
#[allow(clippy::too_many_arguments, clippy::collapsible_else_if)]
fn copy_dst_rows<F: Float>(
    unit: &Array<F>,
    dst_token: &Array<u32>,
    dst: &mut SharedMemory<F>,
    to_base: usize,
    group_row: usize,
    start: usize,
    end: usize,
    #[comptime] rows: usize,
    #[comptime] channels: usize,
    #[comptime] stride: usize,
    #[comptime] threads: usize,
) {
    let per_row = channels / 8;
    #[unroll]
    for it in 0..(rows * per_row).div_ceil(threads) {
        let idx = it * threads + UNIT_POS as usize;
        let r = tile_row(start, end, idx / per_row);
        let at = (group_row + dst_token[r] as usize) * channels + (idx % per_row) * 8;
        let to = to_base + (idx / per_row) * stride + (idx % per_row) * 8;
        if comptime![(rows * per_row).is_multiple_of(threads)] {
            copy_async(&unit.to_slice().slice(at, at + 8), &mut dst.to_slice_mut().slice_mut(to, to + 8), 8u32);
        } else {
            if idx < rows * per_row {
                copy_async(&unit.to_slice().slice(at, at + 8), &mut dst.to_slice_mut().slice_mut(to, to + 8), 8u32);
            }
        }
    }
}

/// `X · Y^T` for one 16-column chunk of Y and `m_tiles` tiles of 16 rows of X: `a` holds the
/// tiles' A fragments (tile `mt`'s `dim / 16` groups of four from `mt * dim / 4` on), `smem`
/// holds Y row-major from element `base` (rows `16 * chunk`.., stride `stride`). Each B
/// fragment is loaded once for all tiles. `c[4 mt..4 mt + 4]` gets tile `mt`'s accumulator
/// pairs (columns 0-7 rows g | g + 8, then columns 8-15); `lane_b` is this lane's
/// [`lane_offset`]`(stride, false)`, laundered by the caller.
#[cube]
#[allow(clippy::too_many_arguments)]
fn scores_tiles<F: Float>(
    a: &Array<Pair<F>>,
    smem: &SharedMemory<F>,
    base: usize,
    chunk: usize,
    c: &mut Array<Pair<f32>>,
    lane_b: usize,
    #[comptime] dim: usize,
    #[comptime] stride: usize,
    #[comptime] m_tiles: usize,
) {
    #[unroll]
    for i in 0..m_tiles * 4 {
        c[i] = Pair::<f32>::new(0.0f32);
    }
    let mut b = Array::<Pair<F>>::new(4usize);
    let b0 = base + lane_b + chunk * 16 * stride;
    #[unroll]
    for kk in 0..dim / 16 {
        load_b::<F>(smem, b0 + kk * 16, &mut b, false);
        #[unroll]
        for mt in 0..m_tiles {
            let mut af = Array::<Pair<F>>::new(4usize);
            #[unroll]
            for r in 0..4usize {
                af[r] = a[(mt * (dim / 16) + kk) * 4 + r];
            }
            mma_add::<F>(&af, &b, c, mt * 4, 0usize);
            mma_add::<F>(&af, &b, c, mt * 4 + 2, 1usize);
        }
    }
}

/// The register-level tensor-core matching (PTX `mma.sync` m16n8k16, f16/bf16 inputs, f32
/// scores; the fragment layouts are those of [`crate::attention::block_sparse_forward_mma`]).
/// A cube is `warps` planes of `16 * m_tiles` source rows; each plane keeps its rows' A
/// fragments (all `channels`, a multiple of 16) in registers, read once from global memory, and
/// every B fragment it loads feeds its `m_tiles` row tiles (two halve the shared-memory reads
/// per MMA). Destination tiles of `tile` rows (a multiple of 16) go by `cp.async` into two
/// shared-memory stages (the next lands while this one computes) and come out by `ldmatrix`;
/// every lane keeps the best of the scores it holds, and the four lanes of a row settle theirs
/// by two shuffles at the end. The grid is `(ceil(sources / (16 * m_tiles * warps)), groups)`,
/// the cube `(32, warps)`; `sources` and `dsts` are at least 1.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn best_match_mma<F: Float, I: Int>(
    unit: &Array<F>,
    src_token: &Array<u32>,
    dst_token: &Array<u32>,
    best: &mut Array<f32>,
    best_idx: &mut Array<I>,
    n: u32,
    sources: u32,
    dsts: u32,
    #[comptime] channels: usize,
    #[comptime] tile: usize,
    #[comptime] warps: usize,
    #[comptime] m_tiles: usize,
) {
    let g = CUBE_POS_Y as usize;
    let lane = UNIT_POS_X as usize;
    let warp = UNIT_POS_Y as usize;
    let gi = lane / 4;
    let t = lane % 4;
    let n_src = sources as usize;
    let n_dst = dsts as usize;
    let group_row = g * n as usize;
    let threads = warps * 32;
    let cs = channels + PAD;
    let stage_len = tile * cs;
    let kc = channels / 16;

    // This lane's source rows: g and g + 8 of each of the plane's 16-row tiles. Rows past the
    // last source compute on it and are not written.
    let plane0 = (CUBE_POS_X as usize * warps + warp) * 16 * m_tiles + gi;

    // A fragments: register r of chunk kk of tile mt holds row g + 8 (r % 2), columns
    // 16 kk + 8 (r / 2) + 2t + {0, 1}.
    let unit2 = unit.to_slice().into_vectorized().with_vector_size::<Const<2>>();
    let mut af = Array::<Pair<F>>::new(m_tiles * kc * 4);
    #[unroll]
    for mt in 0..m_tiles {
        let tok_a = src_token[tile_row(0, n_src, plane0 + mt * 16)] as usize;
        let tok_b = src_token[tile_row(0, n_src, plane0 + mt * 16 + 8)] as usize;
        #[unroll]
        for kk in 0..kc {
            #[unroll]
            for r in 0..4usize {
                let mut tok = tok_a;
                if comptime![r % 2 == 1] {
                    tok = tok_b;
                }
                let col = kk * 16 + (r / 2) * 8 + 2 * t;
                af[(mt * kc + kk) * 4 + r] = unit2[((group_row + tok) * channels + col) / 2];
            }
        }
    }

    let mut sd = SharedMemory::<F>::new_aligned(2 * tile * cs, 16usize);
    let bar0 = Barrier::shared(CUBE_DIM, UNIT_POS == 0);
    let bar1 = Barrier::shared(CUBE_DIM, UNIT_POS == 0);
    // The lane's ldmatrix offset, laundered through shared memory (see the attention forward:
    // NVVM then keeps each fragment address `base + immediate`).
    let mut lane_offsets = SharedMemory::<u32>::new(threads);
    lane_offsets[UNIT_POS as usize] = lane_offset(cs, false);
    sync_cube();
    let lane_d = usize::cast_from(lane_offsets[UNIT_POS as usize]);

    // Slot 2 mt + h: row g + 8 h of tile mt.
    let mut top = Array::<f32>::new(2 * m_tiles);
    let mut top_at = Array::<u32>::new(2 * m_tiles);
    #[unroll]
    for i in 0..2 * m_tiles {
        top[i] = f32::new(NO_SCORE);
        top_at[i] = 0u32;
    }
    let n_tiles = n_dst.div_ceil(tile);
    let mut c = Array::<Pair<f32>>::new(4 * m_tiles);
    copy_dst_rows::<F>(unit, dst_token, &mut sd, 0usize, group_row, 0usize, n_dst, tile, channels, cs, threads);
    bar0.commit_copy_async();
    bar0.arrive();
    for step in 0..n_tiles {
        let stage = step % 2;
        // Everyone is done with the other stage (the previous step computed on it).
        sync_cube();
        if step + 1 < n_tiles {
            let other = 1 - stage;
            let next = (step + 1) * tile;
            copy_dst_rows::<F>(
                unit,
                dst_token,
                &mut sd,
                other * stage_len,
                group_row,
                next,
                n_dst,
                tile,
                channels,
                cs,
                threads,
            );
            if other == 0 {
                bar0.commit_copy_async();
                bar0.arrive();
            } else {
                bar1.commit_copy_async();
                bar1.arrive();
            }
        }
        let phase = ((step / 2) % 2) as u32;
        if stage == 0 {
            bar0.wait_parity(phase);
        } else {
            bar1.wait_parity(phase);
        }
        let first = step * tile;
        // Scores of 16 destinations per pass: two 8-column chunks from one ldmatrix.x4.
        #[unroll]
        for jp in 0..tile / 16 {
            scores_tiles::<F>(&af, &sd, stage * stage_len, jp, &mut c, lane_d, channels, cs, m_tiles);
            // Row g + 8 h of tile mt has its four scores of this pass in `c[4 mt + h]`
            // (columns 2t, 2t + 1) and `c[4 mt + 2 + h]` (columns 8 + 2t, 9 + 2t). Their maximum
            // replaces the running best only when strictly larger (passes and tiles ascend:
            // the lowest column wins a tie), which after the first tiles is rare, so the
            // column search is off the common path. Columns past the last destination repeat
            // its row (the staging clamps), so they tie with it and lose to its lower index.
            #[unroll]
            for mt in 0..m_tiles {
                #[unroll]
                for h in 0..2usize {
                    let slot = comptime![mt * 2 + h];
                    let lo = c[mt * 4 + h];
                    let hi = c[mt * 4 + 2 + h];
                    let m = f32::max(f32::max(lo[0usize], lo[1usize]), f32::max(hi[0usize], hi[1usize]));
                    if m > top[slot] {
                        let col = (first + jp * 16 + 2 * t) as u32;
                        let mut at = col + 9u32;
                        if hi[0usize] == m {
                            at = col + 8u32;
                        }
                        if lo[1usize] == m {
                            at = col + 1u32;
                        }
                        if lo[0usize] == m {
                            at = col;
                        }
                        top[slot] = m;
                        top_at[slot] = at;
                    }
                }
            }
        }
    }

    // The quad of a row: the larger score, the lower column on ties.
    #[unroll]
    for slot in 0..2 * m_tiles {
        let mut v = top[slot];
        let mut at = top_at[slot];
        #[unroll]
        for sh in 0..2u32 {
            let mask = sh + 1;
            let ov = plane_shuffle_xor(v, mask);
            let oi = plane_shuffle_xor(at, mask);
            if ov > v || (ov == v && oi < at) {
                v = ov;
                at = oi;
            }
        }
        let row = plane0 + comptime![(slot / 2) * 16 + (slot % 2) * 8];
        if t == 0 && row < n_src {
            best[g * n_src + row] = v;
            best_idx[g * n_src + row] = I::cast_from(at);
        }
    }
}
