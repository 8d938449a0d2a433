//! One cube per (batch-head, query block): the smallest set of key blocks holding `tau` of the
//! row's block mass, clamped, plus the sink blocks.

use cubecl::prelude::*;

use crate::merge::scan::inclusive_scan;

/// The kept key blocks of query block `CUBE_POS_X` of batch-head `CUBE_POS_Y`, from its row of
/// `masses [bh, nqb, nkb]` (f32, contiguous).
///
/// Key blocks ranked by mass, descending, the lower index first on ties (a bitonic sort in
/// shared memory; a NaN mass counts as 0); `cum[r]` = the masses of ranks `0..=r` summed in rank
/// order in f32, `total = cum[nkb - 1]`; `k` = the smallest count with `cum[k - 1] >= tau *
/// total` (`nkb` if none), clamped to `[k_min, k_max]`; the first `k` ranks are kept, and so are
/// key blocks `< sinks`; a query block `< sinks` keeps every key block. `counts [bh * nqb]` and
/// `indices [bh * nqb, nkb]` (ascending, padded with `nkb`) take the kept blocks. The summation
/// order is fixed so a host replay of the same masses gives the same blocks. `cap` (a power of
/// two `>= nkb`) slots of shared memory per array.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn block_select<I: Int>(
    masses: &Array<f32>,
    counts: &mut Array<I>,
    indices: &mut Array<I>,
    nqb: u32,
    nkb: u32,
    tau: f32,
    k_min: u32,
    k_max: u32,
    sinks: u32,
    #[comptime] units: usize,
    #[comptime] cap: usize,
) {
    let qb = CUBE_POS_X as usize;
    let bh = CUBE_POS_Y as usize;
    let u = UNIT_POS as usize;
    let n_k = nkb as usize;
    let row = bh * nqb as usize + qb;
    let mut key_m = SharedMemory::<f32>::new(cap);
    let mut key_i = SharedMemory::<u32>::new(cap);
    let mut cum = SharedMemory::<f32>::new(cap);
    let mut flag = SharedMemory::<u32>::new(cap);
    let mut scan = SharedMemory::<u32>::new(units);
    let mut kk = SharedMemory::<u32>::new(1usize);

    // Slots past `nkb` sort last (mass -1).
    let mut kb = u;
    while kb < cap {
        let mut m = f32::new(-1.0);
        if kb < n_k {
            m = masses[row * n_k + kb];
            // A NaN mass (a row of -inf or overflowing scores) counts as 0, as on the host.
            if f32::is_nan(m) {
                m = 0.0f32;
            }
        }
        key_m[kb] = m;
        key_i[kb] = kb as u32;
        flag[kb] = 0u32;
        kb += units;
    }
    sync_cube();

    // Bitonic sort of (mass descending, index ascending).
    let mut size = 2u32;
    while size <= cap as u32 {
        let mut stride = size / 2u32;
        while stride > 0u32 {
            let mut i = u as u32;
            while i < cap as u32 {
                let j = i ^ stride;
                if j > i {
                    let mi = key_m[i as usize];
                    let mj = key_m[j as usize];
                    let ii = key_i[i as usize];
                    let ij = key_i[j as usize];
                    let i_first = mi > mj || (mi == mj && ii < ij);
                    let up = (i & size) == 0u32;
                    if up != i_first {
                        key_m[i as usize] = mj;
                        key_m[j as usize] = mi;
                        key_i[i as usize] = ij;
                        key_i[j as usize] = ii;
                    }
                }
                i += units as u32;
            }
            sync_cube();
            stride /= 2u32;
        }
        size *= 2u32;
    }

    // Running sums in rank order (the fixed order a host replay uses).
    if u == 0usize {
        let mut acc = 0.0f32;
        for r in 0..n_k {
            acc += key_m[r];
            cum[r] = acc;
        }
        kk[0] = nkb;
    }
    sync_cube();
    let target = tau * cum[n_k - 1];
    let mut r = u;
    while r < n_k {
        let mut before = f32::new(-1.0);
        if r > 0usize {
            before = cum[r - 1];
        }
        if cum[r] >= target && before < target {
            kk[0] = r as u32 + 1u32;
        }
        r += units;
    }
    sync_cube();
    let mut k = kk[0];
    if k < k_min {
        k = k_min;
    }
    if k > k_max {
        k = k_max;
    }
    if (qb as u32) < sinks {
        k = nkb;
    }
    let mut r2 = u;
    while r2 < n_k {
        let j = key_i[r2];
        let mut keep = 0u32;
        if (r2 as u32) < k || j < sinks {
            keep = 1u32;
        }
        flag[j as usize] = keep;
        r2 += units;
    }
    sync_cube();

    // Kept blocks in ascending order: a contiguous chunk per unit, offsets from a scan.
    let chunk = cap / units;
    let lo = u * chunk;
    let mut mine = 0u32;
    for c in 0..chunk {
        if lo + c < n_k {
            mine += flag[lo + c];
        }
    }
    let end = inclusive_scan(mine, &mut scan);
    let mut at = (end - mine) as usize;
    for c in 0..chunk {
        let j = lo + c;
        // `j < cap`: the flag read is in bounds even past the key blocks.
        if j < n_k && flag[j] == 1u32 {
            indices[row * n_k + at] = I::cast_from(j as u32);
            at += 1usize;
        }
    }
    let kept = scan[units - 1] as usize;
    if u == 0usize {
        counts[row] = I::cast_from(kept as u32);
    }
    let mut pad = kept + u;
    while pad < n_k {
        indices[row * n_k + pad] = I::cast_from(nkb);
        pad += units;
    }
}
