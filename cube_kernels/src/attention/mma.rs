//! The register-level tensor-core forward (cubecl's manual MMA: PTX `mma.sync` m16n8k16, f16 or
//! bf16 inputs, f32 accumulation), FlashAttention-2 style. A cube is `warps` planes; each
//! plane owns 16 query rows, its Q fragments, its output accumulators and its softmax statistics
//! in registers. Per tile of [`MMA_TILE_K`] keys the cube copies K and V into shared memory once
//! for all its rows (`cp.async`, 16 bytes a copy, into two stages: the next tile lands while this
//! one computes); fragments come out of shared memory by `ldmatrix`; `S = Q K^T`, the online softmax and `O += P V` run in
//! registers: the score accumulators of two adjacent 8-key chunks are exactly the A operand of the next MMA
//! (the PTX fragment layouts line up), and a row's max and sum need only the four lanes that
//! hold it (two butterfly shuffles).
//!
//! Fragment layout of m16n8k16 with 16-bit inputs, lane `g * 4 + t`: A register `r` holds row
//! `g + 8 (r % 2)`, columns `2t + 8 (r / 2) + {0, 1}`; B register `r` holds column `g`, rows
//! `2t + 8r + {0, 1}`; accumulator vector `r` holds row `g + 8r`, columns `2t + {0, 1}`.

use cubecl::cmma::MmaDefinition;
use cubecl::ir::{FastMath, MatrixIdent};
use cubecl::prelude::barrier::{Barrier, copy_async};
use cubecl::prelude::*;

use super::common::{MapConfig, SparseMap, finish_score, input_row, visits};
use super::mma_pipeline::{kv_stage_bias, kv_start, kv_step};
use super::portable::NEG_BIG;

/// Keys per shared-memory tile; the Q tile is staged through the K buffer, 64 rows at a time.
pub const MMA_TILE_K: usize = 64;
/// Shared-memory row padding (elements): rows 16 bytes apart in the bank pattern, so the eight
/// rows a fragment load touches hit different banks.
pub(crate) const PAD: usize = 8;

pub(crate) type Pair<E> = Vector<E, Const<2>>;
pub(super) type Oct<E> = Vector<E, Const<8>>;

/// Map position of row `i` of a tile starting at `start`, clamped to the last row before `end`.
#[cube]
pub(crate) fn tile_row(start: usize, end: usize, i: usize) -> usize {
    let mut r = start + i;
    if r >= end {
        r = end - 1;
    }
    r
}

/// This lane's ldmatrix offset (elements) into a row-major tile of row stride `stride`: lane
/// `L` addresses row `L % 8` of 8x8 matrix `L / 8`; the matrices are (rows 0-7 | 8-15) x
/// (columns 0-7 | 8-15), ordered row-half first when `rows_first`, column-half first otherwise.
#[cube]
pub(crate) fn lane_offset(#[comptime] stride: usize, #[comptime] rows_first: bool) -> u32 {
    let lane = UNIT_POS_X as usize;
    let mi = lane / 8;
    let ri = lane % 8;
    let mut at = ((mi / 2) * 8 + ri) * stride + (mi % 2) * 8;
    if comptime![rows_first] {
        at = ((mi % 2) * 8 + ri) * stride + (mi / 2) * 8;
    }
    u32::cast_from(at)
}

/// Reads `rows x dim` elements (map positions `start..`, clamped to the last row before `end`)
/// into this unit's registers `regs`, 16 bytes per load (`dim` a multiple of 8); [`store_rows`]
/// puts them in shared memory (the Q staging). Rows past `end` repeat a real row instead of
/// zeros: the loads stay unconditional (a zero-or-load select made every load synchronous) and
/// those query rows are never written.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(super) fn fetch_rows<F: Float>(
    src: &Slice<Oct<F>>,
    regs: &mut Array<Oct<F>>,
    map: &SparseMap,
    base: usize,
    start: usize,
    end: usize,
    #[comptime] rows: usize,
    #[comptime] dim: usize,
    #[comptime] threads: usize,
    #[comptime] gathered: bool,
) {
    let per_row = dim / 8;
    #[unroll]
    for it in 0..(rows * per_row).div_ceil(threads) {
        let idx = it * threads + UNIT_POS as usize;
        let r = tile_row(start, end, idx / per_row);
        let at = (base + input_row(map, r, gathered)) * per_row + idx % per_row;
        if comptime![(rows * per_row).is_multiple_of(threads)] {
            regs[it] = src[at];
        } else {
            let mut val = Oct::<F>::new(F::new(0.0));
            if idx < rows * per_row {
                val = src[at];
            }
            regs[it] = val;
        }
    }
}

/// Copies a tile of `rows` rows x `dim` elements (map positions `start..`, clamped to
/// the last row before `end`: real, finite data, so the keys past the block that the kernel
/// masks get a weight of exactly 0) into `dst` from element `dst_base` on, row stride `stride`,
/// by `cp.async` 16 bytes at a time: no registers hold the data and nothing waits until the
/// stage's barrier is waited on.
#[cube]
#[allow(clippy::too_many_arguments, clippy::collapsible_else_if)]
pub(super) fn copy_rows<F: Float>(
    src: &Array<F>,
    dst: &mut SharedMemory<F>,
    dst_base: usize,
    map: &SparseMap,
    base: usize,
    start: usize,
    end: usize,
    #[comptime] rows: usize,
    #[comptime] dim: usize,
    #[comptime] stride: usize,
    #[comptime] threads: usize,
    #[comptime] gathered: bool,
) {
    // Offsets in elements on unvectorized slices: `copy_async` adds the slice offset to the
    // buffer's scalar pointer.
    let per_row = dim / 8;
    #[unroll]
    for it in 0..(rows * per_row).div_ceil(threads) {
        let idx = it * threads + UNIT_POS as usize;
        let r = tile_row(start, end, idx / per_row);
        let at = (base + input_row(map, r, gathered)) * dim + (idx % per_row) * 8;
        let to = dst_base + (idx / per_row) * stride + (idx % per_row) * 8;
        if comptime![(rows * per_row).is_multiple_of(threads)] {
            copy_async(&src.to_slice().slice(at, at + 8), &mut dst.to_slice_mut().slice_mut(to, to + 8), 8u32);
        } else {
            if idx < rows * per_row {
                copy_async(&src.to_slice().slice(at, at + 8), &mut dst.to_slice_mut().slice_mut(to, to + 8), 8u32);
            }
        }
    }
}

/// Stores what [`fetch_rows`] read into `dst` with row stride `stride` (a multiple of 8).
#[cube]
pub(super) fn store_rows<F: Float>(
    regs: &Array<Oct<F>>,
    dst: &mut SharedMemory<F>,
    #[comptime] rows: usize,
    #[comptime] dim: usize,
    #[comptime] stride: usize,
    #[comptime] threads: usize,
) {
    let per_row = dim / 8;
    let mut dst8 = dst.to_slice_mut().into_vectorized().with_vector_size::<Const<8>>();
    #[unroll]
    for it in 0..(rows * per_row).div_ceil(threads) {
        let idx = it * threads + UNIT_POS as usize;
        if idx < rows * per_row {
            dst8[(idx / per_row) * (stride / 8) + idx % per_row] = regs[it];
        }
    }
}

/// The A fragments (16 rows x `dim`, [`MMA_TILE_K`]-wide chunks of 16 columns, four registers
/// each) of this plane's rows `row0 + 16 * plane ..` of `src` (map positions, clamped to the last
/// row before `end`), staged through `stage` (at least [`MMA_TILE_K`] rows of `stride`) four
/// planes at a time. The caller syncs the cube before `stage` is written again.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(super) fn plane_fragments<F: Float>(
    src: &Array<F>,
    stage: &mut SharedMemory<F>,
    frags: &mut Array<Pair<F>>,
    map: &SparseMap,
    base: usize,
    row0: usize,
    end: usize,
    #[comptime] dim: usize,
    #[comptime] stride: usize,
    #[comptime] warps: usize,
    #[comptime] gathered: bool,
) {
    let threads = warps * 32;
    let lane = UNIT_POS_X as usize;
    let warp = UNIT_POS_Y as usize;
    // ldmatrix: lane L addresses row L % 8 of 8x8 matrix L / 8.
    let mi = lane / 8;
    let ri = lane % 8;
    let src8 = src.to_slice().into_vectorized().with_vector_size::<Const<8>>();
    let def = MmaDefinition::<F, F, f32>::new(16usize, 8usize, 16usize);
    let mut regs8 = Array::<Oct<F>>::new((MMA_TILE_K * dim / 8).div_ceil(threads));
    for pass in 0..warps / 4 {
        if pass > 0 {
            sync_cube();
        }
        let first = row0 + pass * MMA_TILE_K;
        fetch_rows::<F>(&src8, &mut regs8, map, base, first, end, MMA_TILE_K, dim, threads, gathered);
        store_rows::<F>(&regs8, stage, MMA_TILE_K, dim, stride, threads);
        sync_cube();
        if warp / 4 == pass {
            // Matrices (rows 0-7 | 8-15) x (columns 0-7 | 8-15) of each 16x16 chunk.
            #[unroll]
            for kk in 0..dim / 16 {
                let at = ((warp % 4) * 16 + (mi % 2) * 8 + ri) * stride + kk * 16 + (mi / 2) * 8;
                let regs = def.load_matrix::<F, Const<2>>(&stage.slice(at, at + 8), MatrixIdent::A, 4usize, false);
                #[unroll]
                for r in 0..4usize {
                    frags[kk * 4 + r] = regs[r];
                }
            }
        }
    }
}

/// Forward pass over a block map with register-level MMA. Same contract as
/// [`super::block_sparse_forward_portable`], and the scale must be positive (the row maximum is
/// taken on unscaled scores) and small enough that `NEG_BIG * scale` stays finite and far below
/// any real score (the host validates `1e-10 <= scale <= 1e8`); `head_dim` and `value_dim` are
/// multiples of 16 (up to 128). The cube is `(32, warps)` units (`warps` a multiple of 4), `16 * warps` query rows;
/// the grid `(nqb * chunks_per_block, bh)` with `chunks_per_block = ceil(largest query block /
/// (16 * warps))`.
// Fast exponentials (`__expf`): the softmax arguments are finite (masked scores are -1e30, times
// a validated scale, not -inf) and its error is far below bf16/f16 rounding.
// `collapsible_if`: the outer `if`s of the score loop are comptime branches (code paths).
#[cube(launch_unchecked, fast_math = FastMath::ReducedPrecision | FastMath::NotNaN | FastMath::NotInf)]
#[allow(clippy::too_many_arguments, clippy::collapsible_if, clippy::collapsible_else_if)]
pub fn block_sparse_forward_mma<F: Float>(
    q: &Array<F>,
    k: &Array<F>,
    v: &Array<F>,
    bias: &Array<F>,
    map: SparseMap,
    out: &mut Array<F>,
    lse: &mut Array<f32>,
    q_len: u32,
    k_len: u32,
    heads: u32,
    map_heads: u32,
    max_count: u32,
    chunks_per_block: u32,
    bias_b_stride: u32,
    bias_h_stride: u32,
    scale: f32,
    empty_lse: f32,
    #[comptime] head_dim: usize,
    #[comptime] value_dim: usize,
    #[comptime] has_bias: bool,
    #[comptime] config: MapConfig,
    #[comptime] warps: usize,
) {
    let nq = q_len as usize;
    let nk = k_len as usize;
    let bh = CUBE_POS_Y as usize;
    let h = bh % heads as usize;
    let b = bh / heads as usize;
    let qb = (CUBE_POS_X / chunks_per_block) as usize;
    let chunk = (CUBE_POS_X % chunks_per_block) as usize;
    let lane = UNIT_POS_X as usize;
    let warp = UNIT_POS_Y as usize;
    let g = lane / 4;
    let t = lane % 4;
    let q_start = map.q_starts[qb] as usize;
    let q_end = map.q_starts[qb + 1] as usize;
    let row0 = q_start + chunk * warps * 16;
    let bias_base = b * bias_b_stride as usize + h * bias_h_stride as usize;
    let ks = head_dim + PAD;
    let vs = value_dim + PAD;
    let threads = warps * 32;

    // This lane's two rows (g and g + 8 of the plane's 16), block-local for the in-block mask
    // (0 for rows past the block: their results are never written).
    let row_a = row0 + warp * 16 + g;
    let row_b = row_a + 8;
    let mut local_a = 0usize;
    if row_a < q_end {
        local_a = row_a - q_start;
    }
    let mut local_b = 0usize;
    if row_b < q_end {
        local_b = row_b - q_start;
    }

    // Two stages of K and V tiles: one computes while `cp.async` fills the other; stage
    // `i % 2` is complete when its barrier's phase `(i / 2) % 2` is. 16-byte aligned: cubecl
    // packs shared buffers by element alignment (a barrier first puts them 8 bytes off), and
    // `cp.async` and `ldmatrix` need 16.
    let stage_k = MMA_TILE_K * ks;
    let stage_v = MMA_TILE_K * vs;
    let mut sk = SharedMemory::<F>::new_aligned(2 * MMA_TILE_K * (head_dim + PAD), 16usize);
    let mut sv = SharedMemory::<F>::new_aligned(2 * MMA_TILE_K * (value_dim + PAD), 16usize);
    let bar0 = Barrier::shared(CUBE_DIM, UNIT_POS == 0);
    let bar1 = Barrier::shared(CUBE_DIM, UNIT_POS == 0);
    let def = MmaDefinition::<F, F, f32>::new(16usize, 8usize, 16usize);

    // This lane's ldmatrix offsets into a K tile (rows (mi / 2) * 8 + ri, columns (mi % 2) * 8)
    // and a V tile (transposed: rows (mi % 2) * 8 + ri, columns (mi / 2) * 8), laundered through
    // shared memory across the barriers below: NVVM then cannot re-derive them from the lane
    // index, so each address stays `base + constant` with the constant in the ldmatrix's
    // immediate, instead of being rebuilt from row and column parts (two integer instructions
    // per ldmatrix, a sixth of the loop's instructions).
    let mut lane_offsets = SharedMemory::<u32>::new(2 * threads);
    lane_offsets[UNIT_POS as usize] = lane_offset(ks, false);
    lane_offsets[threads + UNIT_POS as usize] = lane_offset(vs, true);

    // Q fragments, staged through the K buffer.
    let mut qf = Array::<Pair<F>>::new(head_dim / 16 * 4);
    plane_fragments::<F>(q, &mut sk, &mut qf, &map, bh * nq, row0, q_end, head_dim, ks, warps, config.gathered);

    // Every plane has its Q fragments before the first copies overwrite the staging area.
    sync_cube();
    let lane_k = usize::cast_from(lane_offsets[UNIT_POS as usize]);
    let lane_v = usize::cast_from(lane_offsets[threads + UNIT_POS as usize]);
    let mut o = Array::<Pair<f32>>::new(value_dim / 8 * 2);
    #[unroll]
    for i in 0..value_dim / 8 * 2 {
        let mut z = Pair::<f32>::empty();
        z[0usize] = 0.0f32;
        z[1usize] = 0.0f32;
        o[i] = z;
    }
    let mut m_a = f32::new(NEG_BIG);
    let mut m_b = f32::new(NEG_BIG);
    // Per-lane partial row sums (the quad's partials are added at the end).
    let mut l_a = 0.0f32;
    let mut l_b = 0.0f32;
    let mut s = Array::<Pair<f32>>::new(MMA_TILE_K / 8 * 2);
    // A per-key bias without partial blocks: each tile's 64 values (as bias / scale, f32) are
    // staged in shared memory next to its K/V stage, loaded a step ahead by the first 64 units,
    // so the score loop reads them from shared memory instead of waiting on global loads.
    let stage_bias = comptime![has_bias && !config.partial];
    let inv_scale = 1.0f32 / scale;
    let mut sbias = SharedMemory::<f32>::new(2 * MMA_TILE_K);
    let bias_unit = (UNIT_POS as usize) < MMA_TILE_K;

    // The visited key blocks as one sequence of 64-key tiles (blocks are never empty): step
    // (e, tile) computes while step (e, tile + 1) or (e + 1, 0) loads.
    let vis = visits(&map, qb, h, map_heads, config);
    let mut pipe = kv_start::<F>(
        k,
        v,
        bias,
        &map,
        &vis,
        &mut sk,
        &mut sv,
        &mut sbias,
        &bar0,
        bh * nk,
        bias_base,
        max_count,
        inv_scale,
        bias_unit,
        head_dim,
        value_dim,
        threads,
        config,
        stage_bias,
    );
    while pipe.e < vis.count {
        let st = kv_step::<F>(
            &mut pipe,
            k,
            v,
            bias,
            &map,
            &vis,
            &mut sk,
            &mut sv,
            &bar0,
            &bar1,
            bh * nk,
            bias_base,
            max_count,
            bias_unit,
            head_dim,
            value_dim,
            threads,
            config,
            stage_bias,
        );
        let kt = st.kt;
        let block_start = st.block_start;
        let block_end = st.block_end;
        let block_mask = st.block_mask;
        let stage = st.stage;
        let k_off = stage * stage_k;
        let v_off = stage * stage_v;
        // This step's compute, on the tile now in shared memory.
        {
            // S = Q K^T, 8 keys per MMA column chunk, two chunks per ldmatrix.x4 (matrices: keys
            // j*8 | (j+1)*8, head-dim columns 0-7 | 8-15 of the chunk).
            let k_base = k_off + lane_k;
            #[unroll]
            for jp in 0..MMA_TILE_K / 16 {
                let mut c0 = Array::<Pair<f32>>::new(2usize);
                let mut c1 = Array::<Pair<f32>>::new(2usize);
                let z = Pair::<f32>::new(0.0f32);
                c0[0usize] = z;
                c0[1usize] = z;
                c1[0usize] = z;
                c1[1usize] = z;
                #[unroll]
                for kk in 0..head_dim / 16 {
                    let mut a = Array::<Pair<F>>::new(4usize);
                    #[unroll]
                    for r in 0..4usize {
                        a[r] = qf[kk * 4 + r];
                    }
                    let at = k_base + jp * 16 * ks + kk * 16;
                    let regs = def.load_matrix::<F, Const<2>>(&sk.slice(at, at + 8), MatrixIdent::B, 4usize, false);
                    let mut b0 = Array::<Pair<F>>::new(2usize);
                    b0[0usize] = regs[0usize];
                    b0[1usize] = regs[1usize];
                    let mut b1 = Array::<Pair<F>>::new(2usize);
                    b1[0usize] = regs[2usize];
                    b1[1usize] = regs[3usize];
                    let d0 = def.execute(&a, &b0, &c0);
                    c0[0usize] = d0[0usize];
                    c0[1usize] = d0[1usize];
                    let d1 = def.execute(&a, &b1, &c1);
                    c1[0usize] = d1[0usize];
                    c1[1usize] = d1[1usize];
                }
                s[jp * 4] = c0[0usize];
                s[jp * 4 + 1] = c0[1usize];
                s[jp * 4 + 2] = c1[0usize];
                s[jp * 4 + 3] = c1[1usize];
            }

            // Masks (and bias), then the tile's row maxima over the quad. Without partial blocks
            // the scores stay unscaled (the scale, positive, is folded into the exponent; a bias
            // enters as bias / scale, one load per key for both rows) and only a block's last,
            // ragged tile is masked: a uniform branch.
            let tail = kt + MMA_TILE_K > block_end;
            let mut tmax_a = f32::new(NEG_BIG);
            let mut tmax_b = f32::new(NEG_BIG);
            if comptime![config.partial] {
                #[unroll]
                for j in 0..MMA_TILE_K / 8 {
                    #[unroll]
                    for r in 0..2usize {
                        let mut x = s[j * 2 + r];
                        let mut local = local_a;
                        if comptime![r == 1] {
                            local = local_b;
                        }
                        #[unroll]
                        for el in 0..2usize {
                            let key = kt + j * 8 + t * 2 + el;
                            let mut val = f32::new(NEG_BIG);
                            if key < block_end {
                                val = finish_score::<F>(
                                    x[el] * scale,
                                    bias,
                                    &map,
                                    bias_base,
                                    key,
                                    block_mask,
                                    local,
                                    key - block_start,
                                    block_end - block_start,
                                    has_bias,
                                    config,
                                );
                            }
                            x[el] = val;
                        }
                        s[j * 2 + r] = x;
                    }
                }
            } else {
                if comptime![has_bias] {
                    #[unroll]
                    for j in 0..MMA_TILE_K / 8 {
                        let mut xa = s[j * 2];
                        let mut xb = s[j * 2 + 1];
                        #[unroll]
                        for el in 0..2usize {
                            // Staged with the keys clamped to the block: a ragged tail's extra keys
                            // are masked just below.
                            let bv = sbias[stage * MMA_TILE_K + j * 8 + t * 2 + el];
                            xa[el] = xa[el] + bv;
                            xb[el] = xb[el] + bv;
                        }
                        s[j * 2] = xa;
                        s[j * 2 + 1] = xb;
                    }
                }
                if tail {
                    #[unroll]
                    for j in 0..MMA_TILE_K / 8 {
                        #[unroll]
                        for r in 0..2usize {
                            let mut x = s[j * 2 + r];
                            #[unroll]
                            for el in 0..2usize {
                                if kt + j * 8 + t * 2 + el >= block_end {
                                    x[el] = f32::new(NEG_BIG);
                                }
                            }
                            s[j * 2 + r] = x;
                        }
                    }
                }
            }
            #[unroll]
            for j in 0..MMA_TILE_K / 8 {
                let xa = s[j * 2];
                let xb = s[j * 2 + 1];
                tmax_a = f32::max(tmax_a, f32::max(xa[0usize], xa[1usize]));
                tmax_b = f32::max(tmax_b, f32::max(xb[0usize], xb[1usize]));
            }
            tmax_a = f32::max(tmax_a, plane_shuffle_xor(tmax_a, 1u32));
            tmax_a = f32::max(tmax_a, plane_shuffle_xor(tmax_a, 2u32));
            tmax_b = f32::max(tmax_b, plane_shuffle_xor(tmax_b, 1u32));
            tmax_b = f32::max(tmax_b, plane_shuffle_xor(tmax_b, 2u32));
            // `sc` turns what `s` holds into scaled scores; `m_*` are scaled maxima.
            let mut sc = 1.0f32;
            if comptime![!config.partial] {
                sc = scale;
            }
            let new_a = f32::max(m_a, tmax_a * sc);
            let new_b = f32::max(m_b, tmax_b * sc);
            let corr_a = f32::exp(m_a - new_a);
            let corr_b = f32::exp(m_b - new_b);
            m_a = new_a;
            m_b = new_b;
            l_a *= corr_a;
            l_b *= corr_b;
            // Rescale the output only when some row of the plane has a new maximum: after the
            // first tiles that is rare, and the branch is uniform over the plane.
            if plane_any(corr_a < 1.0f32 || corr_b < 1.0f32) {
                #[unroll]
                for jn in 0..value_dim / 8 {
                    let mut xa = o[jn * 2];
                    xa[0usize] *= corr_a;
                    xa[1usize] *= corr_a;
                    o[jn * 2] = xa;
                    let mut xb = o[jn * 2 + 1];
                    xb[0usize] *= corr_b;
                    xb[1usize] *= corr_b;
                    o[jn * 2 + 1] = xb;
                }
            }

            // P = exp(S sc - m), in place; row sums. A row with every key so far masked (only
            // with bias or partial blocks) subtracts 0 instead, so its masked scores give 0.
            let mut sub_a = m_a;
            let mut sub_b = m_b;
            if comptime![has_bias || config.partial] {
                if m_a <= f32::new(NEG_BIG) {
                    sub_a = 0.0f32;
                }
                if m_b <= f32::new(NEG_BIG) {
                    sub_b = 0.0f32;
                }
            }
            #[unroll]
            for j in 0..MMA_TILE_K / 8 {
                let mut xa = s[j * 2];
                xa[0usize] = f32::exp(xa[0usize] * sc - sub_a);
                xa[1usize] = f32::exp(xa[1usize] * sc - sub_a);
                l_a += xa[0usize] + xa[1usize];
                s[j * 2] = xa;
                let mut xb = s[j * 2 + 1];
                xb[0usize] = f32::exp(xb[0usize] * sc - sub_b);
                xb[1usize] = f32::exp(xb[1usize] * sc - sub_b);
                l_b += xb[0usize] + xb[1usize];
                s[j * 2 + 1] = xb;
            }

            // O += P V: the P chunks of keys 16kk..16kk+16 are the A operand as they lie.
            let v_base = v_off + lane_v;
            #[unroll]
            for kk in 0..MMA_TILE_K / 16 {
                let mut a = Array::<Pair<F>>::new(4usize);
                a[0usize] = Pair::<F>::cast_from(s[kk * 4]);
                a[1usize] = Pair::<F>::cast_from(s[kk * 4 + 1]);
                a[2usize] = Pair::<F>::cast_from(s[kk * 4 + 2]);
                a[3usize] = Pair::<F>::cast_from(s[kk * 4 + 3]);
                // Matrices: keys 0-7 | 8-15 of the chunk x value columns jn*8 | (jn+1)*8,
                // transposed on load (V is row-major by key).
                #[unroll]
                for jp in 0..value_dim / 16 {
                    let at = v_base + kk * 16 * vs + jp * 16;
                    let regs = def.load_matrix::<F, Const<2>>(&sv.slice(at, at + 8), MatrixIdent::B, 4usize, true);
                    #[unroll]
                    for half in 0..2usize {
                        let jn = jp * 2 + half;
                        let mut bf = Array::<Pair<F>>::new(2usize);
                        bf[0usize] = regs[half * 2];
                        bf[1usize] = regs[half * 2 + 1];
                        let mut c = Array::<Pair<f32>>::new(2usize);
                        c[0usize] = o[jn * 2];
                        c[1usize] = o[jn * 2 + 1];
                        let d = def.execute(&a, &bf, &c);
                        o[jn * 2] = d[0usize];
                        o[jn * 2 + 1] = d[1usize];
                    }
                }
            }
        }
        // The next tile's bias, into the other stage: everyone finished reading it last step
        // (the barrier at this step's start), and the next step's barrier publishes it.
        kv_stage_bias(&pipe, &st, &mut sbias, inv_scale, bias_unit, stage_bias);
    }

    // Row sums over the quad, then the output rows this lane holds (two values per store).
    let mut out2 = out.to_slice_mut().into_vectorized().with_vector_size::<Const<2>>();
    l_a += plane_shuffle_xor(l_a, 1u32);
    l_a += plane_shuffle_xor(l_a, 2u32);
    l_b += plane_shuffle_xor(l_b, 1u32);
    l_b += plane_shuffle_xor(l_b, 2u32);
    #[unroll]
    for r in 0..2usize {
        let mut row = row_a;
        let mut l = l_a;
        let mut m = m_a;
        if comptime![r == 1] {
            row = row_b;
            l = l_b;
            m = m_b;
        }
        if row < q_end {
            let pos = bh * nq + input_row(&map, row, config.gathered);
            let mut inv = 0.0f32;
            if l > 0.0 {
                inv = 1.0f32 / l;
            }
            #[unroll]
            for jn in 0..value_dim / 8 {
                let x = o[jn * 2 + r];
                let mut y = Pair::<f32>::empty();
                y[0usize] = x[0usize] * inv;
                y[1usize] = x[1usize] * inv;
                out2[(pos * value_dim + jn * 8 + t * 2) / 2] = Pair::<F>::cast_from(y);
            }
            if t == 0 {
                let mut row_lse = empty_lse;
                if l > 0.0 {
                    row_lse = m + f32::ln(l);
                }
                lse[pos] = row_lse;
            }
        }
    }
}
