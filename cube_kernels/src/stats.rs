//! Head statistics of Combined attention: the mass held by the largest entries of each row.

use cubecl::prelude::*;
use cubecl::server::Handle;

use crate::array_arg;
use crate::merge::scan::cube_sum;
use crate::rank::{order_key, rth_largest_key};

/// Units per cube.
const UNITS: usize = 256;

/// Sum of the `m` largest of row `CUBE_POS_X` of `x [rows, n]` (f32, contiguous) into
/// `out[row]`: the `m`-th largest found exactly ([`rth_largest_key`]), then the values above it
/// plus as many copies of it as the count needs (ties counted once each).
#[cube(launch)]
pub fn top_sum_rows(x: &Array<f32>, out: &mut Array<f32>, n: u32, m: u32, #[comptime] units: usize) {
    let row = CUBE_POS_X as usize;
    let u = UNIT_POS as usize;
    let len = n as usize;
    let base = row * len;
    let mut buf = SharedMemory::<u32>::new(units);
    let mut sums = SharedMemory::<f32>::new(units);
    let key = rth_largest_key(x, base, len, m, &mut buf);
    let mut above = 0u32;
    let mut sum = 0.0f32;
    let mut at = 0.0f32;
    let mut s = u;
    while s < len {
        let v = x[base + s];
        let k = order_key(v);
        if k > key {
            above += 1;
            sum += v;
        }
        if k == key {
            at = v;
        }
        s += units;
    }
    let ties = m - cube_sum(above, &mut buf);
    // The value at the threshold, from any unit that holds it; then the row's sum.
    sums[u] = f32::new(0.0);
    sync_cube();
    if order_key(at) == key {
        sums[0] = at;
    }
    sync_cube();
    let value = sums[0];
    sync_cube();
    sums[u] = sum;
    sync_cube();
    let mut half = CUBE_DIM as usize / 2;
    while half > 0 {
        if u < half {
            sums[u] += sums[u + half];
        }
        sync_cube();
        half /= 2;
    }
    if u == 0 {
        out[row] = sums[0] + f32::cast_from(ties) * value;
    }
}

/// Launches [`top_sum_rows`] over `rows` rows of `n` contiguous f32 values; `1 <= m <= n`,
/// `rows <= 65,535` (checked by the caller). Returns `[rows]` f32 sums.
pub fn launch_top_sum<R: Runtime>(client: &ComputeClient<R>, x: Handle, rows: usize, n: usize, m: usize) -> Handle {
    let out = client.empty(rows * size_of::<f32>());
    top_sum_rows::launch::<R>(
        client,
        CubeCount::Static(rows as u32, 1, 1),
        CubeDim::new_1d(UNITS as u32),
        array_arg(&x, rows * n),
        array_arg(&out, rows),
        n as u32,
        m as u32,
        UNITS,
    );
    out
}
