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

/// A cube-wide prefix sum: this unit's inclusive prefix and the cube's total.
#[derive(CubeType)]
pub struct CubeScan {
    /// Sum of the values of units `0..=UNIT_POS`.
    pub inclusive: u32,
    /// Sum over the cube.
    pub total: u32,
}

/// [`inclusive_scan`] and the total. With `planes` (plane operations, and `CUBE_DIM` a
/// multiple of the plane size) each plane scans by shuffles and only the planes' totals go
/// through `buf`: two cube syncs instead of `2 log2(CUBE_DIM) + 2`. Every unit of the cube must
/// call it.
#[cube]
pub fn cube_scan(value: u32, buf: &mut SharedMemory<u32>, #[comptime] planes: bool) -> CubeScan {
    if comptime![planes] {
        let incl = plane_inclusive_sum(value);
        let plane = (UNIT_POS / PLANE_DIM) as usize;
        let n_planes = (CUBE_DIM / PLANE_DIM) as usize;
        // Earlier readers of `buf` finish before it is overwritten.
        sync_cube();
        if UNIT_POS_PLANE == PLANE_DIM - 1 {
            buf[plane] = incl;
        }
        sync_cube();
        let mut before = 0u32;
        let mut total = 0u32;
        for p in 0..n_planes {
            let x = buf[p];
            if p < plane {
                before += x;
            }
            total += x;
        }
        CubeScan { inclusive: before + incl, total }
    } else {
        let inclusive = inclusive_scan(value, buf);
        CubeScan { inclusive, total: buf[CUBE_DIM as usize - 1] }
    }
}
