//! The unit metric the matching compares, in one pass over the keys (and values): rows
//! `concat(a, ||a||, b, ||b||)` (ToMe's default metric with `a` = keys, `b` = values) or `a`
//! alone, divided by their norm (floored at 1e-6) and zero-padded.

use cubecl::prelude::*;

/// `out [rows, width]` from `a [rows, ca]` and, when `with_b`, `b [rows, cb]`. A cube of `units`
/// units takes `tile` rows (`tile` divides `units`): it copies them into shared memory with
/// coalesced loads (as f32), sums their squares with `units / tile` units per row, then writes
/// the normalised rows with coalesced stores. The grid has at least `ceil(rows / tile)` cubes.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn metric_unit_rows<F: Float>(
    a: &Array<F>,
    b: &Array<F>,
    out: &mut Array<F>,
    rows: u32,
    #[comptime] ca: usize,
    #[comptime] cb: usize,
    #[comptime] width: usize,
    #[comptime] with_b: bool,
    #[comptime] tile: usize,
    #[comptime] units: usize,
) {
    let u = UNIT_POS as usize;
    let n_rows = rows as usize;
    // Linear cube index: the grid is two-dimensional past 65,535 cubes (extra cubes find no rows).
    let row0 = CUBE_POS * tile;
    let mut cb_used = 0usize;
    if comptime![with_b] {
        cb_used = cb;
    }
    let mut da = SharedMemory::<f32>::new(tile * ca);
    let mut db = SharedMemory::<f32>::new(comptime![tile * cb.max(1)]);
    let mut part_a = SharedMemory::<f32>::new(units);
    let mut part_b = SharedMemory::<f32>::new(units);
    let mut stats = SharedMemory::<f32>::new(tile * 3);

    // The tile's rows, contiguous in `a` (and `b`): consecutive units read consecutive elements.
    let mut idx = u;
    while idx < tile * ca {
        let mut x = 0.0f32;
        if row0 * ca + idx < n_rows * ca {
            x = f32::cast_from(a[row0 * ca + idx]);
        }
        da[idx] = x;
        idx += units;
    }
    if comptime![with_b] {
        let mut idx = u;
        while idx < tile * cb {
            let mut x = 0.0f32;
            if row0 * cb + idx < n_rows * cb {
                x = f32::cast_from(b[row0 * cb + idx]);
            }
            db[idx] = x;
            idx += units;
        }
    }
    sync_cube();

    // Partial sums of squares: `parts` units per row, strided over its columns.
    let parts = units / tile;
    let r = u / parts;
    let p = u % parts;
    let mut sa = 0.0f32;
    let mut c = p;
    while c < ca {
        let x = da[r * ca + c];
        sa += x * x;
        c += parts;
    }
    let mut sb = 0.0f32;
    let mut c = p;
    while c < cb_used {
        let x = db[r * cb + c];
        sb += x * x;
        c += parts;
    }
    part_a[u] = sa;
    part_b[u] = sb;
    sync_cube();
    if u < tile {
        let mut ta = 0.0f32;
        let mut tb = 0.0f32;
        for q in 0..parts {
            ta += part_a[u * parts + q];
            tb += part_b[u * parts + q];
        }
        // The metric row's squared norm: ||a||^2, or 2 (||a||^2 + ||b||^2) with the norm columns.
        let mut total = ta;
        if comptime![with_b] {
            total = 2.0f32 * (ta + tb);
        }
        stats[u * 3] = f32::sqrt(ta);
        stats[u * 3 + 1] = f32::sqrt(tb);
        stats[u * 3 + 2] = 1.0f32 / f32::max(f32::sqrt(total), 1.0e-6f32);
    }
    sync_cube();

    // The normalised rows, consecutive units writing consecutive elements; the row and column
    // of `idx` advance without a division per element.
    let mut idx = u;
    let mut r = u / width;
    let mut c = u % width;
    while idx < tile * width {
        if row0 + r < n_rows {
            let mut x = 0.0f32;
            if c < ca {
                x = da[r * ca + c];
            }
            if comptime![with_b] {
                if c == ca {
                    x = stats[r * 3];
                }
                if c > ca && c <= ca + cb {
                    x = db[r * cb + c - ca - 1];
                }
                if c == ca + cb + 1 {
                    x = stats[r * 3 + 1];
                }
            }
            out[row0 * width + idx] = F::cast_from(x * stats[r * 3 + 2]);
        }
        idx += units;
        c += units;
        while c >= width {
            c -= width;
            r += 1;
        }
    }
}
