//! A plain batched matmul: shared-memory tiles, 4 x 4 outputs a unit in registers, f32
//! accumulation, every load bounds-checked; the right operand row-major or transposed (read in
//! place).
//!
//! The reference backward (the composite `Autodiff`) and Combined attention's sampled scores
//! (`q_s K^T`) take their products from here on CubeCL backends: burn 0.21's autotune can pick a
//! double-buffered unit matmul that adds a stage read past the end of `k` when the stage count is
//! odd (tracel-ai/burn#5626), which made gradients on wgpu wrong for some shapes.

use cubecl::ir::features::MmaConfig;
use cubecl::prelude::*;
use cubecl::server::Handle;

use crate::array_arg;
use crate::attention::KernelElem;
use crate::matmul_tensor_core::{batched_matmul_tensor_core, tensor_core_grid};

/// Output rows a cube computes.
pub const TILE_M: usize = 32;
/// Output columns a cube computes.
pub const TILE_N: usize = 128;
/// Contraction slice staged in shared memory per step.
pub const TILE_K: usize = 16;
/// Units along a cube's columns (a plane of 32 on CUDA: its shared-memory reads of `b` hit 32
/// banks, its reads of `a` are one broadcast) and along its rows: 256 units.
const UNITS_X: usize = 32;
const UNITS_Y: usize = 8;
/// Outputs a unit computes: 4 rows x 4 columns, so each value read from shared memory feeds 4
/// multiply-adds. For Combined's sampled scores at CogVideoX-2B on an H100: 1.19 ms, against
/// 1.87 ms at one output a unit (bound by its shared-memory loads) and 1.25 ms at 8 x 4.
const UNIT_ROWS: usize = TILE_M / UNITS_Y;
const UNIT_COLS: usize = TILE_N / UNITS_X;
/// Row stride of the staged `b` slice: one past [`TILE_N`], so the column-wise stores of a
/// transposed `b` spread over the banks.
const B_STRIDE: usize = TILE_N + 1;

/// `out[z] = a[z] b[z]` for contiguous `a [batch, m, k]` and `b [batch, k, n]` (or, with
/// `b_transposed`, `b [batch, n, k]` holding `b[z]^T`, as `swap_dims` of keys gives it: read in
/// place, no copy), `out [batch, m, n]`; cube `(x, y, z)` computes the `TILE_M x TILE_N` tile at
/// column block `x`, row block `y` of batch `z`, each unit 4 rows (`4 * UNIT_POS_Y ..`) by 4
/// columns (`UNIT_POS_X + 32 j`: a plane's stores are contiguous). Loads past `m`, `n` or `k`
/// read 0.
#[cube(launch)]
pub fn batched_matmul<F: Float>(
    a: &Array<F>,
    b: &Array<F>,
    out: &mut Array<F>,
    m: u32,
    n: u32,
    k: u32,
    #[comptime] b_transposed: bool,
) {
    let (m, n, k) = (m as usize, n as usize, k as usize);
    let z = CUBE_POS_Z as usize;
    let (ty, tx) = (UNIT_POS_Y as usize, UNIT_POS_X as usize);
    let unit = UNIT_POS as usize;
    let threads = UNITS_X * UNITS_Y;
    let row0 = CUBE_POS_Y as usize * TILE_M;
    let col0 = CUBE_POS_X as usize * TILE_N;
    let (a0, b0) = (z * m * k, z * k * n);
    let mut sa = SharedMemory::<f32>::new(TILE_M * TILE_K);
    let mut sb = SharedMemory::<f32>::new(TILE_K * B_STRIDE);
    let mut acc = Array::<f32>::new(UNIT_ROWS * UNIT_COLS);
    #[unroll]
    for i in 0..UNIT_ROWS * UNIT_COLS {
        acc[i] = 0.0f32;
    }
    let steps = k.div_ceil(TILE_K);
    for s in 0..steps {
        let k0 = s * TILE_K;
        #[unroll]
        for it in 0..TILE_M * TILE_K / threads {
            let idx = it * threads + unit;
            let (r, kk) = (idx / TILE_K, idx % TILE_K);
            let mut va = 0.0f32;
            if row0 + r < m && k0 + kk < k {
                va = f32::cast_from(a[a0 + (row0 + r) * k + k0 + kk]);
            }
            sa[idx] = va;
        }
        #[unroll]
        for it in 0..TILE_K * TILE_N / threads {
            let idx = it * threads + unit;
            // Consecutive units read consecutive addresses of either layout.
            let mut c = idx % TILE_N;
            let mut kk = idx / TILE_N;
            if comptime![b_transposed] {
                c = idx / TILE_K;
                kk = idx % TILE_K;
            }
            let mut vb = 0.0f32;
            if col0 + c < n && k0 + kk < k {
                let mut at = b0 + (k0 + kk) * n + col0 + c;
                if comptime![b_transposed] {
                    at = b0 + (col0 + c) * k + k0 + kk;
                }
                vb = f32::cast_from(b[at]);
            }
            sb[kk * B_STRIDE + c] = vb;
        }
        sync_cube();
        #[unroll]
        for i in 0..TILE_K {
            let mut av = Array::<f32>::new(UNIT_ROWS);
            #[unroll]
            for r in 0..UNIT_ROWS {
                av[r] = sa[(ty * UNIT_ROWS + r) * TILE_K + i];
            }
            #[unroll]
            for j in 0..UNIT_COLS {
                let bv = sb[i * B_STRIDE + tx + j * UNITS_X];
                #[unroll]
                for r in 0..UNIT_ROWS {
                    acc[r * UNIT_COLS + j] += av[r] * bv;
                }
            }
        }
        sync_cube();
    }
    #[unroll]
    for r in 0..UNIT_ROWS {
        let row = row0 + ty * UNIT_ROWS + r;
        #[unroll]
        for j in 0..UNIT_COLS {
            let col = col0 + tx + j * UNITS_X;
            if row < m && col < n {
                out[z * m * n + row * n + col] = F::cast_from(acc[r * UNIT_COLS + j]);
            }
        }
    }
}

/// Whether [`launch_batched_matmul`] takes this problem (the grid's row and batch limits).
pub fn matmul_fits(batch: usize, m: usize) -> bool {
    batch <= 65_535 && m.div_ceil(TILE_M) <= 65_535
}

/// The switch that opts into the tensor-core matmul: `DIT_ATTENTION_MATMUL_TENSOR_CORES=1`.
pub const TENSOR_CORE_SWITCH: &str = "DIT_ATTENTION_MATMUL_TENSOR_CORES";

/// Whether `elem`'s products run on tensor cores: the runtime reports cmma 16 x 16 x 16 for it
/// with f32 accumulation (f16 / bf16) and planes of exactly 32 (the kernel maps a plane to a row
/// of its cube), and [`TENSOR_CORE_SWITCH`] is `1`. Opt-in until the
/// kernel has passed the CUDA tests on a GPU (`engine_cuda checked_matmul combined` with the
/// switch set): it was written in a session without GPU time.
pub fn matmul_on_tensor_cores<R: Runtime>(client: &ComputeClient<R>, elem: KernelElem) -> bool {
    let (ab, cd) = (elem.storage_type(), KernelElem::F32.storage_type());
    let cmma = MmaConfig { a_type: ab, b_type: ab, cd_type: cd, m: 16, n: 16, k: 16 };
    let hw = &client.properties().hardware;
    std::env::var(TENSOR_CORE_SWITCH).is_ok_and(|v| v == "1")
        && elem != KernelElem::F32
        && client.features().matmul.cmma.contains(&cmma)
        && (hw.plane_size_min, hw.plane_size_max) == (32, 32)
}

/// Launches [`batched_matmul`] (or, where [`matmul_on_tensor_cores`], its tensor-core twin) on
/// contiguous `a [batch, m, k]` and `b [batch, k, n]` (or `b [batch, n, k]` with
/// `b_transposed`) of `elem`; returns `out [batch, m, n]` of `elem`. The caller checked
/// [`matmul_fits`].
pub fn launch_batched_matmul<R: Runtime>(
    client: &ComputeClient<R>,
    elem: KernelElem,
    a: Handle,
    b: Handle,
    b_transposed: bool,
    [batch, m, n, k]: [usize; 4],
) -> Handle {
    let out = client.empty(batch * m * n * elem.size());
    if batch * m * n == 0 {
        return out;
    }
    let args = (array_arg(&a, batch * m * k), array_arg(&b, batch * k * n), array_arg(&out, batch * m * n));
    let (mu, nu, ku) = (m as u32, n as u32, k as u32);
    let t = b_transposed;
    if matmul_on_tensor_cores(client, elem) {
        let (count, dim) = tensor_core_grid(batch, m, n);
        match elem {
            KernelElem::F16 => batched_matmul_tensor_core::launch::<half::f16, R>(
                client, count, dim, args.0, args.1, args.2, mu, nu, ku, t,
            ),
            _ => batched_matmul_tensor_core::launch::<half::bf16, R>(
                client, count, dim, args.0, args.1, args.2, mu, nu, ku, t,
            ),
        }
        return out;
    }
    let count = CubeCount::Static(n.div_ceil(TILE_N) as u32, m.div_ceil(TILE_M) as u32, batch as u32);
    let dim = CubeDim::new_2d(UNITS_X as u32, UNITS_Y as u32);
    match elem {
        KernelElem::F32 => batched_matmul::launch::<f32, R>(client, count, dim, args.0, args.1, args.2, mu, nu, ku, t),
        KernelElem::F16 => {
            batched_matmul::launch::<half::f16, R>(client, count, dim, args.0, args.1, args.2, mu, nu, ku, t)
        }
        KernelElem::BF16 => {
            batched_matmul::launch::<half::bf16, R>(client, count, dim, args.0, args.1, args.2, mu, nu, ku, t)
        }
    }
    out
}
