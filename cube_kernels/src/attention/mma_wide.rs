//! The register-level tensor-core forward with 32 query rows a plane (FlashAttention-2's layout):
//! two 16-row MMA tiles share every K and V fragment a plane loads from shared memory, so each
//! `ldmatrix` of a key or value fragment feeds twice the MMAs of [`super::mma`]'s 16-row planes,
//! and each plane has two independent accumulator chains. The profile of the 16-row kernel at
//! head dim 128 (BENCHMARKS, second and eleventh sessions) showed 32 KB of fragment loads per
//! 128 MMAs a plane and loops bound by their own dependency chains; here the same work loads 20
//! KB with Q from shared memory (head dims above 64: 128 rows of Q fragments would not fit the
//! registers next to the output) and 12 KB with Q in registers.
//!
//! Same pipeline as [`super::mma`]: K and V tiles of [`MMA_TILE_K`] keys in two `cp.async`
//! stages, the bias staged a tile ahead, the online softmax over a row's quad; fragment layouts
//! as documented there. The score loop runs the head dim outermost so each Q fragment is loaded
//! once per tile.

use cubecl::cmma::MmaDefinition;
use cubecl::ir::{FastMath, MatrixIdent};
use cubecl::prelude::barrier::Barrier;
use cubecl::prelude::*;

use super::common::{MapConfig, SparseMap, finish_score, input_row, visits};
use super::mma::{MMA_TILE_K, Oct, PAD, Pair, fetch_rows, lane_offset, store_rows};
use super::mma_pipeline::{kv_stage_bias, kv_start, kv_step};
use super::portable::NEG_BIG;

/// Query rows per plane of the wide forward.
pub const WIDE_ROWS: usize = 32;

/// `acc[at]`, `acc[at + 1]` (rows g and g + 8 of an 8-column accumulator chunk) += the A fragment
/// `frags[a_at..a_at + 4]` times the B fragment `b`: one m16n8k16 MMA.
#[cube]
fn mma_accumulate<F: Float>(
    def: &MmaDefinition<F, F, f32>,
    frags: &Array<Pair<F>>,
    #[comptime] a_at: usize,
    b: &Array<Pair<F>>,
    acc: &mut Array<Pair<f32>>,
    #[comptime] at: usize,
) {
    let mut a = Array::<Pair<F>>::new(4usize);
    #[unroll]
    for r in 0..4usize {
        a[r] = frags[a_at + r];
    }
    let mut c = Array::<Pair<f32>>::new(2usize);
    c[0usize] = acc[at];
    c[1usize] = acc[at + 1];
    let d = def.execute(&a, b, &c);
    acc[at] = d[0usize];
    acc[at + 1] = d[1usize];
}

/// Forward pass over a block map with register-level MMA, 32 query rows a plane. Same contract
/// and arguments as [`super::block_sparse_forward_mma`], with `warps` planes (2, 4 or 6: a cube of
/// 64, 128 or 192 query rows) and the grid's `chunks_per_block = ceil(largest query block / (32 *
/// warps))`.
// Fast exponentials and comptime branches: as in `block_sparse_forward_mma`.
#[cube(launch_unchecked, fast_math = FastMath::ReducedPrecision | FastMath::NotNaN | FastMath::NotInf)]
#[allow(clippy::too_many_arguments, clippy::collapsible_if, clippy::collapsible_else_if)]
pub fn block_sparse_forward_mma_wide<F: Float>(
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
    let cube_rows = warps * WIDE_ROWS;
    let row0 = q_start + chunk * cube_rows;
    // This lane's rows: `plane_row + 16 mt + 8 r + g` for tile `mt` and half `r`, index
    // `i = 2 mt + r` in the per-row state below.
    let plane_row = row0 + warp * WIDE_ROWS + g;
    let bias_base = b * bias_b_stride as usize + h * bias_h_stride as usize;
    let ks = head_dim + PAD;
    let vs = value_dim + PAD;
    let threads = warps * 32;
    // Q fragments live in registers up to head dims 64; above, they are read from shared memory
    // at each tile (the output's 128 accumulators a lane at value dim 128 leave no room).
    let q_regs = comptime![head_dim <= 64 && value_dim <= 64];

    let stage_k = MMA_TILE_K * ks;
    let stage_v = MMA_TILE_K * vs;
    let mut sk = SharedMemory::<F>::new_aligned(2 * MMA_TILE_K * (head_dim + PAD), 16usize);
    let mut sv = SharedMemory::<F>::new_aligned(2 * MMA_TILE_K * (value_dim + PAD), 16usize);
    let mut sq = SharedMemory::<F>::new_aligned(warps * WIDE_ROWS * (head_dim + PAD), 16usize);
    let bar0 = Barrier::shared(CUBE_DIM, UNIT_POS == 0);
    let bar1 = Barrier::shared(CUBE_DIM, UNIT_POS == 0);
    let def = MmaDefinition::<F, F, f32>::new(16usize, 8usize, 16usize);

    // Lane offsets laundered through shared memory (see `block_sparse_forward_mma`): K tile,
    // V tile (transposed), Q tile (A layout: row halves first).
    let mut lane_offsets = SharedMemory::<u32>::new(3 * threads);
    lane_offsets[UNIT_POS as usize] = lane_offset(ks, false);
    lane_offsets[threads + UNIT_POS as usize] = lane_offset(vs, true);
    lane_offsets[2 * threads + UNIT_POS as usize] = lane_offset(ks, true);

    // The cube's Q rows into shared memory (rows past the block repeat its last row).
    let mut regs8 = Array::<Oct<F>>::new((WIDE_ROWS * head_dim / 8).div_ceil(32));
    let q8 = q.to_slice().into_vectorized().with_vector_size::<Const<8>>();
    fetch_rows::<F>(&q8, &mut regs8, &map, bh * nq, row0, q_end, cube_rows, head_dim, threads, config.gathered);
    store_rows::<F>(&regs8, &mut sq, cube_rows, head_dim, ks, threads);
    sync_cube();
    let lane_k = usize::cast_from(lane_offsets[UNIT_POS as usize]);
    let lane_v = usize::cast_from(lane_offsets[threads + UNIT_POS as usize]);
    let q_base = warp * WIDE_ROWS * ks + usize::cast_from(lane_offsets[2 * threads + UNIT_POS as usize]);
    let mut qf = Array::<Pair<F>>::new(comptime![if q_regs { 2 * (head_dim / 16) * 4 } else { 1 }]);
    if comptime![q_regs] {
        #[unroll]
        for mt in 0..2usize {
            #[unroll]
            for kk in 0..head_dim / 16 {
                let at = q_base + mt * 16 * ks + kk * 16;
                let regs = def.load_matrix::<F, Const<2>>(&sq.slice(at, at + 8), MatrixIdent::A, 4usize, false);
                #[unroll]
                for r in 0..4usize {
                    qf[(mt * (head_dim / 16) + kk) * 4 + r] = regs[r];
                }
            }
        }
    }

    let per_tile = value_dim / 8 * 2;
    let mut o = Array::<Pair<f32>>::new(2 * (value_dim / 8) * 2);
    let z = Pair::<f32>::new(0.0f32);
    #[unroll]
    for i in 0..2 * per_tile {
        o[i] = z;
    }
    let mut m = Array::<f32>::new(4usize);
    let mut l = Array::<f32>::new(4usize);
    #[unroll]
    for i in 0..4usize {
        m[i] = f32::new(NEG_BIG);
        l[i] = 0.0f32;
    }
    // Scores of both tiles: `s[16 mt + 2 j + r]` is key chunk `j` (8 keys) of row half `r`.
    let mut s = Array::<Pair<f32>>::new(2 * (MMA_TILE_K / 8) * 2);
    let stage_bias = comptime![has_bias && !config.partial];
    let inv_scale = 1.0f32 / scale;
    let mut sbias = SharedMemory::<f32>::new(2 * MMA_TILE_K);
    let bias_unit = (UNIT_POS as usize) < MMA_TILE_K;

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
        {
            // S = Q K^T, head dim outermost: each Q fragment (from shared memory above head dim
            // 64) is loaded once per tile, each K fragment (two 8-key chunks) feeds four MMAs.
            #[unroll]
            for i in 0..2 * (MMA_TILE_K / 8) * 2 {
                s[i] = z;
            }
            let k_base = k_off + lane_k;
            #[unroll]
            for kk in 0..head_dim / 16 {
                // The A fragments of both tiles: `a[4 mt + r]`.
                let mut a = Array::<Pair<F>>::new(8usize);
                #[unroll]
                for mt in 0..2usize {
                    if comptime![q_regs] {
                        #[unroll]
                        for r in 0..4usize {
                            a[mt * 4 + r] = qf[(mt * (head_dim / 16) + kk) * 4 + r];
                        }
                    } else {
                        let at = q_base + mt * 16 * ks + kk * 16;
                        let regs = def.load_matrix::<F, Const<2>>(&sq.slice(at, at + 8), MatrixIdent::A, 4usize, false);
                        #[unroll]
                        for r in 0..4usize {
                            a[mt * 4 + r] = regs[r];
                        }
                    }
                }
                #[unroll]
                for jp in 0..MMA_TILE_K / 16 {
                    let at = k_base + jp * 16 * ks + kk * 16;
                    let regs = def.load_matrix::<F, Const<2>>(&sk.slice(at, at + 8), MatrixIdent::B, 4usize, false);
                    #[unroll]
                    for half in 0..2usize {
                        let mut bf = Array::<Pair<F>>::new(2usize);
                        bf[0usize] = regs[half * 2];
                        bf[1usize] = regs[half * 2 + 1];
                        #[unroll]
                        for mt in 0..2usize {
                            mma_accumulate::<F>(&def, &a, mt * 4, &bf, &mut s, mt * 16 + (jp * 2 + half) * 2);
                        }
                    }
                }
            }

            // Masks and bias, as in the 16-row kernel, for each of the lane's four rows.
            let tail = kt + MMA_TILE_K > block_end;
            if comptime![config.partial] {
                #[unroll]
                for i in 0..4usize {
                    let row = plane_row + (i / 2) * 16 + (i % 2) * 8;
                    let mut local = 0usize;
                    if row < q_end {
                        local = row - q_start;
                    }
                    #[unroll]
                    for j in 0..MMA_TILE_K / 8 {
                        let at_s = (i / 2) * 16 + j * 2 + i % 2;
                        let mut x = s[at_s];
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
                        s[at_s] = x;
                    }
                }
            } else {
                if comptime![has_bias] {
                    #[unroll]
                    for j in 0..MMA_TILE_K / 8 {
                        #[unroll]
                        for el in 0..2usize {
                            let bv = sbias[stage * MMA_TILE_K + j * 8 + t * 2 + el];
                            #[unroll]
                            for i in 0..4usize {
                                let at_s = (i / 2) * 16 + j * 2 + i % 2;
                                let mut x = s[at_s];
                                x[el] = x[el] + bv;
                                s[at_s] = x;
                            }
                        }
                    }
                }
                if tail {
                    #[unroll]
                    for j in 0..MMA_TILE_K / 8 {
                        #[unroll]
                        for el in 0..2usize {
                            if kt + j * 8 + t * 2 + el >= block_end {
                                #[unroll]
                                for i in 0..4usize {
                                    let at_s = (i / 2) * 16 + j * 2 + i % 2;
                                    let mut x = s[at_s];
                                    x[el] = f32::new(NEG_BIG);
                                    s[at_s] = x;
                                }
                            }
                        }
                    }
                }
            }

            // Row maxima over the quad, the new running maxima, and the rescale of the
            // output when any row of the plane has a new maximum (uniform branch).
            let mut sc = 1.0f32;
            if comptime![!config.partial] {
                sc = scale;
            }
            let mut corr = Array::<f32>::new(4usize);
            let mut any_new = false;
            #[unroll]
            for i in 0..4usize {
                let mut tmax = f32::new(NEG_BIG);
                #[unroll]
                for j in 0..MMA_TILE_K / 8 {
                    let x = s[(i / 2) * 16 + j * 2 + i % 2];
                    tmax = f32::max(tmax, f32::max(x[0usize], x[1usize]));
                }
                tmax = f32::max(tmax, plane_shuffle_xor(tmax, 1u32));
                tmax = f32::max(tmax, plane_shuffle_xor(tmax, 2u32));
                let new_m = f32::max(m[i], tmax * sc);
                let c = f32::exp(m[i] - new_m);
                corr[i] = c;
                any_new = any_new || c < 1.0f32;
                m[i] = new_m;
                l[i] = l[i] * c;
            }
            if plane_any(any_new) {
                #[unroll]
                for mt in 0..2usize {
                    #[unroll]
                    for jn in 0..value_dim / 8 {
                        #[unroll]
                        for r in 0..2usize {
                            let at_o = mt * per_tile + jn * 2 + r;
                            let mut x = o[at_o];
                            x[0usize] *= corr[mt * 2 + r];
                            x[1usize] *= corr[mt * 2 + r];
                            o[at_o] = x;
                        }
                    }
                }
            }

            // P = exp(S sc - m) in place, and the row sums. A row with every key so far masked
            // subtracts 0 instead (only with bias or partial blocks).
            #[unroll]
            for i in 0..4usize {
                let mut sub = m[i];
                if comptime![has_bias || config.partial] {
                    if sub <= f32::new(NEG_BIG) {
                        sub = 0.0f32;
                    }
                }
                let mut sum = l[i];
                #[unroll]
                for j in 0..MMA_TILE_K / 8 {
                    let at_s = (i / 2) * 16 + j * 2 + i % 2;
                    let mut x = s[at_s];
                    x[0usize] = f32::exp(x[0usize] * sc - sub);
                    x[1usize] = f32::exp(x[1usize] * sc - sub);
                    sum += x[0usize] + x[1usize];
                    s[at_s] = x;
                }
                l[i] = sum;
            }

            // O += P V: each V fragment (two 8-column chunks) feeds four MMAs.
            let v_base = v_off + lane_v;
            #[unroll]
            for kk in 0..MMA_TILE_K / 16 {
                // The A fragments of P (keys 16kk..16kk+16) of both tiles, as they lie: `p[4 mt + r]`.
                let mut p = Array::<Pair<F>>::new(8usize);
                #[unroll]
                for r in 0..8usize {
                    p[r] = Pair::<F>::cast_from(s[(r / 4) * 16 + kk * 4 + r % 4]);
                }
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
                        #[unroll]
                        for mt in 0..2usize {
                            mma_accumulate::<F>(&def, &p, mt * 4, &bf, &mut o, mt * per_tile + jn * 2);
                        }
                    }
                }
            }
        }
        kv_stage_bias(&pipe, &st, &mut sbias, inv_scale, bias_unit, stage_bias);
    }

    // Row sums over the quad, then the lane's four output rows (two values per store).
    let mut out2 = out.to_slice_mut().into_vectorized().with_vector_size::<Const<2>>();
    #[unroll]
    for i in 0..4usize {
        let mut sum = l[i];
        sum += plane_shuffle_xor(sum, 1u32);
        sum += plane_shuffle_xor(sum, 2u32);
        let row = plane_row + (i / 2) * 16 + (i % 2) * 8;
        if row < q_end {
            let pos = bh * nq + input_row(&map, row, config.gathered);
            let mut inv = 0.0f32;
            if sum > 0.0 {
                inv = 1.0f32 / sum;
            }
            #[unroll]
            for jn in 0..value_dim / 8 {
                let x = o[(i / 2) * per_tile + jn * 2 + i % 2];
                let mut y = Pair::<f32>::empty();
                y[0usize] = x[0usize] * inv;
                y[1usize] = x[1usize] * inv;
                out2[(pos * value_dim + jn * 8 + t * 2) / 2] = Pair::<F>::cast_from(y);
            }
            if t == 0 {
                let mut row_lse = empty_lse;
                if sum > 0.0 {
                    row_lse = m[i] + f32::ln(sum);
                }
                lse[pos] = row_lse;
            }
        }
    }
}
