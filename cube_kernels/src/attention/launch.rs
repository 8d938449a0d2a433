//! Host side of the portable forward: buffers in, output and LSE out.

use cubecl::prelude::*;
use cubecl::server::Handle;

use cubecl::ir::StorageType;
use cubecl::ir::features::MmaConfig;

use super::portable::block_sparse_forward_portable;
use super::tensor_core::{TC_ROWS, TC_WARPS, block_sparse_forward_tensor_core};
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

/// Which kernel runs a forward call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ForwardPath {
    /// Plain loads and f32 math: every runtime, every element type, head dims up to 256.
    Portable,
    /// cmma 16x16x16 tiles: f16 / bf16 where the runtime reports them with f32 accumulation,
    /// head dims multiples of 16 up to 128.
    TensorCore,
}

impl ForwardPath {
    /// The tensor-core path where the runtime reports the needed cmma configuration and the head
    /// dims fit it; the portable path otherwise (decided from the runtime's features only).
    pub fn choose<R: Runtime>(client: &ComputeClient<R>, elem: KernelElem, head_dim: usize, value_dim: usize) -> Self {
        let dims_fit = |d: usize| d > 0 && d.is_multiple_of(16) && d <= 128;
        if elem == KernelElem::F32 {
            return ForwardPath::Portable;
        }
        let ab = elem.storage_type();
        let config = MmaConfig { a_type: ab, b_type: ab, cd_type: KernelElem::F32.storage_type(), m: 16, n: 16, k: 16 };
        if dims_fit(head_dim) && dims_fit(value_dim) && client.features().matmul.cmma.contains(&config) {
            ForwardPath::TensorCore
        } else {
            ForwardPath::Portable
        }
    }

    /// Query rows per cube.
    pub fn rows_per_cube(self, head_dim: usize, value_dim: usize, elem_bytes: usize) -> usize {
        match self {
            ForwardPath::Portable => portable_tiles(head_dim, value_dim, elem_bytes).rows_per_cube,
            ForwardPath::TensorCore => TC_ROWS,
        }
    }

    /// A short name for logs and errors.
    pub fn name(self) -> &'static str {
        match self {
            ForwardPath::Portable => "portable CubeCL kernel",
            ForwardPath::TensorCore => "tensor-core (cmma) CubeCL kernel",
        }
    }
}

/// Launches the portable kernel. `bias`, if given, is `(buffer, batch stride, head stride)` of
/// one value per key. The caller validates shapes (the burn layer does, with named errors).
pub fn forward_portable<R: Runtime, F: Float + CubeElement>(
    client: &ComputeClient<R>,
    q: Handle,
    k: Handle,
    v: Handle,
    bias: Option<(Handle, usize, usize)>,
    map: BlockMapArrays<'_>,
    p: ForwardProblem,
) -> ForwardOutput {
    forward::<R, F>(client, ForwardPath::Portable, q, k, v, bias, map, p)
}

/// Launches the kernel of `path` (the caller checked that the runtime supports it).
#[allow(clippy::too_many_arguments)]
pub fn forward<R: Runtime, F: Float + CubeElement>(
    client: &ComputeClient<R>,
    path: ForwardPath,
    q: Handle,
    k: Handle,
    v: Handle,
    bias: Option<(Handle, usize, usize)>,
    map: BlockMapArrays<'_>,
    p: ForwardProblem,
) -> ForwardOutput {
    let bh = p.batch * p.heads;
    let n_blocks = map.q_starts.len() - 1;
    let rows_per_cube = path.rows_per_cube(p.head_dim, p.value_dim, size_of::<F>());
    let max_block = map.q_starts.windows(2).map(|w| (w[1] - w[0]) as usize).max().unwrap_or(1);
    let chunks = max_block.div_ceil(rows_per_cube).max(1);

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
    let count = CubeCount::Static((n_blocks * chunks) as u32, bh as u32, 1);
    macro_rules! launch_with {
        ($kernel:ident, $dim:expr, $($comptime:expr),*) => {
            $kernel::launch::<F, R>(
                client,
                count,
                $dim,
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
                $($comptime),*
            )
        };
    }
    match path {
        ForwardPath::Portable => {
            let tiles = portable_tiles(p.head_dim, p.value_dim, size_of::<F>());
            launch_with!(
                block_sparse_forward_portable,
                CubeDim::new_1d(tiles.rows_per_cube as u32),
                p.head_dim,
                p.value_dim,
                tiles.rows_per_cube,
                tiles.tile_k,
                has_bias
            )
        }
        ForwardPath::TensorCore => launch_with!(
            block_sparse_forward_tensor_core,
            CubeDim::new_2d(32, TC_WARPS as u32),
            p.head_dim,
            p.value_dim,
            has_bias
        ),
    }
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
        client.properties().supports_type(self.storage_type())
    }

    /// The type as cubecl's runtime features name it.
    pub fn storage_type(self) -> StorageType {
        match self {
            KernelElem::F32 => f32::as_type_native_unchecked(),
            KernelElem::F16 => half::f16::as_type_native_unchecked(),
            KernelElem::BF16 => half::bf16::as_type_native_unchecked(),
        }
        .storage_type()
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            KernelElem::F32 => 4,
            KernelElem::F16 | KernelElem::BF16 => 2,
        }
    }
}

/// [`forward`] with the element type chosen at run time.
#[allow(clippy::too_many_arguments)]
pub fn forward_elem<R: Runtime>(
    client: &ComputeClient<R>,
    path: ForwardPath,
    elem: KernelElem,
    q: Handle,
    k: Handle,
    v: Handle,
    bias: Option<(Handle, usize, usize)>,
    map: BlockMapArrays<'_>,
    p: ForwardProblem,
) -> ForwardOutput {
    match elem {
        KernelElem::F32 => forward::<R, f32>(client, path, q, k, v, bias, map, p),
        KernelElem::F16 => forward::<R, half::f16>(client, path, q, k, v, bias, map, p),
        KernelElem::BF16 => forward::<R, half::bf16>(client, path, q, k, v, bias, map, p),
    }
}
