//! The sampled tokens of each block, and the selection rule on one row of block masses (the
//! contract the selection kernel implements, replayed on the host by the reference path).

use burn::tensor::{Int, Tensor, TensorData, backend::Backend};
use dit_attention_kernels::dynamic::SelectJob;

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
/// Key blocks ranked by mass (descending, the lower index first on ties); `cum[r]` = the masses
/// of ranks `0..=r` summed in rank order in f32, `total` = the last of them; `k` = the smallest
/// count with `cum[k - 1] >= tau * total` (every block if none; a NaN mass counts as 0), clamped to
/// `[k_min, k_max]`; the first `k` ranks are kept, and every key block `< sinks`. A query block
/// `< sinks` keeps every key block.
pub fn select_blocks(masses: &[f32], tau: f32, budget: BlockBudget, query_block: usize) -> Vec<u32> {
    // NaN masses count as 0, as in the kernel.
    let masses: Vec<f32> = masses.iter().map(|&m| if m.is_nan() { 0.0 } else { m }).collect();
    let n = masses.len();
    let mut order: Vec<usize> = (0..n).collect();
    // Descending mass, ascending index on ties; `total_cmp` keeps NaN rows deterministic.
    order.sort_by(|&a, &b| masses[b].total_cmp(&masses[a]).then(a.cmp(&b)));
    let cum: Vec<f32> = order
        .iter()
        .scan(0.0f32, |acc, &j| {
            *acc += masses[j];
            Some(*acc)
        })
        .collect();
    let target = tau * cum.last().copied().unwrap_or(0.0);
    let mut k = cum.iter().position(|&c| c >= target).map_or(n, |r| r + 1);
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
        let mut picked = std::collections::BTreeSet::new();
        for j in len - samples..len {
            let t = rng.below(j + 1);
            if !picked.insert(t) {
                picked.insert(j);
            }
        }
        out.extend(picked.into_iter().map(|i| range.start + i));
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
