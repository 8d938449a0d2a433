//! The portable block-sparse flash-attention forward: plain loads, shared memory and f32 math,
//! no cooperative matrices and no plane operations, so it runs on every CubeCL runtime (Mesa
//! lavapipe included). One cube computes a chunk of rows of one query block of one (batch, head);
//! each unit owns one query row; the units load each key/value tile into shared memory together.

use cubecl::prelude::*;

use super::common::{
    MapConfig, SparseMap, finish_score, input_row, key_block, load_rows, mask_offset, visits, weight, write_row,
};

/// The running maximum's starting value: WGSL has no infinity literal, and `exp(m - m_new)` must
/// stay finite before the first key arrives. Rows with no key get the `empty_lse` argument.
pub const NEG_BIG: f32 = -1.0e30;

/// Forward pass over a block map.
///
/// Layouts (row-major, contiguous): `q [bh, nq, head_dim]`, `k [bh, nk, head_dim]`,
/// `v [bh, nk, value_dim]`, `out [bh, nq, value_dim]`, `lse [bh, nq]`; `bias` holds one value per
/// key, addressed `b * bias_b_stride + h * bias_h_stride + key` (ignored unless `has_bias`). The
/// map ([`SparseMap`], shaped by `config`) names the key blocks of each query block, their
/// in-block masks, and the input row of each map position. A row with no key gets output 0 and
/// LSE `empty_lse` (the host passes `-inf`). The cube grid is `(nqb * chunks_per_block, bh)`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn block_sparse_forward_portable<F: Float>(
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
    #[comptime] rows_per_cube: usize,
    #[comptime] tile_k: usize,
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
    let q_start = map.q_starts[qb] as usize;
    let q_end = map.q_starts[qb + 1] as usize;
    let row = q_start + chunk * rows_per_cube + UNIT_POS as usize;
    let active = row < q_end;
    let row_in = input_row(&map, row, config.gathered);
    let bias_base = b * bias_b_stride as usize + h * bias_h_stride as usize;

    // The query row, pre-scaled, in registers.
    let mut q_reg = Array::<f32>::new(head_dim);
    for x in 0..head_dim {
        let mut val = 0.0f32;
        if active {
            val = f32::cast_from(q[(bh * nq + row_in) * head_dim + x]) * scale;
        }
        q_reg[x] = val;
    }
    let mut acc = Array::<f32>::new(value_dim);
    for x in 0..value_dim {
        acc[x] = 0.0f32;
    }
    let mut scores = Array::<f32>::new(tile_k);
    let mut m = f32::new(NEG_BIG);
    let mut l = 0.0f32;

    let mut k_tile = SharedMemory::<F>::new(tile_k * head_dim);
    let mut v_tile = SharedMemory::<F>::new(tile_k * value_dim);

    let vis = visits(&map, qb, h, map_heads, config);
    for e in 0..vis.count {
        let kb = key_block(&map, &vis, e, max_count, config);
        let k_start = map.k_starts[kb] as usize;
        let k_end = map.k_starts[kb + 1] as usize;
        let mut mask_word = 0xFFFF_FFFFu32; // a full block (u32::MAX)
        if comptime![config.partial] {
            mask_word = mask_offset(&map, &vis, e, max_count);
        }
        let n_tiles = (k_end - k_start).div_ceil(tile_k);
        for t in 0..n_tiles {
            let kt = k_start + t * tile_k;
            // Cooperative tile load (rows past the block are zero-filled, never read).
            load_rows::<F>(
                k,
                &mut k_tile,
                &map,
                bh * nk,
                kt,
                k_end,
                tile_k,
                head_dim,
                head_dim,
                rows_per_cube,
                config.gathered,
            );
            load_rows::<F>(
                v,
                &mut v_tile,
                &map,
                bh * nk,
                kt,
                k_end,
                tile_k,
                value_dim,
                value_dim,
                rows_per_cube,
                config.gathered,
            );
            sync_cube();
            if active {
                // Runtime loop bounds: comptime ones get unrolled, and lavapipe's compiler then
                // spends seconds on each kernel.
                let mut tile_len = k_end - kt;
                if tile_len > tile_k {
                    tile_len = tile_k;
                }
                let mut tile_max = f32::new(NEG_BIG);
                for j in 0..tile_len {
                    let mut s = 0.0f32;
                    for x in 0..head_dim {
                        s += q_reg[x] * f32::cast_from(k_tile[j * head_dim + x]);
                    }
                    let key = kt + j;
                    s = finish_score::<F>(
                        s,
                        bias,
                        &map,
                        bias_base,
                        key,
                        mask_word,
                        row - q_start,
                        key - k_start,
                        k_end - k_start,
                        has_bias,
                        config,
                    );
                    scores[j] = s;
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
                for j in 0..tile_len {
                    let p = weight(scores[j], m_new);
                    l += p;
                    for x in 0..value_dim {
                        acc[x] += p * f32::cast_from(v_tile[j * value_dim + x]);
                    }
                }
                m = m_new;
            }
            sync_cube();
        }
    }

    if active {
        write_row::<F>(out, lse, &acc, m, l, bh * nq + row_in, empty_lse, value_dim);
    }
}
