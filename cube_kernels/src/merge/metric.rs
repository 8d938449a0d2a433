//! The unit metric the matching compares, in one pass over the keys (and values): rows
//! `concat(a, ||a||, b, ||b||)` (ToMe's default metric with `a` = keys, `b` = values) or `a`
//! alone, divided by their norm (floored at 1e-6) and zero-padded.

use cubecl::prelude::*;

/// `out [rows, width]` from `a [rows, ca]` and, when `with_b`, `b [rows, cb]`. A cube of `units`
/// units takes `tile` rows (`tile` divides `units`): it copies them into shared memory with
/// coalesced loads (as f32; rows [`padded`] to an odd stride, so the units summing one column
/// of consecutive rows hit distinct banks), sums their squares with `units / tile` units per
/// row, then writes the normalised rows with coalesced stores. The grid has at least
/// `ceil(rows / tile)` cubes.
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
    let sa_ = comptime![padded(ca)];
    let sb_ = comptime![padded(cb)];
    let mut da = SharedMemory::<f32>::new(tile * sa_);
    let mut db = SharedMemory::<f32>::new(comptime![tile * sb_.max(1)]);
    let mut part_a = SharedMemory::<f32>::new(units);
    let mut part_b = SharedMemory::<f32>::new(units);
    let mut stats = SharedMemory::<f32>::new(tile * 3);

    // The tile's rows, contiguous in `a` (and `b`): consecutive units read consecutive elements.
    // The loops unroll (comptime trip counts) so every load is in flight before the first
    // store to shared memory; a tile's ragged end reads the last element again (clamped, not
    // a select, which would make each load wait) and those rows are never written.
    load_rows::<F>(a, &mut da, row0 * ca, n_rows * ca, tile, ca, sa_, units);
    if comptime![with_b] {
        load_rows::<F>(b, &mut db, row0 * cb, n_rows * cb, tile, cb, sb_, units);
    }
    sync_cube();

    // Partial sums of squares: `parts` units per row, strided over its columns; consecutive
    // units take consecutive rows.
    let parts = units / tile;
    let r = u % tile;
    let p = u / tile;
    let mut sa = 0.0f32;
    let mut c = p;
    while c < ca {
        let x = da[r * sa_ + c];
        sa += x * x;
        c += parts;
    }
    let mut sb = 0.0f32;
    let mut c = p;
    while c < cb_used {
        let x = db[r * sb_ + c];
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
            ta += part_a[q * tile + u];
            tb += part_b[q * tile + u];
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

    // The normalised rows in unrolled passes without per-element selects: the `a` part, the
    // `b` part, then the rest of each row (the two norm columns, the zero padding).
    // Consecutive units write consecutive columns of a row.
    write_part::<F>(&da, &stats, out, row0, n_rows, 0usize, tile, ca, sa_, width, units);
    if comptime![with_b] {
        write_part::<F>(&db, &stats, out, row0, n_rows, ca + 1, tile, cb, sb_, width, units);
    }
    let rest = comptime![if with_b { width - ca - cb } else { width - ca }];
    #[unroll]
    for it in 0..(tile * rest).div_ceil(units) {
        let idx = it * units + u;
        let r = idx / rest;
        let k = idx % rest;
        if idx < tile * rest && row0 + r < n_rows {
            // Without b: columns ca.. are padding. With b: k = 0 is column ca (||a||), k >= 1
            // is column ca + cb + k (k = 1: ||b||, then padding).
            let mut x = 0.0f32;
            let mut col = ca + k;
            if comptime![with_b] {
                if k == 0 {
                    x = stats[r * 3];
                } else {
                    col = ca + cb + k;
                    if k == 1 {
                        x = stats[r * 3 + 1];
                    }
                }
            }
            out[(row0 + r) * width + col] = F::cast_from(x * stats[r * 3 + 2]);
        }
    }
}

/// Writes `rows` rows of `len` values of `from` (row stride `stride`), each times its row's
/// scale (`stats[3 r + 2]`), into `out` rows `row0..` (stride `width`) from column `col0`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn write_part<F: Float>(
    from: &SharedMemory<f32>,
    stats: &SharedMemory<f32>,
    out: &mut Array<F>,
    row0: usize,
    n_rows: usize,
    #[comptime] col0: usize,
    #[comptime] rows: usize,
    #[comptime] len: usize,
    #[comptime] stride: usize,
    #[comptime] width: usize,
    #[comptime] units: usize,
) {
    let total = rows * len;
    #[unroll]
    for it in 0..total.div_ceil(units) {
        let idx = it * units + UNIT_POS as usize;
        let r = idx / len;
        let c = idx % len;
        if idx < total && row0 + r < n_rows {
            out[(row0 + r) * width + col0 + c] = F::cast_from(from[r * stride + c] * stats[r * 3 + 2]);
        }
    }
}

/// Shared-memory row stride for rows of `len` f32 values: the odd one of `len`, `len + 1`.
pub fn padded(len: usize) -> usize {
    len | 1
}

/// Rows `0..rows` of `len` values from `from[start..]` (contiguous) into `to` at row stride
/// `stride`, as f32; every index is clamped below `end`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn load_rows<F: Float>(
    from: &Array<F>,
    to: &mut SharedMemory<f32>,
    start: usize,
    end: usize,
    #[comptime] rows: usize,
    #[comptime] len: usize,
    #[comptime] stride: usize,
    #[comptime] units: usize,
) {
    let total = rows * len;
    #[unroll]
    for it in 0..total.div_ceil(units) {
        let idx = it * units + UNIT_POS as usize;
        let at = usize::min(start + idx, end - 1);
        let to_at = (idx / len) * stride + idx % len;
        if idx < total {
            to[to_at] = f32::cast_from(from[at]);
        }
    }
}
