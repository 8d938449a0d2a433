//! The sampled tokens of each block, and the selection rule on one row of block masses (the
//! contract the selection kernel implements, replayed on the host by the reference path).

use burn::tensor::{Int, Tensor, TensorData, backend::Backend};
use dit_attention_kernels::dynamic::{SelectJob, index_mask};

use crate::glue::BlockSelection;
use crate::mask::BlockLayout;
use crate::rng::SplitMix;

/// How many key blocks a query block may keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockBudget {
    /// Fewest kept blocks (before the sinks), at least 1.
    pub k_min: usize,
    /// Most kept blocks (before the sinks), at least `k_min`.
    pub k_max: usize,
    /// Leading query blocks that keep every key block, and leading key blocks every query
    /// block keeps.
    pub sinks: usize,
}

impl BlockBudget {
    /// The counts for `nkb` key blocks: `ceil(ratio * nkb)`, at least one block.
    pub fn new(nkb: usize, min_ratio: f64, max_ratio: f64, sinks: usize) -> Self {
        // Less a hair: `0.14 * 50` is 7.000000000000001 in f64, and its ceiling must be 7.
        let count = |r: f64| (((r * nkb as f64) - 1e-9).ceil() as usize).clamp(1, nkb.max(1));
        let k_min = count(min_ratio);
        Self { k_min, k_max: count(max_ratio).max(k_min), sinks }
    }
}

/// The kept key blocks of query block `query_block`, ascending, from its masses.
///
/// Each key block `j` gets the rank key `(bits(m_j) & !mask) | (mask - j)`, `m_j` its mass as
/// an f32 (0 where NaN or not positive) and `mask = 2P - 1` for `P` = the block count rounded up
/// to a power of two: key blocks are ranked by key, descending, that is by mass with its low
/// bits cleared (masses within about `2^(log2(P) - 22)` of each other, relatively, count as
/// equal), the lower index first where those agree. `cum[r]` = the masses of ranks `0..=r`
/// summed in f32 by the rounds of an inclusive scan (`s = 1, 2, 4, ...`, each `c[r] += c[r -
/// s]` on the previous round's values), `total` = the last of them; `k` = one more than the
/// number of ranks with `cum[r] < tau * total`, at most every block (the smallest count reaching
/// `tau` where the sums rise), clamped to `[k_min, k_max]`; the first `k` ranks are kept, and
/// every key block `< sinks`. A query block `< sinks` keeps every key block.
pub fn select_blocks(masses: &[f32], tau: f32, budget: BlockBudget, query_block: usize) -> Vec<u32> {
    // NaN, -0 and below count as 0, as in the kernel.
    let masses: Vec<f32> = masses.iter().map(|&m| if m > 0.0 { m } else { 0.0 }).collect();
    let n = masses.len();
    let mask = index_mask(n);
    let key = |j: usize| (masses[j].to_bits() & !mask) | (mask - j as u32);
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&j| std::cmp::Reverse(key(j)));
    let cum = scan_rounds(order.iter().map(|&j| masses[j]).collect());
    let target = tau * cum.last().copied().unwrap_or(0.0);
    // Counted, as in the kernel: the scan's sums need not rise at the last bit.
    let mut k = (cum.iter().filter(|&&c| c < target).count() + 1).min(n);
    // `k_max` wins over `k_min`, as in the kernel.
    k = k.max(budget.k_min).min(budget.k_max);
    if query_block < budget.sinks {
        k = n;
    }
    let mut keep = vec![false; n];
    for &j in &order[..k.min(n)] {
        keep[j] = true;
    }
    (0..n).filter(|&j| keep[j] || j < budget.sinks).map(|j| j as u32).collect()
}

/// Inclusive prefix sums in the order the selection kernel adds: rounds `s = 1, 2, 4, ...`,
/// each `c[r] += c[r - s]` for `r >= s` on the previous round's values (a round with `s` past
/// the length changes nothing, so the kernel's padding to a power of two does not show).
pub(crate) fn scan_rounds(mut c: Vec<f32>) -> Vec<f32> {
    let mut s = 1;
    while s < c.len() {
        let prev = c.clone();
        for r in s..c.len() {
            c[r] = prev[r] + prev[r - s];
        }
        s *= 2;
    }
    c
}

/// `samples` positions (sequence indices) per block of `blocks`, block after block: distinct
/// and ascending, drawn uniformly from the seed (Floyd's algorithm), or every token in turn
/// (repeating) for a block shorter than `samples`.
pub fn sample_positions(blocks: &BlockLayout, samples: usize, seed: u64) -> Vec<usize> {
    let mut rng = SplitMix::new(seed);
    let mut out = Vec::with_capacity(blocks.len() * samples);
    for b in 0..blocks.len() {
        let range = blocks.range(b);
        let len = range.len();
        if len <= samples {
            out.extend((0..samples).map(|i| range.start + i % len));
            continue;
        }
        // A few picks per block: a linear search beats a set (this runs before every estimate).
        let first = out.len();
        for j in len - samples..len {
            let t = range.start + rng.below(j + 1);
            let picked = &out[first..];
            out.push(if picked.contains(&t) { range.start + j } else { t });
        }
        out[first..].sort_unstable();
    }
    out
}

/// The selection by a host replay of [`select_blocks`] (any backend): `masses [bh, nqb, nkb]`.
pub(crate) fn select_reference<B: Backend>(masses: Tensor<B, 3>, job: &SelectJob) -> BlockSelection<B> {
    let SelectJob { bh, nqb, nkb, .. } = *job;
    let device = masses.device();
    let values: Vec<f32> = masses.clone().into_data().iter::<f32>().collect();
    let budget = BlockBudget { k_min: job.k_min, k_max: job.k_max, sinks: job.sinks };
    let (mut counts, mut indices) = (Vec::with_capacity(bh * nqb), Vec::with_capacity(bh * nqb * nkb));
    for (r, row) in values.chunks(nkb).enumerate() {
        let kept = select_blocks(row, job.tau, budget, r % nqb);
        counts.push(kept.len() as i64);
        indices.extend(kept.iter().map(|&j| j as i64));
        indices.extend(std::iter::repeat_n(nkb as i64, nkb - kept.len()));
    }
    BlockSelection {
        masses,
        counts: Tensor::<B, 1, Int>::from_data(TensorData::new(counts, [bh * nqb]), &device),
        indices: Tensor::<B, 2, Int>::from_data(TensorData::new(indices, [bh * nqb, nkb]), &device),
    }
}
