//! Attention with token merging: the module, its config and the caller-owned reuse state.

use std::sync::Arc;

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Tensor, backend::Backend};
use serde::{Deserialize, Serialize};

use super::layout::{Destinations, MergeAmount, MergeLayout};
use super::plan::{MergePlan, MergeWeighting, metric_rows};
use crate::attention::dense_attention;
use crate::canvas::{Canvas, TextSpec};

use crate::error::DitAttentionError;
use crate::glue::SparseAttentionBackend;
use crate::reference::{AttentionOptions, AttentionOutput};

/// What the similarity is measured on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MergeMetric {
    /// `concat(k, ||k||, v, ||v||)` per head (one matching per head).
    #[default]
    KeysValues,
    /// The keys per head.
    Keys,
    /// A metric the caller passes (`[b, n, c]`, e.g. the block input averaged over heads),
    /// one matching per batch element shared by every head.
    Shared,
}

/// Which side of attention is merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MergeMode {
    /// Keys and values merged, queries full length; no unmerge.
    #[default]
    KeysValues,
    /// Queries merged too; the output (and LSE) is unmerged: each merged source receives its
    /// destination's row.
    Full,
}

/// Configuration of [`TokenMergeAttention`].
#[derive(Config, Debug, PartialEq)]
pub struct TokenMergeAttentionConfig {
    /// Latent canvas `[t, h, w]`.
    pub canvas: [usize; 3],
    /// How many video tokens merge (count, or ratio of the video tokens).
    pub amount: MergeAmount,
    /// Text tokens before or after the video (default: none); text never merges.
    #[config(default = "TextSpec::none()")]
    pub text: TextSpec,
    /// Destination boxes `[st, sy, sx]` on the frames after the first (default `[4, 3, 3]`).
    #[config(default = "[4, 3, 3]")]
    pub window: [usize; 3],
    /// Seed of the destination draw; `None` takes each box's first token (default: `Some(0)`).
    #[config(default = "Some(0)")]
    pub seed: Option<u64>,
    /// Similarity metric (default: keys and values with their norms, per head).
    #[config(default = "MergeMetric::KeysValues")]
    pub metric: MergeMetric,
    /// Merge by plain or size-weighted mean (default: mean).
    #[config(default = "MergeWeighting::Mean")]
    pub weighting: MergeWeighting,
    /// KV-only or full (default: KV-only).
    #[config(default = "MergeMode::KeysValues")]
    pub mode: MergeMode,
    /// Add `log(size)` to the scores of merged keys (default: true).
    #[config(default = true)]
    pub proportional_attention: bool,
    /// Recompute the matching every `gap` calls of a [`MergeState`] (default: 1, every call).
    #[config(default = 1)]
    pub gap: usize,
    /// Score scale (default: `1 / sqrt(head_dim)`).
    #[config(default = "None")]
    pub scale: Option<f64>,
}

impl TokenMergeAttentionConfig {
    /// Validates the config and draws the destinations.
    pub fn init(&self) -> crate::Result<TokenMergeAttention> {
        let canvas = Canvas::new(self.canvas[0], self.canvas[1], self.canvas[2])?;
        AttentionOptions { scale: self.scale }.validate()?;
        if self.gap == 0 {
            return Err(DitAttentionError::Invalid(
                "merge gap 0: the matching is recomputed every `gap` >= 1 calls".into(),
            ));
        }
        let destinations = Destinations::new(canvas, self.window, self.seed)?;
        let r = self.amount.resolve(canvas.len(), destinations.src.len())?;
        let layout = Arc::new(MergeLayout::new(&destinations, self.text, r)?);
        Ok(TokenMergeAttention { config: self.clone(), layout })
    }
}

/// Matching reuse across calls, owned by the caller (one per layer, or shared).
#[derive(Debug, Clone)]
pub struct MergeState<B: Backend> {
    calls: usize,
    plan: Option<MergePlan<B>>,
}

impl<B: Backend> Default for MergeState<B> {
    fn default() -> Self {
        Self { calls: 0, plan: None }
    }
}

impl<B: Backend> MergeState<B> {
    /// A fresh state (the next call matches).
    pub fn new() -> Self {
        Self::default()
    }
    /// Calls made through this state.
    pub fn calls(&self) -> usize {
        self.calls
    }
    /// The plan in use (after the first call).
    pub fn plan(&self) -> Option<&MergePlan<B>> {
        self.plan.as_ref()
    }
}

/// Attention with token merging (spec section 5); no parameters.
#[derive(Module, Debug, Clone)]
pub struct TokenMergeAttention {
    #[module(skip)]
    config: TokenMergeAttentionConfig,
    #[module(skip)]
    layout: Arc<MergeLayout>,
}

impl TokenMergeAttention {
    /// The config it was built from.
    pub fn config(&self) -> &TokenMergeAttentionConfig {
        &self.config
    }

    /// The merge layout (tokens, destinations, `r`).
    pub fn layout(&self) -> &MergeLayout {
        &self.layout
    }

    /// Attention output; matches on every call.
    ///
    /// # Shapes
    /// - q, k `[b, h, n, d]`, v `[b, h, n, dv]`, `n` = text + video tokens
    /// - output `[b, h, n, dv]`
    pub fn forward<B: SparseAttentionBackend>(
        &self,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
    ) -> crate::Result<Tensor<B, 4>> {
        Ok(self.forward_with_state(q, k, v, None, &mut MergeState::new())?.output)
    }

    /// Output and LSE, reusing the matching of `state` between recomputations (every `gap`
    /// calls), with the caller's metric when the config asks for a shared one.
    ///
    /// # Shapes
    /// - q, k `[b, h, n, d]`, v `[b, h, n, dv]`, metric `[b, n, c]` (shared metric only)
    /// - output `[b, h, n, dv]`, lse `[b, h, n]`
    pub fn forward_with_state<B: SparseAttentionBackend>(
        &self,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        metric: Option<Tensor<B, 3>>,
        state: &mut MergeState<B>,
    ) -> crate::Result<AttentionOutput<B>> {
        crate::reference::check_qkv(&q, &k, &v, None)?;
        let [b, h, n, _] = q.dims();
        if k.dims()[2] != n {
            return Err(DitAttentionError::Invalid(format!(
                "token merging is self-attention: {n} queries but {} keys",
                k.dims()[2]
            )));
        }
        if n != self.layout.n {
            let c = self.config.canvas;
            return Err(DitAttentionError::SequenceLength {
                got: n,
                expected: self.layout.n,
                video: c[0] * c[1] * c[2],
                text: self.config.text.len,
                canvas: c,
            });
        }
        let stale = state.calls.is_multiple_of(self.config.gap) || state.plan.as_ref().is_none_or(|p| !p.fits(b, h));
        if stale {
            state.plan = Some(self.matching(&k, &v, metric)?);
        }
        state.calls += 1;
        let plan = state.plan.as_ref().expect("set above");
        let bias = self.config.proportional_attention.then(|| plan.size_bias());
        let options = AttentionOptions { scale: self.config.scale };
        let (k, v) = (plan.merge(k)?, plan.merge(v)?);
        match self.config.mode {
            MergeMode::KeysValues => dense_attention(q, k, v, bias, options),
            MergeMode::Full => {
                let out = dense_attention(plan.merge(q)?, k, v, bias, options)?;
                let lse = plan.unmerge(out.lse.unsqueeze_dim(3))?.squeeze_dim(3);
                Ok(AttentionOutput { output: plan.unmerge(out.output)?, lse })
            }
        }
    }

    /// The matching of one call (what [`Self::forward_with_state`] reuses).
    ///
    /// # Shapes
    /// - k `[b, h, n, d]`, v `[b, h, n, dv]`, metric `[b, n, c]` (shared metric only)
    pub fn matching<B: SparseAttentionBackend>(
        &self,
        k: &Tensor<B, 4>,
        v: &Tensor<B, 4>,
        metric: Option<Tensor<B, 3>>,
    ) -> crate::Result<MergePlan<B>> {
        let unit = self.unit_similarity_metric(k, v, metric)?;
        MergePlan::from_unit_metric(unit, self.layout.clone(), self.config.weighting, None)
    }

    /// The metric the matching compares: `[b, h, n, 2d + 2]` (keys and values with their norms),
    /// `[b, h, n, d]` (keys) or `[b, 1, n, c]` (shared).
    pub fn similarity_metric<B: SparseAttentionBackend>(
        &self,
        k: &Tensor<B, 4>,
        v: &Tensor<B, 4>,
        metric: Option<Tensor<B, 3>>,
    ) -> crate::Result<Tensor<B, 4>> {
        let (a, b) = self.metric_parts(k, v, metric)?;
        Ok(metric_rows(a, b))
    }

    /// [`Self::similarity_metric`] with unit rows and channels zero-padded to a multiple of 16,
    /// as the matching takes it ([`crate::merge::unit_metric`] of it, up to rounding); built by
    /// [`SparseAttentionBackend::merge_unit_metric`] (one pass over k and v on the kernels'
    /// backends).
    pub fn unit_similarity_metric<B: SparseAttentionBackend>(
        &self,
        k: &Tensor<B, 4>,
        v: &Tensor<B, 4>,
        metric: Option<Tensor<B, 3>>,
    ) -> crate::Result<Tensor<B, 4>> {
        let (a, b) = self.metric_parts(k, v, metric)?;
        Ok(B::merge_unit_metric(a, b))
    }

    /// What the metric is made of: keys and values (per head), keys (per head), or the caller's
    /// shared metric `[b, 1, n, c]`.
    #[allow(clippy::type_complexity)]
    fn metric_parts<B: SparseAttentionBackend>(
        &self,
        k: &Tensor<B, 4>,
        v: &Tensor<B, 4>,
        metric: Option<Tensor<B, 3>>,
    ) -> crate::Result<(Tensor<B, 4>, Option<Tensor<B, 4>>)> {
        let [b, _, n, _] = k.dims();
        let metric = match (self.config.metric, metric) {
            (MergeMetric::KeysValues, None) => (k.clone(), Some(v.clone())),
            (MergeMetric::Keys, None) => (k.clone(), None),
            (MergeMetric::Shared, Some(m)) => {
                let [mb, mn, _] = m.dims();
                if mb != b || mn != n {
                    return Err(DitAttentionError::Shape {
                        what: "shared merge metric [batch, tokens, channels]".into(),
                        expected: vec![b, n],
                        got: vec![mb, mn],
                    });
                }
                (m.unsqueeze_dim(1), None)
            }
            (MergeMetric::Shared, None) => {
                return Err(DitAttentionError::Invalid(
                    "the merge metric is `Shared` but no metric was passed (forward_with_state takes it)".into(),
                ));
            }
            (m, Some(_)) => {
                return Err(DitAttentionError::Invalid(format!(
                    "a metric was passed but the config computes its own ({m:?}); use MergeMetric::Shared"
                )));
            }
        };
        Ok(metric)
    }
}
