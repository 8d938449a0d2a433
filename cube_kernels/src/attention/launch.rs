//! Host side of the portable forward: buffers in, output and LSE out.

use cubecl::prelude::*;
use cubecl::server::Handle;

use super::portable::block_sparse_forward_portable;
use super::tiles::portable_tiles;

/// Shapes of one forward call. Tensors are contiguous `[batch * heads, seq_len, dim]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ForwardProblem {
    /// Batch size.
    pub batch: usize,
    /// Heads.
    pub heads: usize,
    /// Sequence length (queries and keys).
    pub seq_len: usize,
    /// Query / key head dim.
    pub head_dim: usize,
    /// Value head dim.
    pub value_dim: usize,
    /// Score scale.
    pub scale: f32,
}

/// A block map as the kernel reads it.
#[derive(Debug, Clone, Copy)]
pub struct BlockMapArrays<'a> {
    /// `n_blocks + 1` block boundaries, the last one `seq_len`.
    pub block_starts: &'a [u32],
    /// Visited key blocks per map row (`map_heads * n_blocks` rows).
    pub counts: &'a [u32],
    /// `rows x max_count` key block indices.
    pub indices: &'a [u32],
    /// Row stride of `indices`.
    pub max_count: usize,
    /// 1 (shared by all heads) or the number of heads.
    pub map_heads: usize,
}

/// Output buffers of a forward call.
pub struct ForwardOutput {
    /// `[batch * heads, seq_len, value_dim]`.
    pub out: Handle,
    /// `[batch * heads, seq_len]` in f32; values at or below [`super::NEG_BIG`] mean `-inf`.
    pub lse: Handle,
}

/// Launches the portable kernel. `bias`, if given, is `(buffer, batch stride, head stride)` of
/// one value per key. The caller validates shapes (the burn layer does, with named errors).
#[allow(clippy::too_many_arguments)]
pub fn forward_portable<R: Runtime, F: Float + CubeElement>(
    client: &ComputeClient<R>,
    q: Handle,
    k: Handle,
    v: Handle,
    bias: Option<(Handle, usize, usize)>,
    map: BlockMapArrays<'_>,
    p: ForwardProblem,
) -> ForwardOutput {
    let bh = p.batch * p.heads;
    let n_blocks = map.block_starts.len() - 1;
    let tiles = portable_tiles(p.head_dim, p.value_dim, size_of::<F>());
    let max_block = map.block_starts.windows(2).map(|w| (w[1] - w[0]) as usize).max().unwrap_or(1);
    let chunks = max_block.div_ceil(tiles.rows_per_cube).max(1);

    let starts = client.create_from_slice(u32::as_bytes(map.block_starts));
    let counts = client.create_from_slice(u32::as_bytes(map.counts));
    // A zero-length buffer is not allowed: pad empty index lists with one entry.
    let idx_pad = [0u32];
    let idx = if map.indices.is_empty() { &idx_pad[..] } else { map.indices };
    let indices = client.create_from_slice(u32::as_bytes(idx));
    let out = client.empty(bh * p.seq_len * p.value_dim * size_of::<F>());
    let lse = client.empty(bh * p.seq_len * size_of::<f32>());
    let (bias_h, bias_len, bbs, bhs, has_bias) = match bias {
        Some((h, bs, hs)) => {
            let len = (p.batch - 1) * bs + (p.heads - 1) * hs + p.seq_len;
            (h, len, bs, hs, true)
        }
        None => (client.create_from_slice(F::as_bytes(&[F::from_int(0)])), 1, 0, 0, false),
    };
    let arr = |h: &Handle, len: usize| unsafe { ArrayArg::from_raw_parts(h.clone(), len) };
    block_sparse_forward_portable::launch::<F, R>(
        client,
        CubeCount::Static((n_blocks * chunks) as u32, bh as u32, 1),
        CubeDim::new_1d(tiles.rows_per_cube as u32),
        arr(&q, bh * p.seq_len * p.head_dim),
        arr(&k, bh * p.seq_len * p.head_dim),
        arr(&v, bh * p.seq_len * p.value_dim),
        arr(&bias_h, bias_len),
        arr(&starts, map.block_starts.len()),
        arr(&counts, map.counts.len()),
        arr(&indices, idx.len()),
        arr(&out, bh * p.seq_len * p.value_dim),
        arr(&lse, bh * p.seq_len),
        p.seq_len as u32,
        p.heads as u32,
        map.map_heads as u32,
        map.max_count as u32,
        chunks as u32,
        bbs as u32,
        bhs as u32,
        p.scale,
        p.head_dim,
        p.value_dim,
        tiles.rows_per_cube,
        tiles.tile_k,
        has_bias,
    );
    ForwardOutput { out, lse }
}
