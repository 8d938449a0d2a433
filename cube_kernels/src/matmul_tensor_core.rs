//! The batched matmul of [`crate::matmul`] on tensor cores (cubecl's `cmma`, 16 x 16 x 16 tiles,
//! f16 / bf16 inputs, f32 accumulation) for runtimes that report it, opt-in for now (see
//! [`crate::matmul::matmul_on_tensor_cores`]). Same contract: any `m`, `n`, `k` (loads past them
//! stage zeros, stores past them are skipped), `b` row-major or transposed.
//!
//! Combined attention's sampled scores (`[60, 104, 64] x [60, 64, 17,776]` at CogVideoX-2B) are
//! a thin product whose cost the scalar kernel's multiply-adds set; on tensor cores what is left
//! is reading the keys and writing the scores.

use cubecl::prelude::*;

/// Planes of a cube along the output rows and along its columns.
const WARPS_M: usize = 4;
const WARPS_N: usize = 2;
/// Output rows and columns of a cube: each plane computes 16 rows x 64 columns (four 16 x 16
/// accumulators).
pub const TC_TILE_M: usize = 16 * WARPS_M;
pub const TC_TILE_N: usize = 64 * WARPS_N;
/// Contraction slice staged in shared memory per step.
const TC_TILE_K: usize = 32;
const UNITS: usize = 32 * WARPS_M * WARPS_N;

/// A 16 x 16 f32 accumulator of zeros.
#[cube]
fn zero_tile() -> cmma::Matrix<f32> {
    cmma::Matrix::<f32>::from_value(
        cmma::MatrixIdent::Accumulator,
        16usize,
        16usize,
        16usize,
        cmma::MatrixLayout::Undefined,
        0.0,
    )
}

/// One 16-deep step of a plane: `c += a_tile * b_tile` with `b`'s tile at `b_at`.
#[cube]
fn mma_step<F: Float>(
    a: &cmma::Matrix<F>,
    sb: &SharedMemory<F>,
    b_at: usize,
    c: &cmma::Matrix<f32>,
    #[comptime] b_transposed: bool,
) {
    if comptime![b_transposed] {
        let b = cmma::Matrix::<F>::from_slice(
            cmma::MatrixIdent::B,
            16usize,
            16usize,
            16usize,
            cmma::MatrixLayout::ColMajor,
            &sb.slice(b_at, TC_TILE_N * TC_TILE_K),
            TC_TILE_K as u32,
        );
        cmma::execute::<F, F, f32, f32>(a, &b, c, c);
    } else {
        let b = cmma::Matrix::<F>::from_slice(
            cmma::MatrixIdent::B,
            16usize,
            16usize,
            16usize,
            cmma::MatrixLayout::RowMajor,
            &sb.slice(b_at, TC_TILE_N * TC_TILE_K),
            TC_TILE_N as u32,
        );
        cmma::execute::<F, F, f32, f32>(a, &b, c, c);
    }
}

/// Writes accumulator `c` (the plane's 16 x 16 tile at output `row`, `col`) through the plane's
/// 256-value staging slice at `at`, skipping elements past `m` or `n`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn store_tile<F: Float>(
    c: &cmma::Matrix<f32>,
    stage: &mut SharedMemory<f32>,
    at: usize,
    out: &mut Array<F>,
    base: usize,
    row: usize,
    col: usize,
    m: usize,
    n: usize,
) {
    cmma::store(&mut stage.slice_mut(at, at + 256), c, 16u32, cmma::MatrixLayout::RowMajor);
    sync_cube();
    // Lane l writes 8 adjacent values of row l / 2.
    let lane = UNIT_POS_X as usize;
    let (r, c0) = (lane / 2, (lane % 2) * 8);
    #[unroll]
    for e in 0..8 {
        if row + r < m && col + c0 + e < n {
            out[base + (row + r) * n + col + c0 + e] = F::cast_from(stage[at + r * 16 + c0 + e]);
        }
    }
    sync_cube();
}

/// `out[z] = a[z] b[z]` as [`crate::matmul::batched_matmul`] computes it, on tensor cores. Cube
/// `(x, y, z)` computes the `TC_TILE_M x TC_TILE_N` tile at column block `x`, row block `y` of
/// batch `z`; plane `(wm, wn)` (`UNIT_POS_Y = wm * WARPS_N + wn`) its rows `16 wm ..` and
/// columns `64 wn ..`.
#[cube(launch)]
pub fn batched_matmul_tensor_core<F: Float>(
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
    let unit = UNIT_POS as usize;
    let warp = UNIT_POS_Y as usize;
    let (wm, wn) = (warp / WARPS_N, warp % WARPS_N);
    let row0 = CUBE_POS_Y as usize * TC_TILE_M;
    let col0 = CUBE_POS_X as usize * TC_TILE_N;
    let (a0, b0) = (z * m * k, z * k * n);
    // `a` row-major `[TC_TILE_M, TC_TILE_K]`; `b` as `[TC_TILE_N, TC_TILE_K]` (column-major
    // `k x n`) when transposed, else row-major `[TC_TILE_K, TC_TILE_N]`: each the layout its
    // source holds, so consecutive units copy consecutive addresses.
    // 32-byte aligned: the tile loads and stores (WMMA) need it.
    let mut sa = SharedMemory::<F>::new_aligned(TC_TILE_M * TC_TILE_K, 32usize);
    let mut sb = SharedMemory::<F>::new_aligned(TC_TILE_N * TC_TILE_K, 32usize);
    let mut stage = SharedMemory::<f32>::new_aligned(256 * WARPS_M * WARPS_N, 32usize);
    let c0 = zero_tile();
    let c1 = zero_tile();
    let c2 = zero_tile();
    let c3 = zero_tile();
    let steps = k.div_ceil(TC_TILE_K);
    for s in 0..steps {
        let k0 = s * TC_TILE_K;
        #[unroll]
        for it in 0..TC_TILE_M * TC_TILE_K / UNITS {
            let idx = it * UNITS + unit;
            let (r, kk) = (idx / TC_TILE_K, idx % TC_TILE_K);
            let mut va = F::new(0.0);
            if row0 + r < m && k0 + kk < k {
                va = a[a0 + (row0 + r) * k + k0 + kk];
            }
            sa[idx] = va;
        }
        #[unroll]
        for it in 0..TC_TILE_N * TC_TILE_K / UNITS {
            let idx = it * UNITS + unit;
            let mut vb = F::new(0.0);
            if comptime![b_transposed] {
                let (c, kk) = (idx / TC_TILE_K, idx % TC_TILE_K);
                if col0 + c < n && k0 + kk < k {
                    vb = b[b0 + (col0 + c) * k + k0 + kk];
                }
            } else {
                let (kk, c) = (idx / TC_TILE_N, idx % TC_TILE_N);
                if col0 + c < n && k0 + kk < k {
                    vb = b[b0 + (k0 + kk) * n + col0 + c];
                }
            }
            sb[idx] = vb;
        }
        sync_cube();
        #[unroll]
        for kk in 0..TC_TILE_K / 16 {
            let a_tile = cmma::Matrix::<F>::from_slice(
                cmma::MatrixIdent::A,
                16usize,
                16usize,
                16usize,
                cmma::MatrixLayout::RowMajor,
                &sa.slice(wm * 16 * TC_TILE_K + kk * 16, TC_TILE_M * TC_TILE_K),
                TC_TILE_K as u32,
            );
            // Column `col` of this step's `b` tile: `col * TC_TILE_K + 16 kk` transposed,
            // `16 kk * TC_TILE_N + col` row-major.
            let col = wn * 64;
            let mut at = kk * 16 * TC_TILE_N + col;
            let mut step = 16usize;
            if comptime![b_transposed] {
                at = col * TC_TILE_K + kk * 16;
                step = 16 * TC_TILE_K;
            }
            mma_step::<F>(&a_tile, &sb, at, &c0, b_transposed);
            mma_step::<F>(&a_tile, &sb, at + step, &c1, b_transposed);
            mma_step::<F>(&a_tile, &sb, at + 2 * step, &c2, b_transposed);
            mma_step::<F>(&a_tile, &sb, at + 3 * step, &c3, b_transposed);
        }
        sync_cube();
    }
    let (row, col, at, base) = (row0 + wm * 16, col0 + wn * 64, warp * 256, z * m * n);
    store_tile::<F>(&c0, &mut stage, at, out, base, row, col, m, n);
    store_tile::<F>(&c1, &mut stage, at, out, base, row, col + 16, m, n);
    store_tile::<F>(&c2, &mut stage, at, out, base, row, col + 32, m, n);
    store_tile::<F>(&c3, &mut stage, at, out, base, row, col + 48, m, n);
}

/// The cube's shape and the grid for `[batch, m, n]`.
pub fn tensor_core_grid(batch: usize, m: usize, n: usize) -> (CubeCount, CubeDim) {
    let count = CubeCount::Static(n.div_ceil(TC_TILE_N) as u32, m.div_ceil(TC_TILE_M) as u32, batch as u32);
    (count, CubeDim::new_2d(32, (WARPS_M * WARPS_N) as u32))
}
