//! The portable block-sparse flash-attention backward (FlashAttention-2's recipe, f32 math,
//! plain loads and shared memory: every CubeCL runtime, Mesa lavapipe included).
//!
//! With `P = exp(S - lse)` rebuilt from the forward's LSE and `D = rowsum(dO * O) - dLSE`:
//! `dS = P * (dO v^T - D)`, `dq = scale * dS k`, `dk = scale * dS^T q`, `dv = P^T dO`,
//! `dbias = column sums of dS`. Three kernels: [`backward_delta`] (one unit per query row),
//! [`block_sparse_backward_dq_portable`] (a unit per query row, walking the forward map) and
//! [`block_sparse_backward_dkv_portable`] (a unit per key row, walking the transposed map: key
//! block -> the query blocks that visit it), so no gradient needs atomics.

use cubecl::prelude::*;

use super::common::{
    MapConfig, SparseMap, finish_score, input_row, key_block, load_rows, mask_allows, mask_offset, visits,
};
use super::portable::NEG_BIG;

/// Units per cube of [`backward_delta`].
pub const DELTA_UNITS: usize = 256;

/// `delta[r] = sum_x d_out[r, x] * out[r, x] - d_lse[r]` over `rows` contiguous rows of
/// `value_dim` (an absent upstream gradient, `has_d_out` / `has_d_lse` false, is zero and its
/// buffer is never read); cube `(x, y)` of a grid `CUBE_COUNT_X` wide handles rows from
/// `(y * CUBE_COUNT_X + x) * DELTA_UNITS`. `vectorized` reads 16 bytes at a time (`value_dim` a
/// multiple of 8, 16-byte aligned buffers: the tensor-core path's contract); scalar loads, 128 of
/// them per row at head dim 128, left this pass bound by load instructions. Unchecked: a row
/// reads only inside `rows * value_dim`, and the launcher passes exact lengths (a checked launch
/// read wrong values through the 8-wide view in cubecl 0.10: dq off by 45% on the H100).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn backward_delta<F: Float>(
    out: &Array<F>,
    d_out: &Array<F>,
    d_lse: &Array<f32>,
    delta: &mut Array<f32>,
    rows: u32,
    #[comptime] value_dim: usize,
    #[comptime] has_d_out: bool,
    #[comptime] has_d_lse: bool,
    #[comptime] vectorized: bool,
) {
    let r = (CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X) as usize * DELTA_UNITS + UNIT_POS as usize;
    if r < rows as usize {
        let mut s = 0.0f32;
        if has_d_out {
            if comptime![vectorized] {
                let o8 = out.to_slice().into_vectorized().with_vector_size::<Const<8>>();
                let g8 = d_out.to_slice().into_vectorized().with_vector_size::<Const<8>>();
                let per_row = value_dim / 8;
                for x in 0..per_row {
                    let a = o8[r * per_row + x];
                    let b = g8[r * per_row + x];
                    #[unroll]
                    for i in 0..8usize {
                        s += f32::cast_from(b[i]) * f32::cast_from(a[i]);
                    }
                }
            } else {
                for x in 0..value_dim {
                    s += f32::cast_from(d_out[r * value_dim + x]) * f32::cast_from(out[r * value_dim + x]);
                }
            }
        }
        if has_d_lse {
            s -= d_lse[r];
        }
        delta[r] = s;
    }
}

/// The LSE a row's probabilities are rebuilt from: a row that saw no key (`-inf`) has no
/// allowed pair, and shifting by 0 keeps its masked weights at exactly 0 (never NaN).
#[cube]
pub(super) fn row_lse(lse: f32) -> f32 {
    let mut out = lse;
    if lse <= f32::new(NEG_BIG) {
        out = 0.0f32;
    }
    out
}

/// `dq` over the forward map (layouts as [`super::block_sparse_forward_portable`]; `d_out` as
/// `out`, read only when `has_d_out`; `lse`, `delta` `[bh, nq]` f32). Grid `(nqb * chunks_per_block, bh)`, one unit per
/// query row; K and V tiles shared by the cube.
// Nested `if`s on a comptime flag are whole code paths, not conditions to merge.
#[cube(launch)]
#[allow(clippy::too_many_arguments, clippy::collapsible_if)]
pub fn block_sparse_backward_dq_portable<F: Float>(
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
    #[comptime] rows_per_cube: usize,
    #[comptime] tile_k: usize,
    #[comptime] has_bias: bool,
    #[comptime] has_d_out: bool,
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

    let mut q_reg = Array::<f32>::new(head_dim);
    let mut dq_acc = Array::<f32>::new(head_dim);
    for x in 0..head_dim {
        let mut val = 0.0f32;
        if active {
            val = f32::cast_from(q[(bh * nq + row_in) * head_dim + x]) * scale;
        }
        q_reg[x] = val;
        dq_acc[x] = 0.0f32;
    }
    let mut do_reg = Array::<f32>::new(value_dim);
    for x in 0..value_dim {
        let mut val = 0.0f32;
        if has_d_out {
            if active {
                val = f32::cast_from(d_out[(bh * nq + row_in) * value_dim + x]);
            }
        }
        do_reg[x] = val;
    }
    let mut m = 0.0f32;
    let mut d = 0.0f32;
    if active {
        m = row_lse(lse[bh * nq + row_in]);
        d = delta[bh * nq + row_in];
    }

    let mut k_tile = SharedMemory::<F>::new(tile_k * head_dim);
    let mut v_tile = SharedMemory::<F>::new(tile_k * value_dim);

    let vis = visits(&map, qb, h, map_heads, config);
    for e in 0..vis.count {
        let kb = key_block(&map, &vis, e, max_count, config);
        let k_start = map.k_starts[kb] as usize;
        let k_end = map.k_starts[kb + 1] as usize;
        let mut mask_word = 0xFFFF_FFFFu32;
        if comptime![config.partial] {
            mask_word = mask_offset(&map, &vis, e, max_count);
        }
        let n_tiles = (k_end - k_start).div_ceil(tile_k);
        for t in 0..n_tiles {
            let kt = k_start + t * tile_k;
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
                let mut tile_len = k_end - kt;
                if tile_len > tile_k {
                    tile_len = tile_k;
                }
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
                    if s > f32::new(NEG_BIG) {
                        let p = f32::exp(s - m);
                        let mut dp = 0.0f32;
                        if has_d_out {
                            for x in 0..value_dim {
                                dp += do_reg[x] * f32::cast_from(v_tile[j * value_dim + x]);
                            }
                        }
                        let ds = p * (dp - d);
                        for x in 0..head_dim {
                            dq_acc[x] += ds * f32::cast_from(k_tile[j * head_dim + x]);
                        }
                    }
                }
            }
            sync_cube();
        }
    }

    if active {
        for x in 0..head_dim {
            dq[(bh * nq + row_in) * head_dim + x] = F::cast_from(dq_acc[x] * scale);
        }
    }
}

/// `dk`, `dv` and the per-key `dbias` (f32 `[bh, nk]`, written when `has_bias`) over the
/// transposed map `tmap`: its `q_starts` are the key block boundaries, its `k_starts` the query
/// block boundaries, its rows list the query blocks visiting each key block (with the forward
/// entry's mask offset; the bit masks keep their forward orientation). Grid
/// `(nkb * chunks_per_block, bh)`, one unit per key row; Q, dO, LSE and delta tiles shared.
// Nested `if`s on a comptime flag are whole code paths, not conditions to merge.
#[cube(launch)]
#[allow(clippy::too_many_arguments, clippy::collapsible_if)]
pub fn block_sparse_backward_dkv_portable<F: Float>(
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
    #[comptime] rows_per_cube: usize,
    #[comptime] tile_q: usize,
    #[comptime] has_bias: bool,
    #[comptime] has_d_out: bool,
    #[comptime] config: MapConfig,
) {
    let nq = q_len as usize;
    let nk = k_len as usize;
    let bh = CUBE_POS_Y as usize;
    let h = bh % heads as usize;
    let b = bh / heads as usize;
    let kb = (CUBE_POS_X / chunks_per_block) as usize;
    let chunk = (CUBE_POS_X % chunks_per_block) as usize;
    let k_start = tmap.q_starts[kb] as usize;
    let k_end = tmap.q_starts[kb + 1] as usize;
    let key = k_start + chunk * rows_per_cube + UNIT_POS as usize;
    let active = key < k_end;
    let key_in = input_row(&tmap, key, config.gathered);

    let mut k_reg = Array::<f32>::new(head_dim);
    let mut dk_acc = Array::<f32>::new(head_dim);
    for x in 0..head_dim {
        let mut val = 0.0f32;
        if active {
            val = f32::cast_from(k[(bh * nk + key_in) * head_dim + x]);
        }
        k_reg[x] = val;
        dk_acc[x] = 0.0f32;
    }
    let mut v_reg = Array::<f32>::new(value_dim);
    let mut dv_acc = Array::<f32>::new(value_dim);
    for x in 0..value_dim {
        let mut val = 0.0f32;
        if active {
            val = f32::cast_from(v[(bh * nk + key_in) * value_dim + x]);
        }
        v_reg[x] = val;
        dv_acc[x] = 0.0f32;
    }
    let mut key_bias = 0.0f32;
    if has_bias {
        if active {
            key_bias = f32::cast_from(bias[b * bias_b_stride as usize + h * bias_h_stride as usize + key_in]);
        }
    }
    let mut db = 0.0f32;

    let mut q_tile = SharedMemory::<F>::new(tile_q * head_dim);
    let mut do_tile = SharedMemory::<F>::new(tile_q * value_dim);
    let mut lse_tile = SharedMemory::<f32>::new(tile_q);
    let mut delta_tile = SharedMemory::<f32>::new(tile_q);

    let vis = visits(&tmap, kb, h, map_heads, config);
    for e in 0..vis.count {
        let qb = key_block(&tmap, &vis, e, max_count, config);
        let q_start = tmap.k_starts[qb] as usize;
        let q_end = tmap.k_starts[qb + 1] as usize;
        let mut mask_word = 0xFFFF_FFFFu32;
        if comptime![config.partial] {
            mask_word = mask_offset(&tmap, &vis, e, max_count);
        }
        let n_tiles = (q_end - q_start).div_ceil(tile_q);
        for t in 0..n_tiles {
            let qt = q_start + t * tile_q;
            load_rows::<F>(
                q,
                &mut q_tile,
                &tmap,
                bh * nq,
                qt,
                q_end,
                tile_q,
                head_dim,
                head_dim,
                rows_per_cube,
                config.gathered,
            );
            if has_d_out {
                load_rows::<F>(
                    d_out,
                    &mut do_tile,
                    &tmap,
                    bh * nq,
                    qt,
                    q_end,
                    tile_q,
                    value_dim,
                    value_dim,
                    rows_per_cube,
                    config.gathered,
                );
            }
            let loads = tile_q.div_ceil(rows_per_cube);
            for it in 0..loads {
                let i = it * rows_per_cube + UNIT_POS as usize;
                if i < tile_q {
                    let pos = qt + i;
                    let mut l = 0.0f32;
                    let mut dl = 0.0f32;
                    if pos < q_end {
                        let r = bh * nq + input_row(&tmap, pos, config.gathered);
                        l = row_lse(lse[r]);
                        dl = delta[r];
                    }
                    lse_tile[i] = l;
                    delta_tile[i] = dl;
                }
            }
            sync_cube();
            if active {
                let mut tile_len = q_end - qt;
                if tile_len > tile_q {
                    tile_len = tile_q;
                }
                for i in 0..tile_len {
                    let mut allowed = true;
                    if comptime![config.partial] {
                        // Nested: a full block's word is no index.
                        if mask_word != u32::MAX {
                            allowed = mask_allows(&tmap, mask_word, qt + i - q_start, key - k_start, k_end - k_start);
                        }
                    }
                    if allowed {
                        let mut s = 0.0f32;
                        for x in 0..head_dim {
                            s += k_reg[x] * f32::cast_from(q_tile[i * head_dim + x]);
                        }
                        let p = f32::exp(s * scale + key_bias - lse_tile[i]);
                        let mut dp = 0.0f32;
                        if has_d_out {
                            for x in 0..value_dim {
                                let g = f32::cast_from(do_tile[i * value_dim + x]);
                                dv_acc[x] += p * g;
                                dp += g * v_reg[x];
                            }
                        }
                        let ds = p * (dp - delta_tile[i]);
                        db += ds;
                        for x in 0..head_dim {
                            dk_acc[x] += ds * f32::cast_from(q_tile[i * head_dim + x]);
                        }
                    }
                }
            }
            sync_cube();
        }
    }

    if active {
        for x in 0..head_dim {
            dk[(bh * nk + key_in) * head_dim + x] = F::cast_from(dk_acc[x] * scale);
        }
        for x in 0..value_dim {
            dv[(bh * nk + key_in) * value_dim + x] = F::cast_from(dv_acc[x]);
        }
        if has_bias {
            dbias[bh * nk + key_in] = db;
        }
    }
}
