//! One cube per (batch-head, query block): the smallest set of key blocks holding `tau` of the
//! row's block mass, clamped, plus the sink blocks.

use cubecl::prelude::*;

use crate::merge::scan::cube_scan;

/// The kept key blocks of query block `CUBE_POS_X` of batch-head `CUBE_POS_Y`, from its row of
/// `masses [bh, nqb, nkb]` (f32, contiguous).
///
/// Each key block `j` gets the rank key `(bits(m_j) & !mask) | (mask - j)`: `m_j` its mass (0
/// where NaN or not positive), `mask = 2P - 1` for `P` = `nkb` rounded up to a power of two
/// (`index_mask`). Key blocks are ranked by key, descending (a bitonic sort in shared memory;
/// with plane operations the rounds within a plane's 64 slots go through shuffles): by mass
/// with its low bits cleared, the lower index first where those agree. `cum[r]` = the
/// masses of ranks `0..=r` summed in f32 by the rounds of an inclusive scan (`c[r] += c[r - s]`
/// for s = 1, 2, 4, ..., each round reading the previous round's values), `total = cum[nkb -
/// 1]`; `k` = one more than the number of ranks with `cum[r] < tau * total`, at most `nkb` (the
/// smallest count reaching `tau` where the sums rise), clamped to `[k_min, k_max]`; the first
/// `k` ranks are kept, and so are key blocks `< sinks`; a query block `< sinks` keeps every key
/// block. `counts [bh * nqb]` and `indices [bh * nqb, nkb]` (ascending, padded with `nkb`) take
/// the kept blocks. The order is fixed so a host replay of the same masses gives the same
/// blocks. `cap` (a power of two `>= nkb`) slots of shared memory per array.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn block_select<I: Int>(
    masses: &Array<f32>,
    counts: &mut Array<I>,
    indices: &mut Array<I>,
    nqb: u32,
    nkb: u32,
    index_mask: u32,
    tau: f32,
    k_min: u32,
    k_max: u32,
    sinks: u32,
    #[comptime] units: usize,
    #[comptime] cap: usize,
    #[comptime] planes: bool,
) {
    let qb = CUBE_POS_X as usize;
    let bh = CUBE_POS_Y as usize;
    let u = UNIT_POS as usize;
    let n_k = nkb as usize;
    let row = bh * nqb as usize + qb;
    let mut keys = SharedMemory::<u32>::new(cap);
    let mut mass = SharedMemory::<f32>::new(cap);
    let mut cum = SharedMemory::<f32>::new(cap);
    let mut spare = SharedMemory::<f32>::new(cap);
    let mut flag = SharedMemory::<u32>::new(cap);
    let mut scan = SharedMemory::<u32>::new(units);

    // Real keys are at least `P`; slots past `nkb` get 0 and sort last.
    let mut kb = u;
    while kb < cap {
        let mut key = 0u32;
        let mut m = f32::new(0.0);
        if kb < n_k {
            let x = masses[row * n_k + kb];
            // NaN (a row of -inf or overflowing scores), -0 and below count as 0, as on the host.
            if x > f32::new(0.0) {
                m = x;
            }
            key = (u32::reinterpret(m) & !index_mask) | (index_mask - kb as u32);
        }
        keys[kb] = key;
        mass[kb] = m;
        flag[kb] = 0u32;
        kb += units;
    }
    sync_cube();

    // Bitonic sort of the keys, descending.
    if comptime![planes && cap == 2 * units] {
        sort_planes(&mut keys, cap);
    } else {
        sort_shared(&mut keys, units, cap);
    }

    // Running sums in rank order: an inclusive scan in rounds, `c[r] += c[r - s]` for s = 1, 2,
    // 4, ... (the fixed order the host replay follows), ping-ponging between `cum` and `spare`
    // two rounds at a time (a round with `s >= cap` only copies). Slots past `nkb` hold 0 and
    // only feed later slots.
    let mut r0 = u;
    while r0 < cap {
        let mut x = f32::new(0.0);
        if r0 < n_k {
            x = mass[(index_mask - (keys[r0] & index_mask)) as usize];
        }
        cum[r0] = x;
        r0 += units;
    }
    sync_cube();
    let mut s = 1usize;
    while s < cap {
        let mut i = u;
        while i < cap {
            let mut x = cum[i];
            if i >= s {
                x += cum[i - s];
            }
            spare[i] = x;
            i += units;
        }
        sync_cube();
        let s2 = 2 * s;
        let mut i2 = u;
        while i2 < cap {
            let mut x = spare[i2];
            if i2 >= s2 {
                x += spare[i2 - s2];
            }
            cum[i2] = x;
            i2 += units;
        }
        sync_cube();
        s *= 4;
    }
    // `k`: one more than the ranks whose running sum stays below the target (the scan's sums
    // need not be monotone at the last bit: counting, unlike a first crossing, has one answer).
    let target = tau * cum[n_k - 1];
    let mut below = 0u32;
    let mut r = u;
    while r < n_k {
        if cum[r] < target {
            below += 1u32;
        }
        r += units;
    }
    let mut k = cube_scan(below, &mut scan, planes).total + 1u32;
    if k > nkb {
        k = nkb;
    }
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
        let j = index_mask - (keys[r2] & index_mask);
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
    let offsets = cube_scan(mine, &mut scan, planes);
    let end = offsets.inclusive;
    let mut at = (end - mine) as usize;
    for c in 0..chunk {
        let j = lo + c;
        // `j < cap`: the flag read is in bounds even past the key blocks.
        if j < n_k && flag[j] == 1u32 {
            indices[row * n_k + at] = I::cast_from(j as u32);
            at += 1usize;
        }
    }
    let kept = offsets.total as usize;
    if u == 0usize {
        counts[row] = I::cast_from(kept as u32);
    }
    let mut pad = kept + u;
    while pad < n_k {
        indices[row * n_k + pad] = I::cast_from(nkb);
        pad += units;
    }
}

/// Bitonic sort of `keys` (`cap` slots, distinct keys), descending, in shared memory: for
/// `size = 2, 4, .., cap` and `stride = size / 2, .., 1`, slots `i` and `j = i | stride` (`i`
/// with that bit clear) are ordered larger first where `i & size == 0`, smaller first elsewhere.
/// Each unit takes whole pairs (pair `p` with a 0 bit inserted at the stride's position), so
/// every unit works in every round.
#[cube]
fn sort_shared(keys: &mut SharedMemory<u32>, #[comptime] units: usize, #[comptime] cap: usize) {
    let u = UNIT_POS as usize;
    let pairs = cap as u32 / 2u32;
    let mut size = 2u32;
    while size <= cap as u32 {
        let mut stride = size / 2u32;
        while stride > 0u32 {
            let mut p = u as u32;
            while p < pairs {
                let low = p & (stride - 1u32);
                let i = ((p - low) << 1u32) | low;
                let j = i | stride;
                let ki = keys[i as usize];
                let kj = keys[j as usize];
                let up = (i & size) == 0u32;
                if up != (ki > kj) {
                    keys[i as usize] = kj;
                    keys[j as usize] = ki;
                }
                p += units as u32;
            }
            sync_cube();
            stride /= 2u32;
        }
        size *= 2u32;
    }
}

/// [`sort_shared`]'s rounds with `cap = 2 * CUBE_DIM` and planes of 32: unit `u` holds slots
/// `2u` and `2u + 1` in registers, so a plane holds 64 consecutive slots and the rounds with a
/// stride below 64 go through plane shuffles (no shared memory, no cube sync); only strides of
/// 64 and more pass through `keys`. The same pairs in the same order as [`sort_shared`].
#[cube]
fn sort_planes(keys: &mut SharedMemory<u32>, #[comptime] cap: usize) {
    let e0 = 2 * UNIT_POS;
    let lane = UNIT_POS_PLANE;
    let mut x0 = keys[e0 as usize];
    let mut x1 = keys[e0 as usize + 1];
    let mut size = 2u32;
    while size <= cap as u32 {
        let up = (e0 & size) == 0u32;
        let mut stride = size / 2u32;
        if stride >= 64u32 {
            keys[e0 as usize] = x0;
            keys[e0 as usize + 1] = x1;
            sync_cube();
            while stride >= 64u32 {
                // One pair per unit (`cap / 2` pairs).
                let p = UNIT_POS;
                let low = p & (stride - 1u32);
                let i = ((p - low) << 1u32) | low;
                let j = i | stride;
                let ki = keys[i as usize];
                let kj = keys[j as usize];
                if ((i & size) == 0u32) != (ki > kj) {
                    keys[i as usize] = kj;
                    keys[j as usize] = ki;
                }
                sync_cube();
                stride /= 2u32;
            }
            x0 = keys[e0 as usize];
            x1 = keys[e0 as usize + 1];
        }
        // Strides 32 .. 2: the partner slot `e ^ stride` is lane `lane ^ stride / 2`'s slot
        // of the same parity. The lower slot of a pair keeps the larger key where `up`.
        while stride >= 2u32 {
            let half = stride / 2u32;
            let p0 = plane_shuffle_xor(x0, half);
            let p1 = plane_shuffle_xor(x1, half);
            let larger = ((lane & half) == 0u32) == up;
            if larger != (x0 > p0) {
                x0 = p0;
            }
            if larger != (x1 > p1) {
                x1 = p1;
            }
            stride = half;
        }
        // Stride 1: the unit's own two slots.
        let a = x0;
        let b = x1;
        if up != (a > b) {
            x0 = b;
            x1 = a;
        }
        size *= 2u32;
    }
    // Earlier readers of `keys` (the last shared round's read-back) are done before it is written.
    sync_cube();
    keys[e0 as usize] = x0;
    keys[e0 as usize + 1] = x1;
    sync_cube();
}
