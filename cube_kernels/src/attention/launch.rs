//! Host side of the portable forward: buffers in, output and LSE out.

use cubecl::prelude::*;
use cubecl::server::Handle;

use super::portable::block_sparse_forward_portable;
use super::tiles::portable_tiles;

/// Shapes of one forward call. Tensors are contiguous `[batch * heads, len, dim]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ForwardProblem {
    /// Batch size.
    pub batch: usize,
    /// Heads.
    pub heads: usize,
    /// Queries.
    pub q_len: usize,
    /// Keys and values.
    pub k_len: usize,
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
    /// `nqb + 1` query block boundaries, the last one `q_len`.
    pub q_starts: &'a [u32],
    /// Key block boundaries, the last one `k_len`.
    pub k_starts: &'a [u32],
    /// Visited key blocks per map row (`map_heads * nqb` rows).
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
    /// `[batch * heads, q_len, value_dim]`.
    pub out: Handle,
    /// `[batch * heads, q_len]` in f32; `-inf` for a row with no key.
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
    let n_blocks = map.q_starts.len() - 1;
    let tiles = portable_tiles(p.head_dim, p.value_dim, size_of::<F>());
    let max_block = map.q_starts.windows(2).map(|w| (w[1] - w[0]) as usize).max().unwrap_or(1);
    let chunks = max_block.div_ceil(tiles.rows_per_cube).max(1);

    let q_starts = client.create_from_slice(u32::as_bytes(map.q_starts));
    let k_starts = client.create_from_slice(u32::as_bytes(map.k_starts));
    let counts = client.create_from_slice(u32::as_bytes(map.counts));
    // A zero-length buffer is not allowed: pad empty index lists with one entry.
    let idx_pad = [0u32];
    let idx = if map.indices.is_empty() { &idx_pad[..] } else { map.indices };
    let indices = client.create_from_slice(u32::as_bytes(idx));
    let out = client.empty(bh * p.q_len * p.value_dim * size_of::<F>());
    let lse = client.empty(bh * p.q_len * size_of::<f32>());
    let (bias_h, bias_len, bbs, bhs, has_bias) = match bias {
        Some((h, bs, hs)) => {
            let len = (p.batch - 1) * bs + (p.heads - 1) * hs + p.k_len;
            (h, len, bs, hs, true)
        }
        None => (client.create_from_slice(F::as_bytes(&[F::from_int(0)])), 1, 0, 0, false),
    };
    let arr = |h: &Handle, len: usize| unsafe { ArrayArg::from_raw_parts(h.clone(), len) };
    block_sparse_forward_portable::launch::<F, R>(
        client,
        CubeCount::Static((n_blocks * chunks) as u32, bh as u32, 1),
        CubeDim::new_1d(tiles.rows_per_cube as u32),
        arr(&q, bh * p.q_len * p.head_dim),
        arr(&k, bh * p.k_len * p.head_dim),
        arr(&v, bh * p.k_len * p.value_dim),
        arr(&bias_h, bias_len),
        arr(&q_starts, map.q_starts.len()),
        arr(&k_starts, map.k_starts.len()),
        arr(&counts, map.counts.len()),
        arr(&indices, idx.len()),
        arr(&out, bh * p.q_len * p.value_dim),
        arr(&lse, bh * p.q_len),
        p.q_len as u32,
        p.k_len as u32,
        p.heads as u32,
        map.map_heads as u32,
        map.max_count as u32,
        chunks as u32,
        bbs as u32,
        bhs as u32,
        p.scale,
        f32::NEG_INFINITY,
        p.head_dim,
        p.value_dim,
        tiles.rows_per_cube,
        tiles.tile_k,
        has_bias,
    );
    ForwardOutput { out, lse }
}

/// Element types the kernels take, chosen at run time from a tensor's dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KernelElem {
    /// f32.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    BF16,
}

impl KernelElem {
    /// Whether the runtime behind `client` can store and compute with this type (as it reports it).
    pub fn supported<R: Runtime>(self, client: &ComputeClient<R>) -> bool {
        let ty = match self {
            KernelElem::F32 => f32::as_type_native_unchecked(),
            KernelElem::F16 => half::f16::as_type_native_unchecked(),
            KernelElem::BF16 => half::bf16::as_type_native_unchecked(),
        };
        client.properties().supports_type(ty.storage_type())
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            KernelElem::F32 => 4,
            KernelElem::F16 | KernelElem::BF16 => 2,
        }
    }
}

/// [`forward_portable`] with the element type chosen at run time.
#[allow(clippy::too_many_arguments)]
pub fn forward_portable_elem<R: Runtime>(
    client: &ComputeClient<R>,
    elem: KernelElem,
    q: Handle,
    k: Handle,
    v: Handle,
    bias: Option<(Handle, usize, usize)>,
    map: BlockMapArrays<'_>,
    p: ForwardProblem,
) -> ForwardOutput {
    match elem {
        KernelElem::F32 => forward_portable::<R, f32>(client, q, k, v, bias, map, p),
        KernelElem::F16 => forward_portable::<R, half::f16>(client, q, k, v, bias, map, p),
        KernelElem::BF16 => forward_portable::<R, half::bf16>(client, q, k, v, bias, map, p),
    }
}
