//! Host side of the backward: the transposed block map, buffers in, gradients out.

use cubecl::prelude::*;
use cubecl::server::Handle;

use super::backward::{
    DELTA_UNITS, backward_delta, block_sparse_backward_dkv_portable, block_sparse_backward_dq_portable,
};
use super::launch::{
    BlockMapArrays, ForwardPath, ForwardProblem, KernelElem, bias_buffer, largest_block, map_launch, upload_map,
};
use super::mma_backward::{block_sparse_backward_dkv_mma, block_sparse_backward_dq_mma};
use super::tiles::{dkv_warps, dq_warps, portable_tiles};

/// Key block -> query blocks: the index lists the dK/dV kernel walks, built from the forward's
/// lists (never a dense block matrix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransposedLists {
    /// Query blocks visiting each `(map head, key block)` row (`map_heads * nkb` rows).
    pub counts: Vec<u32>,
    /// `rows x max_count` query blocks, ascending.
    pub indices: Vec<u32>,
    /// Row stride of `indices` (at least 1).
    pub max_count: usize,
    /// Per entry, the forward entry's mask offset (`u32::MAX`: full), when the forward has masks.
    pub mask_offsets: Option<Vec<u32>>,
}

impl TransposedLists {
    /// Transposes forward lists of `map_heads * nqb` rows (`counts`, `indices` with row stride
    /// `max_count`, per-entry `mask_offsets` when some blocks are partial) over `nkb` key blocks.
    /// The caller passes valid lists (every index below `nkb`).
    pub fn new(
        counts: &[u32],
        indices: &[u32],
        max_count: usize,
        mask_offsets: Option<&[u32]>,
        map_heads: usize,
        nkb: usize,
    ) -> Self {
        let nqb = counts.len() / map_heads.max(1);
        let mut cols: Vec<Vec<(u32, u32)>> = vec![Vec::new(); map_heads * nkb];
        for h in 0..map_heads {
            for qb in 0..nqb {
                let r = h * nqb + qb;
                for e in 0..counts[r] as usize {
                    let kb = indices[r * max_count + e] as usize;
                    let mask = mask_offsets.map_or(u32::MAX, |m| m[r * max_count + e]);
                    cols[h * nkb + kb].push((qb as u32, mask));
                }
            }
        }
        let stride = cols.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let mut t_counts = Vec::with_capacity(cols.len());
        let mut t_indices = vec![0u32; cols.len() * stride];
        let mut t_masks = mask_offsets.map(|_| vec![u32::MAX; cols.len() * stride]);
        for (r, col) in cols.iter().enumerate() {
            t_counts.push(col.len() as u32);
            for (e, &(qb, mask)) in col.iter().enumerate() {
                t_indices[r * stride + e] = qb;
                if let Some(m) = t_masks.as_mut() {
                    m[r * stride + e] = mask;
                }
            }
        }
        TransposedLists { counts: t_counts, indices: t_indices, max_count: stride, mask_offsets: t_masks }
    }
}

/// Buffers of a backward call, contiguous, in the forward's layouts (`lse`, `d_lse` f32
/// `[bh, nq]`; `d_out` as `out`). An absent upstream gradient is zero and never read (no zero
/// buffer is made for it).
pub struct BackwardInputs {
    /// `[bh, nq, head_dim]`.
    pub q: Handle,
    /// `[bh, nk, head_dim]`.
    pub k: Handle,
    /// `[bh, nk, value_dim]`.
    pub v: Handle,
    /// One value per key: `(buffer, batch stride, head stride)`.
    pub bias: Option<(Handle, usize, usize)>,
    /// The forward's output.
    pub out: Handle,
    /// The forward's LSE (f32).
    pub lse: Handle,
    /// Gradient of the output, if it has one.
    pub d_out: Option<Handle>,
    /// Gradient of the LSE (f32), if it has one.
    pub d_lse: Option<Handle>,
}

/// Gradients of a backward call.
pub struct BackwardOutput {
    /// `[bh, nq, head_dim]`.
    pub dq: Handle,
    /// `[bh, nk, head_dim]`.
    pub dk: Handle,
    /// `[bh, nk, value_dim]`.
    pub dv: Handle,
    /// `[bh, nk]` f32, per (batch, head) before any sum over the bias's broadcast dims.
    pub dbias: Option<Handle>,
}

/// Launches the portable backward: `map` is the forward's block map, `transposed` the same
/// problem seen from the keys (its `q_starts` the key block boundaries, its `k_starts` the query
/// block boundaries, its lists from [`TransposedLists`], or every block for a dense map).
pub fn backward_portable<R: Runtime, F: Float + CubeElement>(
    client: &ComputeClient<R>,
    x: BackwardInputs,
    map: BlockMapArrays<'_>,
    transposed: BlockMapArrays<'_>,
    p: ForwardProblem,
) -> BackwardOutput {
    backward::<R, F>(client, ForwardPath::Portable, x, map, transposed, p)
}

/// Launches the backward on the path the forward took: the register-level MMA kernels after
/// [`ForwardPath::Mma`] (the caller checked the runtime supports it), the portable kernels
/// otherwise. Maps as [`backward_portable`].
pub fn backward<R: Runtime, F: Float + CubeElement>(
    client: &ComputeClient<R>,
    path: ForwardPath,
    x: BackwardInputs,
    map: BlockMapArrays<'_>,
    transposed: BlockMapArrays<'_>,
    p: ForwardProblem,
) -> BackwardOutput {
    let bh = p.batch * p.heads;
    let arr = |h: &Handle, len: usize| unsafe { ArrayArg::from_raw_parts(h.clone(), len.max(1)) };
    let tiles = portable_tiles(p.head_dim, p.value_dim, size_of::<F>());
    let rows = tiles.rows_per_cube;
    let f = size_of::<F>();

    let (has_d_out, has_d_lse) = (x.d_out.is_some(), x.d_lse.is_some());
    let dummy = || client.create_from_slice(F::as_bytes(&[F::from_int(0)]));
    let d_out = x.d_out.clone().unwrap_or_else(dummy);
    let d_out_len = if has_d_out { bh * p.q_len * p.value_dim } else { 1 };
    let d_lse = x.d_lse.clone().unwrap_or_else(|| client.create_from_slice(f32::as_bytes(&[0.0])));
    let d_lse_len = if has_d_lse { bh * p.q_len } else { 1 };
    let delta = client.empty(bh * p.q_len * 4);
    let cubes = (bh * p.q_len).div_ceil(DELTA_UNITS).max(1);
    let wide = cubes.min(65_535);
    // SAFETY: each length below is the element count its buffer was created with.
    unsafe {
        backward_delta::launch_unchecked::<F, R>(
            client,
            CubeCount::Static(wide as u32, cubes.div_ceil(wide) as u32, 1),
            CubeDim::new_1d(DELTA_UNITS as u32),
            arr(&x.out, bh * p.q_len * p.value_dim),
            arr(&d_out, d_out_len),
            arr(&d_lse, d_lse_len),
            arr(&delta, bh * p.q_len),
            (bh * p.q_len) as u32,
            p.value_dim,
            has_d_out,
            has_d_lse,
            path == ForwardPath::Mma && p.value_dim.is_multiple_of(8),
        );
    }

    let (bias_h, bias_len, bbs, bhs, has_bias) = bias_buffer::<R, F>(client, x.bias.clone(), &p);
    let chunks = |starts: &[u32], rows: usize| largest_block(starts).div_ceil(rows).max(1);

    let dq = client.empty(bh * p.q_len * p.head_dim * f);
    let dk = client.empty(bh * p.k_len * p.head_dim * f);
    let dv = client.empty(bh * p.k_len * p.value_dim * f);
    let dbias_len = if has_bias { bh * p.k_len } else { 1 };
    let dbias = client.empty(dbias_len * 4);
    let (q_buffers, q_max_count) = upload_map(client, &map);
    let (k_buffers, k_max_count) = upload_map(client, &transposed);
    macro_rules! dq_args {
        () => {
            (
                arr(&x.q, bh * p.q_len * p.head_dim),
                arr(&x.k, bh * p.k_len * p.head_dim),
                arr(&x.v, bh * p.k_len * p.value_dim),
                arr(&bias_h, bias_len),
                map_launch(&q_buffers),
                arr(&d_out, d_out_len),
                arr(&x.lse, bh * p.q_len),
                arr(&delta, bh * p.q_len),
                arr(&dq, bh * p.q_len * p.head_dim),
                p.q_len as u32,
                p.k_len as u32,
                p.heads as u32,
                map.map_heads as u32,
                q_max_count as u32,
            )
        };
    }
    macro_rules! dkv_args {
        () => {
            (
                arr(&x.q, bh * p.q_len * p.head_dim),
                arr(&x.k, bh * p.k_len * p.head_dim),
                arr(&x.v, bh * p.k_len * p.value_dim),
                arr(&bias_h, bias_len),
                map_launch(&k_buffers),
                arr(&d_out, d_out_len),
                arr(&x.lse, bh * p.q_len),
                arr(&delta, bh * p.q_len),
                arr(&dk, bh * p.k_len * p.head_dim),
                arr(&dv, bh * p.k_len * p.value_dim),
                arr(&dbias, dbias_len),
                p.q_len as u32,
                p.k_len as u32,
                p.heads as u32,
                transposed.map_heads as u32,
                k_max_count as u32,
            )
        };
    }
    let n_qb = map.q_starts.len() - 1;
    let n_kb = transposed.q_starts.len() - 1;
    if path == ForwardPath::Mma {
        let warps = dq_warps(largest_block(map.q_starts));
        let q_chunks = chunks(map.q_starts, 16 * warps);
        let (a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13) = dq_args!();
        // SAFETY: every length is the element count of its buffer, and the host validated the
        // block map against them; the kernel indexes only inside those.
        unsafe {
            block_sparse_backward_dq_mma::launch_unchecked::<F, R>(
                client,
                CubeCount::Static((n_qb * q_chunks) as u32, bh as u32, 1),
                CubeDim::new_2d(32, warps as u32),
                a0,
                a1,
                a2,
                a3,
                a4,
                a5,
                a6,
                a7,
                a8,
                a9,
                a10,
                a11,
                a12,
                a13,
                q_chunks as u32,
                bbs as u32,
                bhs as u32,
                p.scale,
                p.head_dim,
                p.value_dim,
                has_bias,
                has_d_out,
                map.config(),
                warps,
            );
        }
        let warps = dkv_warps(largest_block(transposed.q_starts));
        let k_chunks = chunks(transposed.q_starts, 16 * warps);
        let (b0, b1, b2, b3, b4, b5, b6, b7, b8, b9, b10, b11, b12, b13, b14, b15) = dkv_args!();
        // SAFETY: as above.
        unsafe {
            block_sparse_backward_dkv_mma::launch_unchecked::<F, R>(
                client,
                CubeCount::Static((n_kb * k_chunks) as u32, bh as u32, 1),
                CubeDim::new_2d(32, warps as u32),
                b0,
                b1,
                b2,
                b3,
                b4,
                b5,
                b6,
                b7,
                b8,
                b9,
                b10,
                b11,
                b12,
                b13,
                b14,
                b15,
                k_chunks as u32,
                bbs as u32,
                bhs as u32,
                p.scale,
                p.head_dim,
                p.value_dim,
                has_bias,
                has_d_out,
                transposed.config(),
                warps,
            );
        }
    } else {
        let q_chunks = chunks(map.q_starts, rows);
        let (a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13) = dq_args!();
        block_sparse_backward_dq_portable::launch::<F, R>(
            client,
            CubeCount::Static((n_qb * q_chunks) as u32, bh as u32, 1),
            CubeDim::new_1d(rows as u32),
            a0,
            a1,
            a2,
            a3,
            a4,
            a5,
            a6,
            a7,
            a8,
            a9,
            a10,
            a11,
            a12,
            a13,
            q_chunks as u32,
            bbs as u32,
            bhs as u32,
            p.scale,
            p.head_dim,
            p.value_dim,
            rows,
            tiles.tile_k,
            has_bias,
            has_d_out,
            map.config(),
        );
        let k_chunks = chunks(transposed.q_starts, rows);
        let (b0, b1, b2, b3, b4, b5, b6, b7, b8, b9, b10, b11, b12, b13, b14, b15) = dkv_args!();
        block_sparse_backward_dkv_portable::launch::<F, R>(
            client,
            CubeCount::Static((n_kb * k_chunks) as u32, bh as u32, 1),
            CubeDim::new_1d(rows as u32),
            b0,
            b1,
            b2,
            b3,
            b4,
            b5,
            b6,
            b7,
            b8,
            b9,
            b10,
            b11,
            b12,
            b13,
            b14,
            b15,
            k_chunks as u32,
            bbs as u32,
            bhs as u32,
            p.scale,
            p.head_dim,
            p.value_dim,
            rows,
            tiles.tile_k,
            has_bias,
            has_d_out,
            transposed.config(),
        );
    }
    BackwardOutput { dq, dk, dv, dbias: has_bias.then_some(dbias) }
}

/// [`backward`] with the element type chosen at run time.
pub fn backward_elem<R: Runtime>(
    client: &ComputeClient<R>,
    path: ForwardPath,
    elem: KernelElem,
    x: BackwardInputs,
    map: BlockMapArrays<'_>,
    transposed: BlockMapArrays<'_>,
    p: ForwardProblem,
) -> BackwardOutput {
    match elem {
        KernelElem::F32 => backward::<R, f32>(client, path, x, map, transposed, p),
        KernelElem::F16 => backward::<R, half::f16>(client, path, x, map, transposed, p),
        KernelElem::BF16 => backward::<R, half::bf16>(client, path, x, map, transposed, p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transposed_lists_invert_the_forward_lists() {
        // Two map heads, 3 query blocks, 2 key blocks; head 1's entry (qb 2, kb 0) is partial.
        let counts = [2, 0, 1, 1, 1, 2];
        let indices = [0, 1, 9, 9, 1, 9, 0, 9, 1, 9, 1, 0];
        let masks = [u32::MAX, u32::MAX, 0, 0, u32::MAX, 0, u32::MAX, 0, u32::MAX, 0, u32::MAX, 7];
        let t = TransposedLists::new(&counts, &indices, 2, Some(&masks), 2, 2);
        assert_eq!(t.counts, vec![1, 2, 2, 2]);
        assert_eq!(t.max_count, 2);
        assert_eq!(t.indices, vec![0, 0, 0, 2, 0, 2, 1, 2]);
        // Only head 1's (key block 0, query block 2) entry carries a mask; padding stays full.
        let full = u32::MAX;
        assert_eq!(t.mask_offsets, Some(vec![full, full, full, full, full, 7, full, full]));
        let plain = TransposedLists::new(&counts, &indices, 2, None, 2, 2);
        assert_eq!((plain.counts, plain.indices, plain.mask_offsets), (t.counts, t.indices, None));
    }
}
