//! The tensor-core backward (PTX `mma.sync` m16n8k16, f16 or bf16 inputs, f32 accumulation) on
//! the forward's block maps, with the forward's fragment layouts, `ldmatrix` patterns and
//! two-stage `cp.async` tiles (see [`super::mma`]). Two kernels, so no gradient needs atomics:
//!
//! - [`block_sparse_backward_dq_mma`] walks the forward map. A plane owns 16 query rows with
//!   their Q and dO fragments in registers; per 16-key chunk of each 64-key K/V tile:
//!   `S = Q K^T` and `dP = dO V^T` by MMA, `dS = P (dP - delta)` in registers, `dQ += dS K` by MMA
//!   (the f32 accumulators of `dS` are the A operand as they lie).
//! - [`block_sparse_backward_dkv_mma`] walks the transposed map (key block -> query blocks). A
//!   plane owns 16 key rows; the cube's keys of K and V stay in shared memory; per 16-query
//!   chunk of each 64-query Q/dO tile: `S^T = K Q^T`, `dP^T = V dO^T`, `dV += P^T dO`,
//!   `dK += dS^T Q` by MMA, and the key's `dbias` is the row sum of `dS^T`.

use cubecl::cmma::MmaDefinition;
use cubecl::ir::{FastMath, MatrixIdent};
use cubecl::prelude::barrier::Barrier;
use cubecl::prelude::*;

use super::backward::row_lse;
use super::common::{
    MapConfig, SparseMap, Visits, finish_score, input_row, key_block, mask_allows, mask_offset, visits,
};
use super::mma::{MMA_TILE_K, PAD, Pair, copy_rows, lane_offset, plane_fragments};
use super::portable::NEG_BIG;

/// LSE given to query rows past their block in a staged tile: every weight of theirs is
/// `exp(x - 1e30) = 0` (finite, as the fast-math exponential needs).
const NO_ROW_LSE: f32 = 1.0e30;

/// Where a cube is in its sequence of 64-row tiles over the visited blocks.
#[derive(CubeType)]
pub struct TileWalk {
    /// Visited entry.
    pub e: usize,
    /// Tile within the entry's block.
    pub tile: usize,
    /// First row (map position) of the entry's block.
    pub start: usize,
    /// End of the entry's block.
    pub end: usize,
    /// The entry's mask word (`u32::MAX`: a full block).
    pub mask: u32,
}

/// Points `w` at entry `w.e` (which must exist).
#[cube]
fn walk_enter(map: &SparseMap, vis: &Visits, w: &mut TileWalk, max_count: u32, #[comptime] config: MapConfig) {
    let kb = key_block(map, vis, w.e, max_count, config);
    w.start = map.k_starts[kb] as usize;
    w.end = map.k_starts[kb + 1] as usize;
    if comptime![config.partial] {
        w.mask = mask_offset(map, vis, w.e, max_count);
    }
}

/// Moves `w` to the next tile (blocks are never empty); `w.e == vis.count` at the end.
#[cube]
fn walk_next(map: &SparseMap, vis: &Visits, w: &mut TileWalk, max_count: u32, #[comptime] config: MapConfig) {
    w.tile += 1;
    if w.start + w.tile * MMA_TILE_K >= w.end {
        w.e += 1;
        w.tile = 0;
        if w.e < vis.count {
            walk_enter(map, vis, w, max_count, config);
        }
    }
}

/// Four B registers (two 8-column halves of a 16x16 chunk) by `ldmatrix.x4` from `smem` at `at`
/// (the lane's row address), transposed on load when the chunk is stored row-major by its
/// reduction dimension.
#[cube]
pub(crate) fn load_b<F: Float>(
    smem: &SharedMemory<F>,
    at: usize,
    out: &mut Array<Pair<F>>,
    #[comptime] transposed: bool,
) {
    let def = MmaDefinition::<F, F, f32>::new(16usize, 8usize, 16usize);
    let regs = def.load_matrix::<F, Const<2>>(&smem.slice(at, at + 8), MatrixIdent::B, 4usize, transposed);
    #[unroll]
    for r in 0..4usize {
        out[r] = regs[r];
    }
}

/// `acc[at..at + 2] += a * (b[half * 2], b[half * 2 + 1])`: one m16n8k16 MMA.
#[cube]
pub(crate) fn mma_add<F: Float>(
    a: &Array<Pair<F>>,
    b: &Array<Pair<F>>,
    acc: &mut Array<Pair<f32>>,
    at: usize,
    #[comptime] half: usize,
) {
    let def = MmaDefinition::<F, F, f32>::new(16usize, 8usize, 16usize);
    let mut bf = Array::<Pair<F>>::new(2usize);
    bf[0usize] = b[half * 2];
    bf[1usize] = b[half * 2 + 1];
    let mut c = Array::<Pair<f32>>::new(2usize);
    c[0usize] = acc[at];
    c[1usize] = acc[at + 1];
    let d = def.execute(a, &bf, &c);
    acc[at] = d[0usize];
    acc[at + 1] = d[1usize];
}

/// Zeroes the first `n` accumulator pairs of `z`.
#[cube]
fn zero<E: Float>(z: &mut Array<Pair<E>>, #[comptime] n: usize) {
    #[unroll]
    for i in 0..n {
        z[i] = Pair::<E>::new(E::new(0.0));
    }
}

/// The A operand made of four accumulator pairs (16 rows x 16 columns in accumulator layout).
#[cube]
fn as_a<F: Float>(x: &Array<Pair<f32>>, a: &mut Array<Pair<F>>) {
    #[unroll]
    for i in 0..4usize {
        a[i] = Pair::<F>::cast_from(x[i]);
    }
}

/// `X (16 rows) · Y^T` over `dim` for one 16-column chunk: `a` holds the rows' A fragments
/// (`dim / 16` groups of four), `smem` holds Y row-major from element `base` (rows `16 * chunk`..,
/// stride `stride`); `c` gets four accumulator pairs (columns 0-7 rows g | g + 8, then
/// columns 8-15). `lane_b` is this lane's [`lane_offset`]`(stride, false)`, laundered by the
/// caller (see the forward).
#[cube]
#[allow(clippy::too_many_arguments)]
fn scores_from_regs<F: Float>(
    a: &Array<Pair<F>>,
    smem: &SharedMemory<F>,
    base: usize,
    chunk: usize,
    c: &mut Array<Pair<f32>>,
    lane_b: usize,
    #[comptime] dim: usize,
    #[comptime] stride: usize,
) {
    zero(c, 4usize);
    let mut b = Array::<Pair<F>>::new(4usize);
    let b0 = base + lane_b + chunk * 16 * stride;
    #[unroll]
    for kk in 0..dim / 16 {
        let mut af = Array::<Pair<F>>::new(4usize);
        #[unroll]
        for r in 0..4usize {
            af[r] = a[kk * 4 + r];
        }
        load_b::<F>(smem, b0 + kk * 16, &mut b, false);
        mma_add::<F>(&af, &b, c, 0usize, 0usize);
        mma_add::<F>(&af, &b, c, 2usize, 1usize);
    }
}

/// [`scores_from_regs`] with the rows' A fragments read from `own` (this plane's 16 rows of a
/// row-major tile, stride `stride`; `lane_a` is this lane's [`lane_offset`]`(stride, true)`)
/// instead of registers.
#[cube]
#[allow(clippy::too_many_arguments)]
fn scores_from_shared<F: Float>(
    own: &SharedMemory<F>,
    smem: &SharedMemory<F>,
    base: usize,
    chunk: usize,
    c: &mut Array<Pair<f32>>,
    lane_a: usize,
    lane_b: usize,
    #[comptime] dim: usize,
    #[comptime] stride: usize,
) {
    let warp = UNIT_POS_Y as usize;
    let def = MmaDefinition::<F, F, f32>::new(16usize, 8usize, 16usize);
    zero(c, 4usize);
    let mut b = Array::<Pair<F>>::new(4usize);
    let a0 = warp * 16 * stride + lane_a;
    let b0 = base + lane_b + chunk * 16 * stride;
    #[unroll]
    for kk in 0..dim / 16 {
        let at = a0 + kk * 16;
        let regs = def.load_matrix::<F, Const<2>>(&own.slice(at, at + 8), MatrixIdent::A, 4usize, false);
        let mut af = Array::<Pair<F>>::new(4usize);
        #[unroll]
        for r in 0..4usize {
            af[r] = regs[r];
        }
        load_b::<F>(smem, b0 + kk * 16, &mut b, false);
        mma_add::<F>(&af, &b, c, 0usize, 0usize);
        mma_add::<F>(&af, &b, c, 2usize, 1usize);
    }
}

/// `acc += A · Y` where `a` is 16 rows x 16 (the chunk `chunk` of the reduction dimension) and
/// Y is stored row-major by that dimension in `smem` from `base` (stride `stride`), `dim`
/// columns: `acc` holds `dim / 8` column groups of two pairs (rows g, g + 8). `lane_t` is this
/// lane's [`lane_offset`]`(stride, true)`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn accumulate<F: Float>(
    a: &Array<Pair<F>>,
    smem: &SharedMemory<F>,
    base: usize,
    chunk: usize,
    acc: &mut Array<Pair<f32>>,
    lane_t: usize,
    #[comptime] dim: usize,
    #[comptime] stride: usize,
) {
    let mut b = Array::<Pair<F>>::new(4usize);
    let b0 = base + lane_t + chunk * 16 * stride;
    #[unroll]
    for jp in 0..dim / 16 {
        load_b::<F>(smem, b0 + jp * 16, &mut b, true);
        mma_add::<F>(a, &b, acc, jp * 4, 0usize);
        mma_add::<F>(a, &b, acc, jp * 4 + 2, 1usize);
    }
}

/// Writes the accumulator rows `row` (`r` = 0: rows g, 1: rows g + 8) times `factor` as output
/// row `pos` of `dst` (`dim` columns, two values per store).
#[cube]
fn store_row<F: Float>(
    dst: &mut Array<F>,
    acc: &Array<Pair<f32>>,
    pos: usize,
    factor: f32,
    #[comptime] r: usize,
    #[comptime] dim: usize,
) {
    let t = UNIT_POS_X as usize % 4;
    let mut dst2 = dst.to_slice_mut().into_vectorized().with_vector_size::<Const<2>>();
    #[unroll]
    for jn in 0..dim / 8 {
        let x = acc[jn * 2 + r];
        let mut y = Pair::<f32>::empty();
        y[0usize] = x[0usize] * factor;
        y[1usize] = x[1usize] * factor;
        dst2[(pos * dim + jn * 8 + t * 2) / 2] = Pair::<F>::cast_from(y);
    }
}

/// `dq` over the forward map with register-level MMA: contract of
/// [`super::block_sparse_backward_dq_portable`], the head-dim and scale conditions of
/// [`super::block_sparse_forward_mma`]. Cube `(32, warps)` (`warps` a multiple of 4), grid
/// `(nqb * chunks_per_block, bh)` with `chunks_per_block = ceil(largest query block / (16 *
/// warps))`.
// `collapsible_if`: outer `if`s on comptime flags are code paths.
#[cube(launch_unchecked, fast_math = FastMath::ReducedPrecision | FastMath::NotNaN | FastMath::NotInf)]
#[allow(clippy::too_many_arguments, clippy::collapsible_if)]
pub fn block_sparse_backward_dq_mma<F: Float>(
    q: &Array<F>,
    k: &Array<F>,
    v: &Array<F>,
    bias: &Array<F>,
    map: SparseMap,
    d_out: &Array<F>,
    lse: &Array<f32>,
    delta: &Array<f32>,
    dq: &mut Array<F>,
    q_len: u32,
    k_len: u32,
    heads: u32,
    map_heads: u32,
    max_count: u32,
    chunks_per_block: u32,
    bias_b_stride: u32,
    bias_h_stride: u32,
    scale: f32,
    #[comptime] head_dim: usize,
    #[comptime] value_dim: usize,
    #[comptime] has_bias: bool,
    #[comptime] has_d_out: bool,
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
    let warp = UNIT_POS_Y as usize;
    let g = UNIT_POS_X as usize / 4;
    let t = UNIT_POS_X as usize % 4;
    let q_start = map.q_starts[qb] as usize;
    let q_end = map.q_starts[qb + 1] as usize;
    let row0 = q_start + chunk * warps * 16;
    let bias_base = b * bias_b_stride as usize + h * bias_h_stride as usize;
    let ks = head_dim + PAD;
    let vs = value_dim + PAD;
    let threads = warps * 32;

    // This lane's rows g and g + 8 of the plane: block-local index (0 past the block, where
    // nothing is written), LSE and delta.
    let mut local = Array::<u32>::new(2usize);
    let mut row_m = Array::<f32>::new(2usize);
    let mut row_d = Array::<f32>::new(2usize);
    #[unroll]
    for r in 0..2usize {
        let row = row0 + warp * 16 + g + r * 8;
        local[r] = 0u32;
        row_m[r] = 0.0f32;
        row_d[r] = 0.0f32;
        if row < q_end {
            let at = bh * nq + input_row(&map, row, config.gathered);
            local[r] = (row - q_start) as u32;
            row_m[r] = row_lse(lse[at]);
            row_d[r] = delta[at];
        }
    }

    let stage_k = MMA_TILE_K * ks;
    let stage_v = MMA_TILE_K * vs;
    let mut sk = SharedMemory::<F>::new_aligned(2 * MMA_TILE_K * (head_dim + PAD), 16usize);
    let mut sv = SharedMemory::<F>::new_aligned(2 * MMA_TILE_K * (value_dim + PAD), 16usize);
    let bar0 = Barrier::shared(CUBE_DIM, UNIT_POS == 0);
    let bar1 = Barrier::shared(CUBE_DIM, UNIT_POS == 0);

    // ldmatrix lane offsets, laundered through shared memory as in the forward.
    let mut lane_offsets = SharedMemory::<u32>::new(3 * threads);
    lane_offsets[UNIT_POS as usize] = lane_offset(ks, false);
    lane_offsets[threads + UNIT_POS as usize] = lane_offset(vs, false);
    lane_offsets[2 * threads + UNIT_POS as usize] = lane_offset(ks, true);

    // Q and dO fragments, staged through the K and V buffers.
    let mut qf = Array::<Pair<F>>::new(head_dim / 16 * 4);
    plane_fragments::<F>(q, &mut sk, &mut qf, &map, bh * nq, row0, q_end, head_dim, ks, warps, config.gathered);
    let mut dof = Array::<Pair<F>>::new(value_dim / 16 * 4);
    if comptime![has_d_out] {
        plane_fragments::<F>(
            d_out,
            &mut sv,
            &mut dof,
            &map,
            bh * nq,
            row0,
            q_end,
            value_dim,
            vs,
            warps,
            config.gathered,
        );
    }
    sync_cube();
    let lane_k = usize::cast_from(lane_offsets[UNIT_POS as usize]);
    let lane_v = usize::cast_from(lane_offsets[threads + UNIT_POS as usize]);
    let lane_kt = usize::cast_from(lane_offsets[2 * threads + UNIT_POS as usize]);
    let mut acc = Array::<Pair<f32>>::new(head_dim / 8 * 2);
    zero(&mut acc, head_dim / 8 * 2);

    let vis = visits(&map, qb, h, map_heads, config);
    let mut walk = TileWalk { e: 0usize, tile: 0usize, start: 0usize, end: 0usize, mask: 0xFFFF_FFFFu32 };
    if vis.count > 0 {
        walk_enter(&map, &vis, &mut walk, max_count, config);
        copy_rows::<F>(
            k,
            &mut sk,
            0usize,
            &map,
            bh * nk,
            walk.start,
            walk.end,
            MMA_TILE_K,
            head_dim,
            ks,
            threads,
            config.gathered,
        );
        copy_rows::<F>(
            v,
            &mut sv,
            0usize,
            &map,
            bh * nk,
            walk.start,
            walk.end,
            MMA_TILE_K,
            value_dim,
            vs,
            threads,
            config.gathered,
        );
        bar0.commit_copy_async();
        bar0.arrive();
    }
    let mut step = 0usize;
    while walk.e < vis.count {
        let kt = walk.start + walk.tile * MMA_TILE_K;
        let block_start = walk.start;
        let block_end = walk.end;
        let block_mask = walk.mask;
        let stage = step % 2;
        // Everyone is done with the other stage; fill it with the next tile.
        sync_cube();
        walk_next(&map, &vis, &mut walk, max_count, config);
        if walk.e < vis.count {
            let next = walk.start + walk.tile * MMA_TILE_K;
            let other = 1 - stage;
            copy_rows::<F>(
                k,
                &mut sk,
                other * stage_k,
                &map,
                bh * nk,
                next,
                walk.end,
                MMA_TILE_K,
                head_dim,
                ks,
                threads,
                config.gathered,
            );
            copy_rows::<F>(
                v,
                &mut sv,
                other * stage_v,
                &map,
                bh * nk,
                next,
                walk.end,
                MMA_TILE_K,
                value_dim,
                vs,
                threads,
                config.gathered,
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
        let k_off = stage * stage_k;
        let v_off = stage * stage_v;
        step += 1;

        #[unroll]
        for jc in 0..MMA_TILE_K / 16 {
            let mut s = Array::<Pair<f32>>::new(4usize);
            scores_from_regs::<F>(&qf, &sk, k_off, jc, &mut s, lane_k, head_dim, ks);
            let mut dp = Array::<Pair<f32>>::new(4usize);
            zero(&mut dp, 4usize);
            if comptime![has_d_out] {
                scores_from_regs::<F>(&dof, &sv, v_off, jc, &mut dp, lane_v, value_dim, vs);
            }
            // dS = P (dP - delta), P rebuilt from the LSE; masked keys and keys past the block
            // (the tile repeats the block's last row there) weigh 0.
            let mut ds = Array::<Pair<f32>>::new(4usize);
            #[unroll]
            for i in 0..4usize {
                let r = comptime![i % 2];
                let x = s[i];
                let y = dp[i];
                let mut z = Pair::<f32>::empty();
                #[unroll]
                for el in 0..2usize {
                    let key = kt + jc * 16 + (i / 2) * 8 + t * 2 + el;
                    let mut val = f32::new(NEG_BIG);
                    if key < block_end {
                        val = finish_score::<F>(
                            x[el] * scale,
                            bias,
                            &map,
                            bias_base,
                            key,
                            block_mask,
                            local[r] as usize,
                            key - block_start,
                            block_end - block_start,
                            has_bias,
                            config,
                        );
                    }
                    let p = f32::exp(val - row_m[r]);
                    z[el] = p * (y[el] - row_d[r]);
                }
                ds[i] = z;
            }
            // dQ += dS K (K row-major by key: the reduction dimension).
            let mut a = Array::<Pair<F>>::new(4usize);
            as_a::<F>(&ds, &mut a);
            accumulate::<F>(&a, &sk, k_off, jc, &mut acc, lane_kt, head_dim, ks);
        }
    }

    #[unroll]
    for r in 0..2usize {
        let row = row0 + warp * 16 + g + r * 8;
        if row < q_end {
            store_row::<F>(dq, &acc, bh * nq + input_row(&map, row, config.gathered), scale, r, head_dim);
        }
    }
}

/// `dk`, `dv` and the per-key `dbias` over the transposed map `tmap` with register-level MMA:
/// contract of [`super::block_sparse_backward_dkv_portable`], the head-dim and scale conditions
/// of [`super::block_sparse_forward_mma`]. Cube `(32, warps)` (`16 * warps` key rows, `warps` 4
/// or 8), grid `(nkb * chunks_per_block, bh)` with `chunks_per_block = ceil(largest key block /
/// (16 * warps))`.
// `collapsible_if`: outer `if`s on comptime flags are code paths.
#[cube(launch_unchecked, fast_math = FastMath::ReducedPrecision | FastMath::NotNaN | FastMath::NotInf)]
#[allow(clippy::too_many_arguments, clippy::collapsible_if)]
pub fn block_sparse_backward_dkv_mma<F: Float>(
    q: &Array<F>,
    k: &Array<F>,
    v: &Array<F>,
    bias: &Array<F>,
    tmap: SparseMap,
    d_out: &Array<F>,
    lse: &Array<f32>,
    delta: &Array<f32>,
    dk: &mut Array<F>,
    dv: &mut Array<F>,
    dbias: &mut Array<f32>,
    q_len: u32,
    k_len: u32,
    heads: u32,
    map_heads: u32,
    max_count: u32,
    chunks_per_block: u32,
    bias_b_stride: u32,
    bias_h_stride: u32,
    scale: f32,
    #[comptime] head_dim: usize,
    #[comptime] value_dim: usize,
    #[comptime] has_bias: bool,
    #[comptime] has_d_out: bool,
    #[comptime] config: MapConfig,
    #[comptime] warps: usize,
) {
    let nq = q_len as usize;
    let nk = k_len as usize;
    let bh = CUBE_POS_Y as usize;
    let h = bh % heads as usize;
    let b = bh / heads as usize;
    let kb = (CUBE_POS_X / chunks_per_block) as usize;
    let chunk = (CUBE_POS_X % chunks_per_block) as usize;
    let warp = UNIT_POS_Y as usize;
    let g = UNIT_POS_X as usize / 4;
    let t = UNIT_POS_X as usize % 4;
    let k_start = tmap.q_starts[kb] as usize;
    let k_end = tmap.q_starts[kb + 1] as usize;
    let row0 = k_start + chunk * warps * 16;
    let ks = head_dim + PAD;
    let vs = value_dim + PAD;
    let threads = warps * 32;

    // This lane's keys g and g + 8 of the plane: block-local index (0 past the block, where
    // nothing is written) and bias.
    let mut local = Array::<u32>::new(2usize);
    let mut key_bias = Array::<f32>::new(2usize);
    #[unroll]
    for r in 0..2usize {
        let key = row0 + warp * 16 + g + r * 8;
        local[r] = 0u32;
        key_bias[r] = 0.0f32;
        if key < k_end {
            local[r] = (key - k_start) as u32;
            if comptime![has_bias] {
                let at =
                    b * bias_b_stride as usize + h * bias_h_stride as usize + input_row(&tmap, key, config.gathered);
                key_bias[r] = f32::cast_from(bias[at]);
            }
        }
    }

    // The cube's own K and V rows, then two stages of Q / dO tiles with their LSE and delta.
    let stage_q = MMA_TILE_K * ks;
    let stage_o = MMA_TILE_K * vs;
    let mut own_k = SharedMemory::<F>::new_aligned(warps * 16 * (head_dim + PAD), 16usize);
    let mut own_v = SharedMemory::<F>::new_aligned(warps * 16 * (value_dim + PAD), 16usize);
    let mut sq = SharedMemory::<F>::new_aligned(2 * MMA_TILE_K * (head_dim + PAD), 16usize);
    let mut sdo = SharedMemory::<F>::new_aligned(2 * MMA_TILE_K * (value_dim + PAD), 16usize);
    let mut s_lse = SharedMemory::<f32>::new(2 * MMA_TILE_K);
    let mut s_delta = SharedMemory::<f32>::new(2 * MMA_TILE_K);
    let bar0 = Barrier::shared(CUBE_DIM, UNIT_POS == 0);
    let bar1 = Barrier::shared(CUBE_DIM, UNIT_POS == 0);

    // ldmatrix lane offsets, laundered through shared memory as in the forward.
    let mut lane_offsets = SharedMemory::<u32>::new(4 * threads);
    lane_offsets[UNIT_POS as usize] = lane_offset(ks, false);
    lane_offsets[threads + UNIT_POS as usize] = lane_offset(vs, false);
    lane_offsets[2 * threads + UNIT_POS as usize] = lane_offset(ks, true);
    lane_offsets[3 * threads + UNIT_POS as usize] = lane_offset(vs, true);
    sync_cube();
    let lane_q = usize::cast_from(lane_offsets[UNIT_POS as usize]);
    let lane_o = usize::cast_from(lane_offsets[threads + UNIT_POS as usize]);
    let lane_qt = usize::cast_from(lane_offsets[2 * threads + UNIT_POS as usize]);
    let lane_ot = usize::cast_from(lane_offsets[3 * threads + UNIT_POS as usize]);

    let mut dk_acc = Array::<Pair<f32>>::new(head_dim / 8 * 2);
    zero(&mut dk_acc, head_dim / 8 * 2);
    let mut dv_acc = Array::<Pair<f32>>::new(value_dim / 8 * 2);
    zero(&mut dv_acc, value_dim / 8 * 2);
    let mut db = Array::<f32>::new(2usize);
    db[0usize] = 0.0f32;
    db[1usize] = 0.0f32;

    let vis = visits(&tmap, kb, h, map_heads, config);
    let mut walk = TileWalk { e: 0usize, tile: 0usize, start: 0usize, end: 0usize, mask: 0xFFFF_FFFFu32 };
    if vis.count > 0 {
        // The own rows land with the first stage (same barrier).
        copy_rows::<F>(
            k,
            &mut own_k,
            0usize,
            &tmap,
            bh * nk,
            row0,
            k_end,
            warps * 16,
            head_dim,
            ks,
            threads,
            config.gathered,
        );
        copy_rows::<F>(
            v,
            &mut own_v,
            0usize,
            &tmap,
            bh * nk,
            row0,
            k_end,
            warps * 16,
            value_dim,
            vs,
            threads,
            config.gathered,
        );
        walk_enter(&tmap, &vis, &mut walk, max_count, config);
        copy_rows::<F>(
            q,
            &mut sq,
            0usize,
            &tmap,
            bh * nq,
            walk.start,
            walk.end,
            MMA_TILE_K,
            head_dim,
            ks,
            threads,
            config.gathered,
        );
        if comptime![has_d_out] {
            copy_rows::<F>(
                d_out,
                &mut sdo,
                0usize,
                &tmap,
                bh * nq,
                walk.start,
                walk.end,
                MMA_TILE_K,
                value_dim,
                vs,
                threads,
                config.gathered,
            );
        }
        bar0.commit_copy_async();
        bar0.arrive();
        stage_stats(
            lse,
            delta,
            &mut s_lse,
            &mut s_delta,
            0usize,
            &tmap,
            bh * nq,
            walk.start,
            walk.end,
            config.gathered,
        );
    }
    let mut step = 0usize;
    while walk.e < vis.count {
        let qt = walk.start + walk.tile * MMA_TILE_K;
        let block_start = walk.start;
        let block_end = walk.end;
        let block_mask = walk.mask;
        let stage = step % 2;
        // Everyone is done with the other stage; fill it with the next tile (the LSE and delta
        // by plain stores, visible after the next step's sync).
        sync_cube();
        walk_next(&tmap, &vis, &mut walk, max_count, config);
        if walk.e < vis.count {
            let next = walk.start + walk.tile * MMA_TILE_K;
            let other = 1 - stage;
            copy_rows::<F>(
                q,
                &mut sq,
                other * stage_q,
                &tmap,
                bh * nq,
                next,
                walk.end,
                MMA_TILE_K,
                head_dim,
                ks,
                threads,
                config.gathered,
            );
            if comptime![has_d_out] {
                copy_rows::<F>(
                    d_out,
                    &mut sdo,
                    other * stage_o,
                    &tmap,
                    bh * nq,
                    next,
                    walk.end,
                    MMA_TILE_K,
                    value_dim,
                    vs,
                    threads,
                    config.gathered,
                );
            }
            if other == 0 {
                bar0.commit_copy_async();
                bar0.arrive();
            } else {
                bar1.commit_copy_async();
                bar1.arrive();
            }
            stage_stats(
                lse,
                delta,
                &mut s_lse,
                &mut s_delta,
                other * MMA_TILE_K,
                &tmap,
                bh * nq,
                next,
                walk.end,
                config.gathered,
            );
        }
        let phase = ((step / 2) % 2) as u32;
        if stage == 0 {
            bar0.wait_parity(phase);
        } else {
            bar1.wait_parity(phase);
        }
        let q_off = stage * stage_q;
        let o_off = stage * stage_o;
        let st = stage * MMA_TILE_K;
        step += 1;

        #[unroll]
        for jc in 0..MMA_TILE_K / 16 {
            let mut s = Array::<Pair<f32>>::new(4usize);
            scores_from_shared::<F>(&own_k, &sq, q_off, jc, &mut s, lane_qt, lane_q, head_dim, ks);
            let mut dp = Array::<Pair<f32>>::new(4usize);
            zero(&mut dp, 4usize);
            if comptime![has_d_out] {
                scores_from_shared::<F>(&own_v, &sdo, o_off, jc, &mut dp, lane_ot, lane_o, value_dim, vs);
            }
            // P^T and dS^T = P^T (dP^T - delta): rows are keys, columns queries of the tile.
            let mut pt = Array::<Pair<f32>>::new(4usize);
            let mut ds = Array::<Pair<f32>>::new(4usize);
            #[unroll]
            for i in 0..4usize {
                let r = comptime![i % 2];
                let x = s[i];
                let y = dp[i];
                let mut pz = Pair::<f32>::empty();
                let mut dz = Pair::<f32>::empty();
                #[unroll]
                for el in 0..2usize {
                    let col = jc * 16 + (i / 2) * 8 + t * 2 + el;
                    let mut val = x[el] * scale + key_bias[r];
                    if comptime![config.partial] {
                        // Nested: a full block's word is no index, a row past the block no row.
                        if block_mask != u32::MAX {
                            if qt + col < block_end {
                                if !mask_allows(
                                    &tmap,
                                    block_mask,
                                    qt + col - block_start,
                                    local[r] as usize,
                                    k_end - k_start,
                                ) {
                                    val = f32::new(NEG_BIG);
                                }
                            }
                        }
                    }
                    let p = f32::exp(val - s_lse[st + col]);
                    pz[el] = p;
                    dz[el] = p * (y[el] - s_delta[st + col]);
                    db[r] += dz[el];
                }
                pt[i] = pz;
                ds[i] = dz;
            }
            // dV += P^T dO and dK += dS^T Q (dO, Q row-major by query: the reduction dimension).
            let mut a = Array::<Pair<F>>::new(4usize);
            if comptime![has_d_out] {
                as_a::<F>(&pt, &mut a);
                accumulate::<F>(&a, &sdo, o_off, jc, &mut dv_acc, lane_ot, value_dim, vs);
            }
            as_a::<F>(&ds, &mut a);
            accumulate::<F>(&a, &sq, q_off, jc, &mut dk_acc, lane_qt, head_dim, ks);
        }
    }

    #[unroll]
    for r in 0..2usize {
        let key = row0 + warp * 16 + g + r * 8;
        let mut sum = db[r];
        sum += plane_shuffle_xor(sum, 1u32);
        sum += plane_shuffle_xor(sum, 2u32);
        if key < k_end {
            let pos = bh * nk + input_row(&tmap, key, config.gathered);
            store_row::<F>(dk, &dk_acc, pos, scale, r, head_dim);
            store_row::<F>(dv, &dv_acc, pos, 1.0f32, r, value_dim);
            if comptime![has_bias] {
                if t == 0 {
                    dbias[pos] = sum;
                }
            }
        }
    }
}

/// LSE and delta of the 64 query rows from map position `start` (clamped at `end`) into
/// `s_lse` / `s_delta` from `off`; rows past `end` get [`NO_ROW_LSE`] and 0, so they weigh 0.
#[cube]
#[allow(clippy::too_many_arguments)]
fn stage_stats(
    lse: &Array<f32>,
    delta: &Array<f32>,
    s_lse: &mut SharedMemory<f32>,
    s_delta: &mut SharedMemory<f32>,
    off: usize,
    map: &SparseMap,
    base: usize,
    start: usize,
    end: usize,
    #[comptime] gathered: bool,
) {
    let i = UNIT_POS as usize;
    if i < MMA_TILE_K {
        let mut l = f32::new(NO_ROW_LSE);
        let mut d = 0.0f32;
        if start + i < end {
            let at = base + input_row(map, start + i, gathered);
            l = row_lse(lse[at]);
            d = delta[at];
        }
        s_lse[off + i] = l;
        s_delta[off + i] = d;
    }
}
