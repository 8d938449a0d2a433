//! Pieces both forward kernels share: cooperative row loads into shared memory and the final
//! write of one output row and its LSE.

use cubecl::prelude::*;

/// Loads `rows x dim` elements of `src` (rows `start..start + rows` of the sequence whose first
/// row is `base`) into `dst`, all `threads` units of the cube together; rows at or past `end`
/// are zero-filled.
#[cube]
#[allow(clippy::too_many_arguments)]
pub fn load_rows<F: Float>(
    src: &Array<F>,
    dst: &mut SharedMemory<F>,
    base: usize,
    start: usize,
    end: usize,
    #[comptime] rows: usize,
    #[comptime] dim: usize,
    #[comptime] threads: usize,
) {
    let loads = (rows * dim).div_ceil(threads);
    for it in 0..loads {
        let idx = it * threads + UNIT_POS as usize;
        if idx < rows * dim {
            let r = start + idx / dim;
            let mut val = F::new(0.0);
            if r < end {
                val = src[(base + r) * dim + idx % dim];
            }
            dst[idx] = val;
        }
    }
}

/// Writes `acc / l` as output row `pos` and `m + ln(l)` as its LSE; a row that saw no key
/// (`l == 0`) gets zeros and `empty_lse`.
#[cube]
#[allow(clippy::too_many_arguments)]
pub fn write_row<F: Float>(
    out: &mut Array<F>,
    lse: &mut Array<f32>,
    acc: &Array<f32>,
    m: f32,
    l: f32,
    pos: usize,
    empty_lse: f32,
    #[comptime] value_dim: usize,
) {
    let out_base = pos * value_dim;
    if l > 0.0 {
        for x in 0..value_dim {
            out[out_base + x] = F::cast_from(acc[x] / l);
        }
        lse[pos] = m + f32::ln(l);
    } else {
        for x in 0..value_dim {
            out[out_base + x] = F::new(0.0);
        }
        lse[pos] = empty_lse;
    }
}
