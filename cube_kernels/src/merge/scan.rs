//! Cube-wide reductions over one `u32` per unit (shared memory only: lavapipe has no plane ops).

use cubecl::prelude::*;

/// Inclusive prefix sum of `value` over the units of the cube (`CUBE_DIM` entries of `buf`);
/// every unit gets its own prefix, and `buf[CUBE_DIM - 1]` holds the total until the next call.
/// Every unit of the cube must call it (it synchronises).
#[cube]
pub fn inclusive_scan(value: u32, buf: &mut SharedMemory<u32>) -> u32 {
    let u = UNIT_POS as usize;
    let n = CUBE_DIM as usize;
    // Earlier readers of `buf` (the previous total) finish before it is overwritten.
    sync_cube();
    buf[u] = value;
    sync_cube();
    let mut offset = 1usize;
    while offset < n {
        let mut add = 0u32;
        if u >= offset {
            add = buf[u - offset];
        }
        sync_cube();
        buf[u] += add;
        sync_cube();
        offset *= 2;
    }
    buf[u]
}

/// Sum of `value` over the units of the cube (every unit gets it).
#[cube]
pub fn cube_sum(value: u32, buf: &mut SharedMemory<u32>) -> u32 {
    inclusive_scan(value, buf);
    buf[CUBE_DIM as usize - 1]
}
