//! Which attention a DiT uses where: a serde schedule of [`VideoAttentionConfig`]s by layer and
//! denoising step, prepared once into modules, and the per-run context the model calls them through.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use burn::config::Config;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use crate::attention::{CallPosition, SlidingTileAttentionConfig, VideoAttention, VideoAttentionConfig};
use crate::error::DitAttentionError;
use crate::glue::SparseAttentionBackend;
use crate::merge::MergeState;

/// One override of an [`AttentionScheduleConfig`]: an attention for some layers and steps.
#[derive(Config, Debug, PartialEq)]
pub struct ScheduleRule {
    /// The attention for the calls this rule covers.
    pub attention: VideoAttentionConfig,
    /// Layers it covers (default: all).
    #[config(default = "None")]
    pub layers: Option<Vec<usize>>,
    /// Denoising steps `[start, end)` it covers (default: all).
    #[config(default = "None")]
    pub steps: Option<[usize; 2]>,
}

impl ScheduleRule {
    fn covers(&self, position: CallPosition) -> bool {
        self.layers.as_ref().is_none_or(|l| l.contains(&position.layer))
            && self.steps.is_none_or(|[start, end]| (start..end).contains(&position.step))
    }
}

/// A DiT's attention by layer and denoising step: `default` everywhere, except where a rule covers
/// the call (the last covering rule wins). Serde (JSON) round trip; [`init`](Self::init) prepares
/// every distinct attention once.
#[derive(Config, Debug, PartialEq)]
pub struct AttentionScheduleConfig {
    /// The attention of calls no rule covers.
    pub default: VideoAttentionConfig,
    /// Overrides, in order (default: none).
    #[config(default = "Vec::new()")]
    pub rules: Vec<ScheduleRule>,
}

impl AttentionScheduleConfig {
    /// The config of the call at `position`.
    pub fn config_at(&self, position: CallPosition) -> &VideoAttentionConfig {
        self.rules.iter().rev().find(|r| r.covers(position)).map_or(&self.default, |r| &r.attention)
    }

    /// The highest layer a rule names (to check against a model's depth).
    pub fn max_layer(&self) -> Option<usize> {
        self.rules.iter().filter_map(|r| r.layers.as_ref()).flatten().copied().max()
    }

    /// Validates the rules and prepares each distinct attention once.
    pub fn init(&self) -> crate::Result<AttentionSchedule> {
        let mut modules = Vec::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut prepare = |config: &VideoAttentionConfig| -> crate::Result<usize> {
            let key = serde_json::to_string(config)
                .map_err(|e| DitAttentionError::Invalid(format!("attention config does not serialise: {e}")))?;
            if let Some(&i) = seen.get(&key) {
                return Ok(i);
            }
            modules.push(config.init()?);
            seen.insert(key, modules.len() - 1);
            Ok(modules.len() - 1)
        };
        let default = prepare(&self.default)?;
        let mut rules = Vec::with_capacity(self.rules.len());
        for (i, rule) in self.rules.iter().enumerate() {
            if let Some([start, end]) = rule.steps
                && start >= end
            {
                return Err(DitAttentionError::Invalid(format!(
                    "schedule rule {i} covers steps [{start}, {end}): an empty range (start must be below end)"
                )));
            }
            if rule.layers.as_ref().is_some_and(|l| l.is_empty()) {
                return Err(DitAttentionError::Invalid(format!(
                    "schedule rule {i} lists no layers (leave `layers` out to cover every layer)"
                )));
            }
            rules.push(prepare(&rule.attention)?);
        }
        Ok(AttentionSchedule { config: self.clone(), modules, default, rules })
    }

    /// The schedule an STA mask search wrote: every `(step, layer)` the search names runs STA from
    /// `base` (canvas, tile, text, order) with the per-head windows found; other calls run dense.
    pub fn from_sta_windows(windows: &StaWindowSchedule, base: &SlidingTileAttentionConfig) -> crate::Result<Self> {
        let mut rules = Vec::new();
        for ((step, layer), heads) in windows.by_call()? {
            // One shared window when every head agrees (the same prepared module for all of them).
            let list = if heads.iter().all(|w| *w == heads[0]) { vec![heads[0]] } else { heads };
            let mut sta = base.clone();
            sta.windows = list;
            rules.push(
                ScheduleRule::new(VideoAttentionConfig::SlidingTile(sta))
                    .with_layers(Some(vec![layer]))
                    .with_steps(Some([step, step + 1])),
            );
        }
        Ok(Self::new(VideoAttentionConfig::Dense(crate::attention::DenseAttentionConfig::new())).with_rules(rules))
    }
}

/// Per-head windows keyed by `(step, layer)`.
pub type WindowsByCall = BTreeMap<(usize, usize), Vec<[usize; 3]>>;

/// Per-head STA windows by call, as an STA mask search writes them (spec section 6). JSON is the
/// spec's flat object: `{"<step>_<layer>_<head>": [kt, kh, kw], ..., "sparsity": s}`, windows in
/// tiles; `sparsity` (the schedule's overall sparsity) may be absent from a file written elsewhere.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StaWindowSchedule {
    /// Fraction of video query-key pairs skipped, averaged over every `(step, layer, head)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sparsity: Option<f64>,
    /// `"<step>_<layer>_<head>"` -> window in tiles.
    #[serde(flatten)]
    pub windows: BTreeMap<String, [usize; 3]>,
}

impl StaWindowSchedule {
    /// The key of a call's head.
    pub fn key(step: usize, layer: usize, head: usize) -> String {
        format!("{step}_{layer}_{head}")
    }

    /// The windows grouped by `(step, layer)`, heads in order; an error names a malformed key or a
    /// missing head.
    pub fn by_call(&self) -> crate::Result<WindowsByCall> {
        let mut calls: BTreeMap<(usize, usize), BTreeMap<usize, [usize; 3]>> = BTreeMap::new();
        for (key, window) in &self.windows {
            let parts: Vec<_> = key.split('_').map(str::parse::<usize>).collect();
            // Canonical keys only: "01_0_0" and "1_0_0" would name the same head twice.
            let [Ok(step), Ok(layer), Ok(head)] = parts[..] else {
                return Err(DitAttentionError::Invalid(format!(
                    "STA schedule key {key:?} is not \"<step>_<layer>_<head>\" with three integers"
                )));
            };
            if *key != Self::key(step, layer, head) {
                return Err(DitAttentionError::Invalid(format!(
                    "STA schedule key {key:?} is not canonical: write it {:?}",
                    Self::key(step, layer, head)
                )));
            }
            calls.entry((step, layer)).or_default().insert(head, *window);
        }
        calls
            .into_iter()
            .map(|(call, heads)| {
                if let Some((i, (head, _))) = heads.iter().enumerate().find(|(i, (h, _))| *i != **h) {
                    return Err(DitAttentionError::Invalid(format!(
                        "STA schedule names head {head} of step {} layer {} but not head {i}",
                        call.0, call.1
                    )));
                }
                Ok((call, heads.into_values().collect()))
            })
            .collect()
    }
}

/// The prepared schedule: one module per distinct attention config.
#[derive(Debug, Clone)]
pub struct AttentionSchedule {
    config: AttentionScheduleConfig,
    modules: Vec<VideoAttention>,
    default: usize,
    rules: Vec<usize>,
}

impl AttentionSchedule {
    /// The configuration.
    pub fn config(&self) -> &AttentionScheduleConfig {
        &self.config
    }

    /// The attention of the call at `position`.
    pub fn at(&self, position: CallPosition) -> &VideoAttention {
        let i = self.config.rules.iter().rposition(|r| r.covers(position)).map_or(self.default, |r| self.rules[r]);
        &self.modules[i]
    }

    /// Distinct attentions prepared.
    pub fn num_prepared(&self) -> usize {
        self.modules.len()
    }
}

/// Sees every attention call of a run (its inputs and output): calibration such as the STA mask
/// search hooks in here.
pub trait AttentionProbe<B: Backend> {
    /// Called after the attention at `position` computed `output` from `q`, `k`, `v`.
    ///
    /// # Shapes
    /// - q, k `[b, h, n, d]`, v `[b, h, n, dv]`, output `[b, h, n, dv]`
    fn observe(
        &mut self,
        position: CallPosition,
        q: &Tensor<B, 4>,
        k: &Tensor<B, 4>,
        v: &Tensor<B, 4>,
        output: &Tensor<B, 4>,
    ) -> crate::Result<()>;
}

/// Time spent inside attention calls (with a device sync around each).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct AttentionTiming {
    /// Attention calls timed.
    pub calls: usize,
    /// Their total wall time.
    pub elapsed: Duration,
}

/// One run of a model under a schedule: the current denoising step, token merging's matchings per
/// layer (reused every `gap` calls), optional timing and an optional probe.
pub struct AttentionContext<'a, B: Backend> {
    schedule: &'a AttentionSchedule,
    step: usize,
    merge_states: HashMap<usize, MergeState<B>>,
    timing: Option<AttentionTiming>,
    probe: Option<&'a mut dyn AttentionProbe<B>>,
}

impl<'a, B: SparseAttentionBackend> AttentionContext<'a, B> {
    /// A run at step 0.
    pub fn new(schedule: &'a AttentionSchedule) -> Self {
        Self { schedule, step: 0, merge_states: HashMap::new(), timing: None, probe: None }
    }

    /// Times every attention call (syncs the device around each: for measuring, not production).
    pub fn with_timing(mut self) -> Self {
        self.timing = Some(AttentionTiming::default());
        self
    }

    /// Shows every call to `probe`.
    pub fn with_probe(mut self, probe: &'a mut dyn AttentionProbe<B>) -> Self {
        self.probe = Some(probe);
        self
    }

    /// The schedule.
    pub fn schedule(&self) -> &AttentionSchedule {
        self.schedule
    }

    /// Sets the denoising step of the next forward passes.
    pub fn set_step(&mut self, step: usize) {
        self.step = step;
    }

    /// The current denoising step.
    pub fn step(&self) -> usize {
        self.step
    }

    /// Attention time so far (`None` unless [`with_timing`](Self::with_timing)).
    pub fn timing(&self) -> Option<AttentionTiming> {
        self.timing
    }

    /// The scheduled attention of `layer` at the current step.
    ///
    /// # Shapes
    /// - q, k `[b, h, n, d]`, v `[b, h, n, dv]`, output `[b, h, n, dv]`
    pub fn attend(
        &mut self,
        layer: usize,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
    ) -> crate::Result<Tensor<B, 4>> {
        let position = CallPosition::new(layer, self.step);
        let device = q.device();
        let start = self.timing.map(|_| {
            let _ = B::sync(&device);
            Instant::now()
        });
        let probe_inputs = self.probe.as_ref().map(|_| (q.clone(), k.clone(), v.clone()));
        let output = match self.schedule.at(position) {
            VideoAttention::TokenMerge(m) => {
                let state = self.merge_states.entry(layer).or_default();
                m.forward_with_state(q, k, v, None, state)?.output
            }
            attention => attention.forward_at(q, k, v, None, Some(position))?.output,
        };
        if let (Some(start), Some(timing)) = (start, self.timing.as_mut()) {
            let _ = B::sync(&device);
            timing.calls += 1;
            timing.elapsed += start.elapsed();
        }
        if let (Some(probe), Some((q, k, v))) = (self.probe.as_mut(), probe_inputs) {
            probe.observe(position, &q, &k, &v, &output)?;
        }
        Ok(output)
    }
}
