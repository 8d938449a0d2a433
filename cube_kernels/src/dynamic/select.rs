//! One row of 32 lanes (a plane where the runtime has planes of 32) per (batch-head, query
//! block): the smallest set of key blocks holding `tau` of the row's block mass, clamped, plus
//! the sink blocks. No sort: the kept set is every key at or above a threshold, found bit by bit.

use cubecl::prelude::*;

/// Lanes per row.
pub const LANES: usize = 32;

/// The kept key blocks of query block `CUBE_POS_X * CUBE_DIM_Y + UNIT_POS_Y` of batch-head
/// `CUBE_POS_Y`, from its row of `masses [bh, nqb, nkb]` (f32, contiguous). Cube `(32, rows)`.
///
/// Each key block `j` gets the rank key `(bits(m_j) & !mask) | (mask - j)`: `m_j` its mass (0
/// where NaN or not positive), `mask = 2P - 1` for `P` = `nkb` rounded up to a power of two
/// (`index_mask`): by mass with its low bits cleared, the lower index first where those agree.
/// Lane `l` holds key blocks `l * per_lane ..` (`per_lane` = `nkb / 32` rounded up). The mass of a
/// set of key blocks is its fixed sum: each lane adds its members in ascending order from 0, then
/// five butterfly rounds (`s_l + s_(l ^ w)` for `w` = 16, 8, 4, 2, 1; f32 addition commutes, so
/// every lane gets the same bits). That sum only grows with the set, so `k` = the fewest top
/// ranks whose mass reaches `tau * total` (at least 1) is the count of keys at or above the
/// largest threshold whose keys' mass reaches it, found bit by bit from the top (32 rounds).
/// `k` is clamped to `[k_min, k_max]` (a query block `< sinks` takes every block) and, where
/// that moved it, the threshold is found again by count. Kept: keys at or above the threshold
/// and key blocks `< sinks`. `counts [bh * nqb]` and `indices [bh * nqb, nkb]` (ascending,
/// padded with `nkb`) take them. A host replay of the same masses gives the same blocks.
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
    #[comptime] per_lane: usize,
    #[comptime] planes: bool,
) {
    let qb = CUBE_POS_X * CUBE_DIM_Y + UNIT_POS_Y;
    // A whole row (plane) leaves together: no cube-wide sync follows where rows share a cube.
    if qb >= nqb {
        terminate!();
    }
    let lane = UNIT_POS_X;
    let n_k = nkb as usize;
    let row = (CUBE_POS_Y * nqb + qb) as usize;
    let first = lane as usize * per_lane;
    // Without planes the cube is this one row and the butterflies pass through shared memory.
    let mut scratch = SharedMemory::<u32>::new(LANES);

    let mut mass = Array::<f32>::new(per_lane);
    let mut key = Array::<u32>::new(per_lane);
    #[unroll]
    for i in 0..per_lane {
        let j = first + i;
        let mut m = f32::new(0.0);
        // Slots past `nkb` get key 0: every real key is at least `P`.
        let mut kj = 0u32;
        if j < n_k {
            let x = masses[row * n_k + j];
            // NaN (a row of -inf or overflowing scores), -0 and below count as 0, as on the host.
            if x > f32::new(0.0) {
                m = x;
            }
            kj = (u32::reinterpret(m) & !index_mask) | (index_mask - j as u32);
        }
        mass[i] = m;
        key[i] = kj;
    }

    let target = tau * mass_from(&mass, &key, 0u32, &mut scratch, per_lane, planes);
    let mut t = 0u32;
    for b in 0..32u32 {
        let cand = t | (0x8000_0000u32 >> b);
        if mass_from(&mass, &key, cand, &mut scratch, per_lane, planes) >= target {
            t = cand;
        }
    }
    // Threshold 1 takes every real key (only a `tau` above 1 reaches nothing).
    if t < 1u32 {
        t = 1u32;
    }
    let reached = count_from(&key, t, &mut scratch, per_lane, planes);
    let mut k = reached;
    if k < 1u32 {
        k = 1u32;
    }
    if k > nkb {
        k = nkb;
    }
    if k < k_min {
        k = k_min;
    }
    if k > k_max {
        k = k_max;
    }
    if qb < sinks {
        k = nkb;
    }
    if k != reached {
        // Keys are distinct: the largest threshold with `k` keys at or above it is the k-th key.
        t = 0u32;
        for b in 0..32u32 {
            let cand = t | (0x8000_0000u32 >> b);
            if count_from(&key, cand, &mut scratch, per_lane, planes) >= k {
                t = cand;
            }
        }
    }

    // Kept blocks in ascending order: each lane's run after the runs of the lanes before it.
    let mut mine = 0u32;
    #[unroll]
    for i in 0..per_lane {
        let j = (first + i) as u32;
        if j < nkb && (key[i] >= t || j < sinks) {
            mine += 1u32;
        }
    }
    let mut before = 0u32;
    let mut total = mine;
    let mut w = 1u32;
    while w < LANES as u32 {
        let other = partner(total, w, &mut scratch, planes);
        if (lane & w) != 0u32 {
            before += other;
        }
        total += other;
        w *= 2u32;
    }
    let mut at = row * n_k + before as usize;
    #[unroll]
    for i in 0..per_lane {
        let j = (first + i) as u32;
        if j < nkb && (key[i] >= t || j < sinks) {
            indices[at] = I::cast_from(j);
            at += 1usize;
        }
    }
    if lane == 0u32 {
        counts[row] = I::cast_from(total);
    }
    let mut pad = (total + lane) as usize;
    while pad < n_k {
        indices[row * n_k + pad] = I::cast_from(nkb);
        pad += LANES;
    }
}

/// Lane `UNIT_POS_X ^ w`'s `x`: a plane shuffle, or through `scratch` where the cube is the row.
#[cube]
fn partner(x: u32, w: u32, scratch: &mut SharedMemory<u32>, #[comptime] planes: bool) -> u32 {
    if comptime![planes] {
        plane_shuffle_xor(x, w)
    } else {
        let lane = UNIT_POS_X as usize;
        scratch[lane] = x;
        sync_cube();
        let y = scratch[lane ^ w as usize];
        // Every lane has read before the next exchange writes.
        sync_cube();
        y
    }
}

/// The mass of the keys at or above `t`: each lane's members in order, then the butterfly.
#[cube]
fn mass_from(
    mass: &Array<f32>,
    key: &Array<u32>,
    t: u32,
    scratch: &mut SharedMemory<u32>,
    #[comptime] per_lane: usize,
    #[comptime] planes: bool,
) -> f32 {
    let mut s = f32::new(0.0);
    #[unroll]
    for i in 0..per_lane {
        if key[i] >= t {
            s += mass[i];
        }
    }
    let mut w = 16u32;
    while w > 0u32 {
        s += f32::reinterpret(partner(u32::reinterpret(s), w, scratch, planes));
        w /= 2u32;
    }
    s
}

/// How many keys are at or above `t` (every lane gets the count).
#[cube]
fn count_from(
    key: &Array<u32>,
    t: u32,
    scratch: &mut SharedMemory<u32>,
    #[comptime] per_lane: usize,
    #[comptime] planes: bool,
) -> u32 {
    let mut c = 0u32;
    #[unroll]
    for i in 0..per_lane {
        if key[i] >= t {
            c += 1u32;
        }
    }
    let mut w = 16u32;
    while w > 0u32 {
        c += partner(c, w, scratch, planes);
        w /= 2u32;
    }
    c
}
