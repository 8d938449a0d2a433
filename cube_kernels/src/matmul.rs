//! A plain batched matmul: shared-memory tiles, f32 accumulation, every load bounds-checked.
//!
//! The reference backward (the composite `Autodiff` runs until backward kernels land) takes its
//! products from here on CubeCL backends: burn 0.21's autotune can pick a double-buffered unit
//! matmul that adds a stage read past the end of `k` when the stage count is odd
//! (tracel-ai/burn#5626), which made gradients on wgpu wrong for some shapes.

use cubecl::prelude::*;
use cubecl::server::Handle;

use crate::array_arg;
use crate::attention::KernelElem;

/// Output tile edge (a cube is `TILE x TILE` units, one output element each).
pub const TILE: usize = 16;

/// `out[z] = a[z] b[z]` for contiguous `a [batch, m, k]`, `b [batch, k, n]`,
/// `out [batch, m, n]`; cube `(x, y, z)` computes the tile at column block `x`, row block `y`
/// of batch `z`.
#[cube(launch)]
pub fn batched_matmul<F: Float>(
    a: &Array<F>,
    b: &Array<F>,
    out: &mut Array<F>,
    m: u32,
    n: u32,
    k: u32,
    #[comptime] tile: usize,
) {
    let (m, n, k) = (m as usize, n as usize, k as usize);
    let z = CUBE_POS_Z as usize;
    let (ty, tx) = (UNIT_POS_Y as usize, UNIT_POS_X as usize);
    let row = CUBE_POS_Y as usize * tile + ty;
    let col = CUBE_POS_X as usize * tile + tx;
    let (a0, b0) = (z * m * k, z * k * n);
    let mut sa = SharedMemory::<f32>::new(tile * tile);
    let mut sb = SharedMemory::<f32>::new(tile * tile);
    let mut acc = 0.0f32;
    let steps = k.div_ceil(tile);
    for s in 0..steps {
        let ka = s * tile + tx;
        let mut va = 0.0f32;
        if row < m && ka < k {
            va = f32::cast_from(a[a0 + row * k + ka]);
        }
        sa[ty * tile + tx] = va;
        let kb = s * tile + ty;
        let mut vb = 0.0f32;
        if kb < k && col < n {
            vb = f32::cast_from(b[b0 + kb * n + col]);
        }
        sb[ty * tile + tx] = vb;
        sync_cube();
        #[unroll]
        for i in 0..tile {
            acc += sa[ty * tile + i] * sb[i * tile + tx];
        }
        sync_cube();
    }
    if row < m && col < n {
        out[z * m * n + row * n + col] = F::cast_from(acc);
    }
}

/// Whether [`launch_batched_matmul`] takes this problem (the grid's row and batch limits).
pub fn matmul_fits(batch: usize, m: usize) -> bool {
    batch <= 65_535 && m.div_ceil(TILE) <= 65_535
}

/// Launches [`batched_matmul`] on contiguous `a [batch, m, k]` and `b [batch, k, n]` of `elem`;
/// returns `out [batch, m, n]` of `elem`. The caller checked [`matmul_fits`].
pub fn launch_batched_matmul<R: Runtime>(
    client: &ComputeClient<R>,
    elem: KernelElem,
    a: Handle,
    b: Handle,
    [batch, m, n, k]: [usize; 4],
) -> Handle {
    let out = client.empty(batch * m * n * elem.size());
    if batch * m * n == 0 {
        return out;
    }
    let count = CubeCount::Static(n.div_ceil(TILE) as u32, m.div_ceil(TILE) as u32, batch as u32);
    let dim = CubeDim::new_2d(TILE as u32, TILE as u32);
    let args = (array_arg(&a, batch * m * k), array_arg(&b, batch * k * n), array_arg(&out, batch * m * n));
    let (m, n, k) = (m as u32, n as u32, k as u32);
    match elem {
        KernelElem::F32 => batched_matmul::launch::<f32, R>(client, count, dim, args.0, args.1, args.2, m, n, k, TILE),
        KernelElem::F16 => {
            batched_matmul::launch::<half::f16, R>(client, count, dim, args.0, args.1, args.2, m, n, k, TILE)
        }
        KernelElem::BF16 => {
            batched_matmul::launch::<half::bf16, R>(client, count, dim, args.0, args.1, args.2, m, n, k, TILE)
        }
    }
    out
}
