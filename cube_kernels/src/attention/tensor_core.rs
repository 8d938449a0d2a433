//! The tensor-core block-sparse flash-attention forward (cubecl's `cmma`, 16x16x16 tiles, f16 or
//! bf16 inputs, f32 accumulation). A cube is [`TC_WARPS`] planes of 32 units; each plane owns 16
//! query rows of one query block. Per tile of [`TC_TILE_K`] keys: `S = Q K^T` on tensor cores,
//! the online softmax row by row in f32 (one unit per row, through shared memory), then `P V` on
//! tensor cores, added to the unit's f32 accumulator row. Same contract as the portable kernel.

use cubecl::prelude::*;

use super::common::{
    MapConfig, SparseMap, finish_score, input_row, key_block, load_rows, mask_offset, visits, weight, write_row,
};
use super::portable::NEG_BIG;

/// Planes (warps) per cube.
pub const TC_WARPS: usize = 2;
/// Query rows per cube.
pub const TC_ROWS: usize = 16 * TC_WARPS;
/// Keys per shared-memory tile.
pub const TC_TILE_K: usize = 32;

/// Forward pass over a block map on tensor cores. Layouts and block-map arrays as in
/// [`super::block_sparse_forward_portable`]; `head_dim` and `value_dim` are multiples of 16.
/// The cube is `(32, TC_WARPS)` units; the grid `(nqb * chunks_per_block, bh)` with
/// `chunks_per_block = ceil(largest query block / TC_ROWS)`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn block_sparse_forward_tensor_core<F: Float>(
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
    let q_start = map.q_starts[qb] as usize;
    let q_end = map.q_starts[qb + 1] as usize;
    let row0 = q_start + chunk * TC_ROWS;
    let row = row0 + warp * 16 + lane;
    // Units 0..16 of each plane own one query row each.
    let owner = lane < 16;
    let active = owner && row < q_end;
    let bias_base = b * bias_b_stride as usize + h * bias_h_stride as usize;
    // Block-local row for the in-block mask (0 for rows past the block: their scores are unused).
    let mut q_local = 0usize;
    if active {
        q_local = row - q_start;
    }

    let mut sq = SharedMemory::<F>::new(TC_ROWS * head_dim);
    let mut sk = SharedMemory::<F>::new(TC_TILE_K * head_dim);
    let mut sv = SharedMemory::<F>::new(TC_TILE_K * value_dim);
    let mut ss = SharedMemory::<f32>::new(TC_ROWS * TC_TILE_K);
    let mut sp = SharedMemory::<F>::new(TC_ROWS * TC_TILE_K);
    let mut spv = SharedMemory::<f32>::new(TC_ROWS * value_dim);

    // The cube's query rows, zero past the block.
    load_rows::<F>(q, &mut sq, &map, bh * nq, row0, q_end, TC_ROWS, head_dim, head_dim, 32 * TC_WARPS, config.gathered);

    let mut acc = Array::<f32>::new(value_dim);
    for x in 0..value_dim {
        acc[x] = 0.0f32;
    }
    let mut m = f32::new(NEG_BIG);
    let mut l = 0.0f32;
    let s_base = warp * 16 * TC_TILE_K;
    let pv_base = warp * 16 * value_dim;

    let vis = visits(&map, qb, h, map_heads, config);
    for e in 0..vis.count {
        let kb = key_block(&map, &vis, e, max_count, config);
        let k_start = map.k_starts[kb] as usize;
        let k_end = map.k_starts[kb + 1] as usize;
        let mut mask_word = 0xFFFF_FFFFu32; // a full block (u32::MAX)
        if comptime![config.partial] {
            mask_word = mask_offset(&map, &vis, e, max_count);
        }
        let n_tiles = (k_end - k_start).div_ceil(TC_TILE_K);
        for t in 0..n_tiles {
            let kt = k_start + t * TC_TILE_K;
            // Everyone is done with the previous tile (and, the first time, with loading Q).
            sync_cube();
            load_rows::<F>(
                k,
                &mut sk,
                &map,
                bh * nk,
                kt,
                k_end,
                TC_TILE_K,
                head_dim,
                head_dim,
                32 * TC_WARPS,
                config.gathered,
            );
            load_rows::<F>(
                v,
                &mut sv,
                &map,
                bh * nk,
                kt,
                k_end,
                TC_TILE_K,
                value_dim,
                value_dim,
                32 * TC_WARPS,
                config.gathered,
            );
            sync_cube();

            // S = Q K^T for this plane's 16 rows, 16 keys at a time.
            #[unroll]
            for nb in 0..TC_TILE_K / 16 {
                let c = cmma::Matrix::<f32>::from_value(
                    cmma::MatrixIdent::Accumulator,
                    16usize,
                    16usize,
                    16usize,
                    cmma::MatrixLayout::Undefined,
                    0.0,
                );
                #[unroll]
                for kk in 0..head_dim / 16 {
                    let a = cmma::Matrix::<F>::from_slice(
                        cmma::MatrixIdent::A,
                        16usize,
                        16usize,
                        16usize,
                        cmma::MatrixLayout::RowMajor,
                        &sq.slice(warp * 16 * head_dim + kk * 16, TC_ROWS * head_dim),
                        head_dim as u32,
                    );
                    let bm = cmma::Matrix::<F>::from_slice(
                        cmma::MatrixIdent::B,
                        16usize,
                        16usize,
                        16usize,
                        cmma::MatrixLayout::ColMajor,
                        &sk.slice(nb * 16 * head_dim + kk * 16, TC_TILE_K * head_dim),
                        head_dim as u32,
                    );
                    cmma::execute::<F, F, f32, f32>(&a, &bm, &c, &c);
                }
                cmma::store(
                    &mut ss.slice_mut(s_base + nb * 16, TC_ROWS * TC_TILE_K),
                    &c,
                    TC_TILE_K as u32,
                    cmma::MatrixLayout::RowMajor,
                );
            }
            sync_cube();

            // Online softmax, one unit per row; P goes back to shared memory in F.
            if owner {
                let mut tile_len = k_end - kt;
                if tile_len > TC_TILE_K {
                    tile_len = TC_TILE_K;
                }
                let srow = s_base + lane * TC_TILE_K;
                let mut tile_max = f32::new(NEG_BIG);
                for j in 0..tile_len {
                    let key = kt + j;
                    let s = finish_score::<F>(
                        ss[srow + j] * scale,
                        bias,
                        &map,
                        bias_base,
                        key,
                        mask_word,
                        q_local,
                        key - k_start,
                        k_end - k_start,
                        has_bias,
                        config,
                    );
                    ss[srow + j] = s;
                    if s > tile_max {
                        tile_max = s;
                    }
                }
                let mut m_new = m;
                if tile_max > m {
                    m_new = tile_max;
                }
                let corr = f32::exp(m - m_new);
                l *= corr;
                for x in 0..value_dim {
                    acc[x] *= corr;
                }
                for j in 0..TC_TILE_K {
                    let mut p = 0.0f32;
                    if j < tile_len {
                        p = weight(ss[srow + j], m_new);
                    }
                    l += p;
                    sp[srow + j] = F::cast_from(p);
                }
                m = m_new;
            }
            sync_cube();

            // PV = P V, 16 value columns at a time, staged through shared memory.
            #[unroll]
            for nb in 0..value_dim / 16 {
                let c = cmma::Matrix::<f32>::from_value(
                    cmma::MatrixIdent::Accumulator,
                    16usize,
                    16usize,
                    16usize,
                    cmma::MatrixLayout::Undefined,
                    0.0,
                );
                #[unroll]
                for kk in 0..TC_TILE_K / 16 {
                    let a = cmma::Matrix::<F>::from_slice(
                        cmma::MatrixIdent::A,
                        16usize,
                        16usize,
                        16usize,
                        cmma::MatrixLayout::RowMajor,
                        &sp.slice(s_base + kk * 16, TC_ROWS * TC_TILE_K),
                        TC_TILE_K as u32,
                    );
                    let bm = cmma::Matrix::<F>::from_slice(
                        cmma::MatrixIdent::B,
                        16usize,
                        16usize,
                        16usize,
                        cmma::MatrixLayout::RowMajor,
                        &sv.slice(kk * 16 * value_dim + nb * 16, TC_TILE_K * value_dim),
                        value_dim as u32,
                    );
                    cmma::execute::<F, F, f32, f32>(&a, &bm, &c, &c);
                }
                cmma::store(
                    &mut spv.slice_mut(pv_base + nb * 16, TC_ROWS * value_dim),
                    &c,
                    value_dim as u32,
                    cmma::MatrixLayout::RowMajor,
                );
            }
            sync_cube();
            if owner {
                for x in 0..value_dim {
                    acc[x] += spv[pv_base + lane * value_dim + x];
                }
            }
        }
    }

    if active {
        write_row::<F>(out, lse, &acc, m, l, bh * nq + input_row(&map, row, config.gathered), empty_lse, value_dim);
    }
}
