//! The r-th largest of a row of f32 values, exactly, by a bisection on an order-preserving
//! key of their bits (32 cube-wide counts, no sort): shared by the token-merge plan and the
//! head statistics.

use cubecl::prelude::*;

use crate::merge::scan::{cube_scan, cube_sum};

/// An order-preserving map of f32 onto u32 (larger float, larger key; NaN above +inf).
#[cube]
pub fn order_key(x: f32) -> u32 {
    let bits = u32::reinterpret(x);
    let mut key = bits | 0x8000_0000u32;
    if bits >= 0x8000_0000u32 {
        key = 0xFFFF_FFFFu32 - bits;
    }
    key
}

/// The f32 whose [`order_key`] is `key`.
#[cube]
pub fn key_value(key: u32) -> f32 {
    let mut bits = key & 0x7FFF_FFFFu32;
    if key < 0x8000_0000u32 {
        bits = 0xFFFF_FFFFu32 - key;
    }
    f32::reinterpret(bits)
}

/// The key of the `r`-th largest of `values[base..base + len]` (the largest `t` with at least
/// `r` keys `>= t`; `u32::MAX` when `r` is 0). Every unit of the cube must call it.
#[cube]
pub fn rth_largest_key(values: &Array<f32>, base: usize, len: usize, r: u32, buf: &mut SharedMemory<u32>) -> u32 {
    let u = UNIT_POS as usize;
    let units = CUBE_DIM as usize;
    let mut lo = 0u32;
    let mut hi = 0xFFFF_FFFFu32;
    if r == 0 {
        lo = hi;
    }
    while lo < hi {
        let diff = hi - lo;
        let mid = lo + diff / 2 + (diff & 1);
        let mut c = 0u32;
        let mut s = u;
        while s < len {
            if order_key(values[base + s]) >= mid {
                c += 1;
            }
            s += units;
        }
        if cube_sum(c, buf) >= r {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    lo
}

/// [`rth_largest_key`] over keys each unit holds in registers: `keys[i]` is the [`order_key`]
/// of value `i * CUBE_DIM + UNIT_POS`, 0 past the row (no key is counted at 0: the bisection
/// only asks for keys `>= 1`). No loads in the 32 rounds; their counts go through
/// [`cube_scan`] (by plane sums where `planes`).
#[cube]
pub fn rth_largest_cached(
    keys: &Array<u32>,
    r: u32,
    buf: &mut SharedMemory<u32>,
    #[comptime] cached: usize,
    #[comptime] planes: bool,
) -> u32 {
    let mut lo = 0u32;
    let mut hi = 0xFFFF_FFFFu32;
    if r == 0 {
        lo = hi;
    }
    while lo < hi {
        let diff = hi - lo;
        let mid = lo + diff / 2 + (diff & 1);
        let mut c = 0u32;
        #[unroll]
        for i in 0..cached {
            if keys[i] >= mid {
                c += 1;
            }
        }
        if cube_scan(c, buf, planes).total >= r {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    lo
}
