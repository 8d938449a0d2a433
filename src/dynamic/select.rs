//! The sampled tokens of each block, and the selection rule on one row of block masses (the
//! contract the selection kernel implements, replayed on the host by the reference path).

use burn::tensor::{Int, Tensor, TensorData, backend::Backend};
use dit_attention_kernels::dynamic::{SelectJob, blocks_per_lane, index_mask};

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
/// equal), the lower index first where those agree. The mass of a set of key blocks is the
/// selection kernel's fixed f32 sum: 32 lanes, lane `l` adding the members among blocks `l * c ..
/// (l + 1) * c` (`c = ceil(n / 32)`) in order from 0, then five butterfly rounds pairing lanes `l`
/// and `l ^ w` (`w` = 16, 8, 4, 2, 1). `k` = the fewest top ranks whose mass reaches `tau` times
/// the mass of every block (at least 1; every block if none does), clamped to `[k_min, k_max]`;
/// the first `k` ranks are kept, and every key block `< sinks`. A query block `< sinks` keeps
/// every key block.
pub fn select_blocks(masses: &[f32], tau: f32, budget: BlockBudget, query_block: usize) -> Vec<u32> {
    // NaN, -0 and below count as 0, as in the kernel.
    let masses: Vec<f32> = masses.iter().map(|&m| if m > 0.0 { m } else { 0.0 }).collect();
    let n = masses.len();
    let mask = index_mask(n);
    let key = |j: usize| (masses[j].to_bits() & !mask) | (mask - j as u32);
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&j| std::cmp::Reverse(key(j)));
    // The mass of the top `c` ranks (it only grows with `c`).
    let top = |c: usize| {
        let mut member = vec![0.0f32; n];
        for &j in &order[..c] {
            member[j] = masses[j];
        }
        lane_sum(&member)
    };
    let target = tau * lane_sum(&masses);
    // The fewest ranks reaching the target, by bisection over the count.
    let (mut lo, mut hi) = (0, n);
    if top(n) < target {
        lo = n;
    }
    while lo < hi {
        let mid = (lo + hi) / 2;
        if top(mid) >= target { hi = mid } else { lo = mid + 1 }
    }
    // `k_max` wins over `k_min`, as in the kernel.
    let mut k = lo.max(1).min(n).max(budget.k_min).min(budget.k_max);
    if query_block < budget.sinks {
        k = n;
    }
    let mut keep = vec![false; n];
    for &j in &order[..k.min(n)] {
        keep[j] = true;
    }
    (0..n).filter(|&j| keep[j] || j < budget.sinks).map(|j| j as u32).collect()
}

/// The selection kernel's sum of one row's values (zeros for blocks outside a set): 32 lanes,
/// lane `l` adding blocks `l * c .. (l + 1) * c` (`c` = [`blocks_per_lane`]) in order from 0, then
/// five butterfly rounds (`s_l + s_(l ^ w)`, `w` = 16, 8, 4, 2, 1), every lane ending equal.
pub(crate) fn lane_sum(values: &[f32]) -> f32 {
    let c = blocks_per_lane(values.len());
    let mut lanes = [0.0f32; 32];
    for (l, s) in lanes.iter_mut().enumerate() {
        for &x in values.iter().skip(l * c).take(c) {
            *s += x;
        }
    }
    for w in [16, 8, 4, 2, 1] {
        let prev = lanes;
        for (l, s) in lanes.iter_mut().enumerate() {
            *s = prev[l] + prev[l ^ w];
        }
    }
    lanes[0]
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
