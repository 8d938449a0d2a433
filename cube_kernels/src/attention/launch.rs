//! Host side of the portable forward: buffers in, output and LSE out.

use cubecl::prelude::*;
use cubecl::server::Handle;

use cubecl::ir::StorageType;
use cubecl::ir::features::{MmaConfig, Plane};

use super::common::{MapConfig, MapSource, SparseMapLaunch};
use super::mma::block_sparse_forward_mma;
use super::mma_wide::{WIDE_ROWS, block_sparse_forward_mma_wide};
use super::portable::block_sparse_forward_portable;
use super::tensor_core::{TC_ROWS, TC_WARPS, block_sparse_forward_tensor_core};
use super::tiles::{mma_rows, mma_warps, portable_tiles};

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

/// Where the key blocks of each query block come from.
#[derive(Debug, Clone, Copy)]
pub enum KeyBlocks<'a> {
    /// Count and index list per map row (`map_heads * nqb` rows).
    Arrays {
        /// Visited key blocks per map row.
        counts: &'a [u32],
        /// `rows x max_count` key block indices.
        indices: &'a [u32],
        /// Row stride of `indices`.
        max_count: usize,
        /// In-block masks of partial entries: `(offsets, bits)` as [`super::SparseMap`] reads
        /// them; `None` when every visited block is full.
        masks: Option<(&'a [u32], &'a [u32])>,
    },
    /// Count and index list per map row already on the device (written by a kernel, e.g. the
    /// dynamic block selection), 32-bit integers; every visited block is full.
    Device {
        /// `rows` visited key block counts.
        counts: &'a Handle,
        /// `rows x max_count` key block indices.
        indices: &'a Handle,
        /// Map rows (`map_heads * nqb`).
        rows: usize,
        /// Row stride of `indices`.
        max_count: usize,
    },
    /// Every key block (dense attention).
    All,
    /// The STA window of each query tile plus the text blocks, from
    /// [`super::StaGeometry::to_kernel_array`].
    Sta(&'a [u32]),
}

/// A block map as the kernel reads it.
#[derive(Debug, Clone, Copy)]
pub struct BlockMapArrays<'a> {
    /// `nqb + 1` query block boundaries, the last one `q_len`.
    pub q_starts: &'a [u32],
    /// Key block boundaries, the last one `k_len`.
    pub k_starts: &'a [u32],
    /// The visited key blocks.
    pub blocks: KeyBlocks<'a>,
    /// 1 (shared by all heads) or the number of heads.
    pub map_heads: usize,
    /// Input row of each map position (self-attention: queries and keys share it), or `None`
    /// when the inputs are in the map's order.
    pub gather: Option<&'a [u32]>,
}

impl BlockMapArrays<'_> {
    /// The kernel's comptime map configuration.
    pub fn config(&self) -> MapConfig {
        let (source, partial) = match self.blocks {
            KeyBlocks::Arrays { masks, .. } => (MapSource::Arrays, masks.is_some()),
            KeyBlocks::Device { .. } => (MapSource::Arrays, false),
            KeyBlocks::All => (MapSource::All, false),
            KeyBlocks::Sta(_) => (MapSource::Sta, false),
        };
        MapConfig { source, partial, gathered: self.gather.is_some() }
    }
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
    /// Register-level MMA (m16n8k16) with ldmatrix fragment loads, `cp.async` K/V copies and
    /// plane shuffles: f16 / bf16 where the runtime reports manual MMA, ldmatrix, plane
    /// operations and async copies, head dims multiples of 16 up to 128.
    Mma,
}

/// Whether the runtime has what the register-level MMA kernels use for inputs of `elem`:
/// `mma.sync` m16n8k16 with f32 accumulation, `ldmatrix`, plane shuffles and `cp.async`.
pub fn mma_available<R: Runtime>(client: &ComputeClient<R>, elem: KernelElem) -> bool {
    let ab = elem.storage_type();
    let cd = KernelElem::F32.storage_type();
    let features = client.features();
    let manual = MmaConfig { a_type: ab, b_type: ab, cd_type: cd, m: 16, n: 8, k: 16 };
    elem != KernelElem::F32
        && features.matmul.mma.contains(&manual)
        && features.matmul.ldmatrix.contains(&ab)
        && features.plane.contains(Plane::Ops)
        && features.copy_async
}

impl ForwardPath {
    /// The tensor-core path where the runtime reports the needed cmma configuration and the head
    /// dims fit it; the portable path otherwise (decided from the runtime's features only).
    pub fn choose<R: Runtime>(client: &ComputeClient<R>, elem: KernelElem, head_dim: usize, value_dim: usize) -> Self {
        let dims_fit = |d: usize| d > 0 && d.is_multiple_of(16) && d <= 128;
        if elem == KernelElem::F32 {
            return ForwardPath::Portable;
        }
        if !(dims_fit(head_dim) && dims_fit(value_dim)) {
            return ForwardPath::Portable;
        }
        let ab = elem.storage_type();
        let cd = KernelElem::F32.storage_type();
        let cmma = MmaConfig { a_type: ab, b_type: ab, cd_type: cd, m: 16, n: 16, k: 16 };
        if mma_available(client, elem) {
            ForwardPath::Mma
        } else if client.features().matmul.cmma.contains(&cmma) {
            ForwardPath::TensorCore
        } else {
            ForwardPath::Portable
        }
    }

    /// Query rows per cube, for query blocks of at most `max_block` rows.
    pub fn rows_per_cube(self, head_dim: usize, value_dim: usize, elem_bytes: usize, max_block: usize) -> usize {
        match self {
            ForwardPath::Portable => portable_tiles(head_dim, value_dim, elem_bytes).rows_per_cube,
            ForwardPath::TensorCore => TC_ROWS,
            ForwardPath::Mma => mma_rows() * mma_warps(max_block),
        }
    }

    /// A short name for logs and errors.
    pub fn name(self) -> &'static str {
        match self {
            ForwardPath::Portable => "portable CubeCL kernel",
            ForwardPath::TensorCore => "tensor-core (cmma) CubeCL kernel",
            ForwardPath::Mma => "tensor-core (mma.sync) CubeCL kernel",
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
    let max_block = largest_block(map.q_starts);
    let rows_per_cube = path.rows_per_cube(p.head_dim, p.value_dim, size_of::<F>(), max_block);
    let chunks = max_block.div_ceil(rows_per_cube).max(1);

    let (arrays, max_count) = upload_map(client, &map);
    let config = map.config();
    let out = client.empty(bh * p.q_len * p.value_dim * size_of::<F>());
    let lse = client.empty(bh * p.q_len * size_of::<f32>());
    let (bias_h, bias_len, bbs, bhs, has_bias) = bias_buffer::<R, F>(client, bias, &p);
    let arr = |h: &Handle, len: usize| unsafe { ArrayArg::from_raw_parts(h.clone(), len) };
    let count = CubeCount::Static((n_blocks * chunks) as u32, bh as u32, 1);
    macro_rules! launch_with {
        ($kernel:ident, $dim:expr, $($comptime:expr),*) => {
            launch_with!(@ $kernel::launch, $dim, $($comptime),*)
        };
        (unchecked $kernel:ident, $dim:expr, $($comptime:expr),*) => {
            // SAFETY: every buffer length passed is the exact element count of its handle and the
            // host validated the block map against them; the kernel indexes only inside those.
            unsafe { launch_with!(@ $kernel::launch_unchecked, $dim, $($comptime),*) }
        };
        (@ $kernel:ident :: $launch:ident, $dim:expr, $($comptime:expr),*) => {
            $kernel::$launch::<F, R>(
                client,
                count,
                $dim,
                arr(&q, bh * p.q_len * p.head_dim),
                arr(&k, bh * p.k_len * p.head_dim),
                arr(&v, bh * p.k_len * p.value_dim),
                arr(&bias_h, bias_len),
                map_launch(&arrays),
                arr(&out, bh * p.q_len * p.value_dim),
                arr(&lse, bh * p.q_len),
                p.q_len as u32,
                p.k_len as u32,
                p.heads as u32,
                map.map_heads as u32,
                max_count as u32,
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
                has_bias,
                config
            )
        }
        ForwardPath::TensorCore => launch_with!(
            block_sparse_forward_tensor_core,
            CubeDim::new_2d(32, TC_WARPS as u32),
            p.head_dim,
            p.value_dim,
            has_bias,
            config
        ),
        ForwardPath::Mma if mma_rows() == WIDE_ROWS => launch_with!(
            unchecked block_sparse_forward_mma_wide,
            CubeDim::new_2d(32, (rows_per_cube / WIDE_ROWS) as u32),
            p.head_dim,
            p.value_dim,
            has_bias,
            config,
            rows_per_cube / WIDE_ROWS
        ),
        ForwardPath::Mma => launch_with!(
            unchecked block_sparse_forward_mma,
            CubeDim::new_2d(32, (rows_per_cube / 16) as u32),
            p.head_dim,
            p.value_dim,
            has_bias,
            config,
            rows_per_cube / 16
        ),
    }
    ForwardOutput { out, lse }
}

/// The longest block of the boundaries `starts` (1 for none).
pub(crate) fn largest_block(starts: &[u32]) -> usize {
    starts.windows(2).map(|w| (w[1] - w[0]) as usize).max().unwrap_or(1)
}

/// A bias argument as the kernels take it: `(buffer, element count, batch stride, head stride,
/// present)`; without a bias, a one-element dummy that is never read.
pub(crate) fn bias_buffer<R: Runtime, F: Float + CubeElement>(
    client: &ComputeClient<R>,
    bias: Option<(Handle, usize, usize)>,
    p: &ForwardProblem,
) -> (Handle, usize, usize, usize, bool) {
    match bias {
        Some((h, bs, hs)) => (h, (p.batch - 1) * bs + (p.heads - 1) * hs + p.k_len, bs, hs, true),
        None => (client.create_from_slice(F::as_bytes(&[F::from_int(0)])), 1, 0, 0, false),
    }
}

/// A block map's arrays on the device, each with its element count, in [`super::SparseMap`]'s
/// field order (arrays a map does not use hold one dummy element), and the index row stride.
pub(crate) type MapBuffers = [(Handle, usize); 8];

/// Uploads `map`'s arrays (device-resident lists are shared, not copied).
pub(crate) fn upload_map<R: Runtime>(client: &ComputeClient<R>, map: &BlockMapArrays<'_>) -> (MapBuffers, usize) {
    // Unused arrays still need a buffer: one dummy element.
    let upload = |data: Option<&[u32]>| {
        let data = data.filter(|d| !d.is_empty()).unwrap_or(&[0u32]);
        (client.create_from_slice(u32::as_bytes(data)), data.len())
    };
    let (counts, indices, max_count, masks, sta) = match map.blocks {
        KeyBlocks::Arrays { counts, indices, max_count, masks } => {
            (Some(counts), Some(indices), max_count.max(1), masks, None)
        }
        KeyBlocks::Device { max_count, .. } => (None, None, max_count.max(1), None, None),
        KeyBlocks::All => (None, None, 1, None, None),
        KeyBlocks::Sta(sta) => (None, None, 1, None, Some(sta)),
    };
    let (counts, indices) = match map.blocks {
        KeyBlocks::Device { counts, indices, rows, max_count } => {
            ((counts.clone(), rows.max(1)), (indices.clone(), (rows * max_count).max(1)))
        }
        _ => (upload(counts), upload(indices)),
    };
    let arrays = [
        upload(Some(map.q_starts)),
        upload(Some(map.k_starts)),
        counts,
        indices,
        upload(masks.map(|m| m.0)),
        upload(masks.map(|m| m.1)),
        upload(sta),
        upload(map.gather),
    ];
    (arrays, max_count)
}

/// The launch argument of uploaded map buffers.
pub(crate) fn map_launch<R: Runtime>(arrays: &MapBuffers) -> SparseMapLaunch<R> {
    // SAFETY: each length is the element count its buffer was created with.
    let [a0, a1, a2, a3, a4, a5, a6, a7] =
        arrays.each_ref().map(|(h, len)| unsafe { ArrayArg::from_raw_parts(h.clone(), *len) });
    SparseMapLaunch::new(a0, a1, a2, a3, a4, a5, a6, a7)
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
