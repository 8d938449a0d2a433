//! One-dimensional rules. STA, NATTEN and Swin are separable: a pair is allowed iff it is allowed
//! along every dimension, and along one dimension the keys a query sees form an interval whose ends
//! never decrease as the query moves forward. That monotonicity lets us classify whole ranges of
//! queries against ranges of keys in O(log L), without visiting token pairs.

/// How a range of queries relates to a range of keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Coverage {
    /// No pair allowed.
    Empty,
    /// Some pairs allowed, some not.
    Partial,
    /// Every pair allowed.
    Full,
}

/// A monotone interval rule along one dimension of length `len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AxisRule {
    /// STA along one dimension: tokens grouped in tiles of `tile`, `n` tiles, a window of `k` tiles
    /// that slides to stay inside the canvas; `k >= n` covers the whole dimension.
    Tiles { len: usize, tile: usize, n: usize, k: usize },
    /// Neighbourhood attention with an odd window `w <= len`.
    Natten { len: usize, w: usize },
    /// Swin: non-overlapping windows of `w`, shifted by `shift`.
    Swin { len: usize, w: usize, shift: usize },
}

impl AxisRule {
    pub(crate) fn len(&self) -> usize {
        match *self {
            AxisRule::Tiles { len, .. } | AxisRule::Natten { len, .. } | AxisRule::Swin { len, .. } => len,
        }
    }

    /// The keys `[lo, hi]` (inclusive) allowed for query coordinate `x`.
    pub(crate) fn interval(&self, x: usize) -> (usize, usize) {
        match *self {
            AxisRule::Tiles { len, tile, n, k } => {
                if k >= n {
                    return (0, len - 1);
                }
                let half = k / 2;
                let centre = (x / tile).clamp(half, n - 1 - half);
                ((centre - half) * tile, ((centre + half + 1) * tile).min(len) - 1)
            }
            AxisRule::Natten { len, w } => {
                let half = w / 2;
                let c = x.clamp(half, len - 1 - half);
                (c - half, c + half)
            }
            AxisRule::Swin { len, w, shift } => {
                let start = (x + shift) / w * w;
                (start.saturating_sub(shift), (start + w - 1 - shift).min(len - 1))
            }
        }
    }

    pub(crate) fn allows(&self, x: usize, y: usize) -> bool {
        let (lo, hi) = self.interval(x);
        lo <= y && y <= hi
    }

    /// Allowed pairs over the whole dimension.
    pub(crate) fn count_all(&self) -> u64 {
        (0..self.len())
            .map(|x| {
                let (lo, hi) = self.interval(x);
                (hi - lo + 1) as u64
            })
            .sum()
    }

    /// Classifies queries `[x0, x1)` against keys `[y0, y1)` (both non-empty).
    pub(crate) fn coverage(&self, x0: usize, x1: usize, y0: usize, y1: usize) -> Coverage {
        debug_assert!(x0 < x1 && y0 < y1);
        // Ends never decrease with x: the first query bounds `hi` from below, the last bounds `lo`
        // from above.
        if self.interval(x1 - 1).0 <= y0 && self.interval(x0).1 >= y1 - 1 {
            return Coverage::Full;
        }
        // Smallest query whose interval reaches y0; it has the smallest `lo` of all candidates.
        let (mut a, mut b) = (x0, x1);
        while a < b {
            let m = a + (b - a) / 2;
            if self.interval(m).1 >= y0 { b = m } else { a = m + 1 }
        }
        if a < x1 && self.interval(a).0 < y1 { Coverage::Partial } else { Coverage::Empty }
    }

    /// Smallest and largest key any query of `[x0, x1)` may see.
    pub(crate) fn reach(&self, x0: usize, x1: usize) -> (usize, usize) {
        (self.interval(x0).0, self.interval(x1 - 1).1)
    }
}

/// Allowed pairs of a Euclidean ball of squared radius `r2` (strict) on a canvas of `dims`:
/// the sum over offsets inside the ball of the number of queries whose key stays on the canvas.
pub(crate) fn ball_pair_count(dims: [usize; 3], r2: f64) -> u64 {
    let reach = |len: usize| ((r2.sqrt().ceil() as i64) - 1).clamp(0, len as i64 - 1);
    let (rt, rh, rw) = (reach(dims[0]), reach(dims[1]), reach(dims[2]));
    let mut total = 0u64;
    for dt in -rt..=rt {
        for dh in -rh..=rh {
            for dw in -rw..=rw {
                if ((dt * dt + dh * dh + dw * dw) as f64) < r2 {
                    let fit = |len: usize, d: i64| (len as i64 - d.abs()).max(0) as u64;
                    total += fit(dims[0], dt) * fit(dims[1], dh) * fit(dims[2], dw);
                }
            }
        }
    }
    total
}

/// Classifies two boxes (`[lo, hi)` per dimension) under a ball of squared radius `r2`.
pub(crate) fn ball_coverage(q: &super::blocks::Box3, k: &super::blocks::Box3, r2: f64) -> Coverage {
    let (mut near, mut far) = (0u64, 0u64);
    for d in 0..3 {
        let gap = if q.hi[d] <= k.lo[d] {
            k.lo[d] - (q.hi[d] - 1)
        } else if k.hi[d] <= q.lo[d] {
            q.lo[d] - (k.hi[d] - 1)
        } else {
            0
        } as u64;
        let span = (q.hi[d] - 1).abs_diff(k.lo[d]).max((k.hi[d] - 1).abs_diff(q.lo[d])) as u64;
        near += gap * gap;
        far += span * span;
    }
    if near as f64 >= r2 {
        Coverage::Empty
    } else if (far as f64) < r2 {
        Coverage::Full
    } else {
        Coverage::Partial
    }
}
