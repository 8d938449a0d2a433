//! STA mask search (spec section 6): per `(step, layer, head)`, the cheapest candidate window whose
//! output stays within a tolerance of the best candidate's, measured against full attention on
//! calibration runs. It is an [`AttentionProbe`]: run the model densely with the search attached.

use std::collections::BTreeMap;

use burn::config::Config;
use burn::tensor::Tensor;

use super::schedule::{AttentionProbe, StaWindowSchedule};
use crate::attention::{CallPosition, SlidingTileAttention, SlidingTileAttentionConfig};
use crate::canvas::Tiling;
use crate::error::DitAttentionError;
use crate::glue::SparseAttentionBackend;
use crate::mask::{AttentionMask, PatternSpec};

/// Configuration of an [`StaSearch`].
#[derive(Config, Debug, PartialEq)]
pub struct StaSearchConfig {
    /// The STA geometry: canvas, tile, text and token order of the model's attention (its windows
    /// are ignored).
    pub base: SlidingTileAttentionConfig,
    /// Candidate windows in tiles, odd per dimension.
    pub candidates: Vec<[usize; 3]>,
    /// Steps below this run full attention and are not measured (default 0).
    #[config(default = 0)]
    pub skip_steps: usize,
    /// Tolerance relative to the head's output: a candidate qualifies when its loss is at most
    /// the best candidate's plus `tolerance * mean(O_full^2)` (default 0: the argmin, the cheapest
    /// among ties). Relative to the output, not to the best loss, which is 0 for a covering window.
    #[config(default = 0.0)]
    pub tolerance: f64,
}

impl StaSearchConfig {
    /// Validates the candidates and prepares one STA module per candidate.
    pub fn init(&self) -> crate::Result<StaSearch> {
        if self.candidates.is_empty() {
            return Err(DitAttentionError::Invalid("the STA search has no candidate windows".into()));
        }
        if !(self.tolerance.is_finite() && self.tolerance >= 0.0) {
            return Err(DitAttentionError::Invalid(format!(
                "the STA search tolerance must be finite and at least 0, got {}",
                self.tolerance
            )));
        }
        let layout = self.base.layout()?;
        // The smallest odd window covering every tile: full attention, the dense fast path.
        let full = Tiling::new(layout.canvas(), layout.tiling().tile())?.counts().map(|n| n | 1);
        let mut modules = Vec::with_capacity(self.candidates.len());
        let mut densities = Vec::with_capacity(self.candidates.len());
        for &window in &self.candidates {
            let mut config = self.base.clone();
            config.windows = vec![window];
            modules.push(config.init()?);
            densities.push(1.0 - AttentionMask::new(layout, PatternSpec::sta(window))?.sparsity(0));
        }
        Ok(StaSearch {
            config: self.clone(),
            full,
            modules,
            densities,
            losses: BTreeMap::new(),
            skipped: BTreeMap::new(),
        })
    }
}

/// Loss sums of one `(step, layer)`: `[candidate][head]`, the full output's mean square per head,
/// and how many calls were summed.
#[derive(Debug, Clone)]
struct CallLosses {
    sums: Vec<Vec<f64>>,
    energy: Vec<f64>,
    calls: usize,
}

/// The running search: feed it calibration runs (as the probe of a dense run), then
/// [`schedule`](Self::schedule).
#[derive(Debug, Clone)]
pub struct StaSearch {
    config: StaSearchConfig,
    /// The smallest odd window covering every tile (full attention).
    full: [usize; 3],
    modules: Vec<SlidingTileAttention>,
    densities: Vec<f64>,
    losses: BTreeMap<(usize, usize), CallLosses>,
    /// Heads of the `(step, layer)` calls below `skip_steps`.
    skipped: BTreeMap<(usize, usize), usize>,
}

impl StaSearch {
    /// Fraction of video pairs each candidate keeps.
    pub fn densities(&self) -> &[f64] {
        &self.densities
    }

    /// Mean loss `mean((O_p - O_full)^2)` of every candidate and head at `(step, layer)`, averaged
    /// over the calibration calls (`None` if that call was not measured).
    pub fn losses(&self, step: usize, layer: usize) -> Option<Vec<Vec<f64>>> {
        self.losses
            .get(&(step, layer))
            .map(|l| l.sums.iter().map(|heads| heads.iter().map(|s| s / l.calls as f64).collect()).collect())
    }

    /// Index of the candidate chosen from per-candidate losses of one head whose full output has
    /// mean square `energy` (sums over the same calls): the cheapest that qualifies, then the lower
    /// loss, then the first listed. `None` when no loss is a number.
    fn choose(&self, losses: &[f64], energy: f64) -> Option<usize> {
        let best = losses.iter().copied().filter(|l| !l.is_nan()).reduce(f64::min)?;
        let limit = best + self.config.tolerance * energy;
        (0..losses.len())
            .filter(|&c| losses[c] <= limit)
            .min_by(|&a, &b| self.densities[a].total_cmp(&self.densities[b]).then(losses[a].total_cmp(&losses[b])))
    }

    /// The per-head windows found, full windows for the skipped steps, and the overall sparsity.
    pub fn schedule(&self) -> crate::Result<StaWindowSchedule> {
        let layout = self.config.base.layout()?;
        let mut windows = BTreeMap::new();
        let mut sparsity_sum = 0.0;
        for (&(step, layer), &heads) in &self.skipped {
            for head in 0..heads {
                windows.insert(StaWindowSchedule::key(step, layer, head), self.full);
            }
        }
        for (&(step, layer), call) in &self.losses {
            for head in 0..call.sums[0].len() {
                let losses: Vec<f64> = call.sums.iter().map(|c| c[head]).collect();
                let chosen = self.choose(&losses, call.energy[head]).ok_or_else(|| {
                    DitAttentionError::Invalid(format!(
                        "STA search: every candidate's loss is NaN at step {step} layer {layer} head {head} (the model's attention produced NaN)"
                    ))
                })?;
                windows.insert(StaWindowSchedule::key(step, layer, head), self.config.candidates[chosen]);
            }
        }
        if windows.is_empty() {
            return Err(DitAttentionError::Invalid(
                "the STA search saw no attention call: run the model with it as the probe".into(),
            ));
        }
        let mut cache: BTreeMap<[usize; 3], f64> = BTreeMap::new();
        for window in windows.values() {
            let s = match cache.get(window) {
                Some(&s) => s,
                None => {
                    let s = AttentionMask::new(layout, PatternSpec::sta(*window))?.sparsity(0);
                    cache.insert(*window, s);
                    s
                }
            };
            sparsity_sum += s;
        }
        Ok(StaWindowSchedule { sparsity: Some(sparsity_sum / windows.len() as f64), windows })
    }
}

impl<B: SparseAttentionBackend> AttentionProbe<B> for StaSearch {
    fn observe(
        &mut self,
        position: CallPosition,
        q: &Tensor<B, 4>,
        k: &Tensor<B, 4>,
        v: &Tensor<B, 4>,
        output: &Tensor<B, 4>,
    ) -> crate::Result<()> {
        let heads = q.dims()[1];
        let call = (position.step, position.layer);
        if position.step < self.config.skip_steps {
            self.skipped.insert(call, heads);
            return Ok(());
        }
        // Mean over batch, tokens and features, per head.
        let per_head = |x: Tensor<B, 4>| -> crate::Result<Vec<f64>> {
            x.square()
                .mean_dim(3)
                .mean_dim(2)
                .mean_dim(0)
                .reshape([heads])
                .into_data()
                .convert::<f64>()
                .to_vec()
                .map_err(|e| DitAttentionError::Invalid(format!("STA search losses unreadable: {e:?}")))
        };
        let mut per_candidate = Vec::with_capacity(self.modules.len());
        for module in &self.modules {
            let out = module.forward(q.clone(), k.clone(), v.clone())?;
            per_candidate.push(per_head(out - output.clone())?);
        }
        let energy = per_head(output.clone())?;
        let entry = self.losses.entry(call).or_insert_with(|| CallLosses {
            sums: vec![vec![0.0; heads]; per_candidate.len()],
            energy: vec![0.0; heads],
            calls: 0,
        });
        if entry.sums[0].len() != heads {
            return Err(DitAttentionError::Invalid(format!(
                "step {} layer {} had {} heads in an earlier calibration call and {heads} now",
                position.step,
                position.layer,
                entry.sums[0].len()
            )));
        }
        for (s, e) in entry.energy.iter_mut().zip(energy) {
            *s += e;
        }
        for (sums, loss) in entry.sums.iter_mut().zip(per_candidate) {
            for (s, l) in sums.iter_mut().zip(loss) {
                *s += l;
            }
        }
        entry.calls += 1;
        Ok(())
    }
}
