//! Token merging of keys and values stacked on Combined attention (spec sections 5 and 8): the
//! dynamic heads attend to the merged keys (proportional attention), padded back to the
//! sequence length with dead keys so the dynamic path keeps its block cut.
//!
//! The merged keys come in the merge layout's order (text where it was, destinations, unmerged
//! sources), so the `r` merged-away slots become dead keys at the end of the key sequence. Their
//! bias [`DEAD_KEY_BIAS`] gives them zero weight in attention and zero mass in the estimate:
//! blocks made only of them are ranked last by the selection and cost nothing unless the sink
//! rows or `min_ratio` keep them (then they are computed, counted in the density, and still add
//! nothing to the output). A block straddling the end is partly dead.
//!
//! Pattern heads keep every key: their shared patterns need each key frame whole.

use std::sync::Arc;

use burn::config::Config;
use burn::tensor::Tensor;

use crate::canvas::TextSpec;
use crate::error::DitAttentionError;
use crate::glue::SparseAttentionBackend;
use crate::merge::MergeWeighting;
use crate::merge::{MergeAmount, MergeMetric, MergeMode, MergePlan, TokenMergeAttention, TokenMergeAttentionConfig};

/// Bias of a padding key: `exp` of it underflows to exactly 0 next to any finite score, and it
/// is finite in every float dtype the engine takes (f16 included), so no row sees `-inf - -inf`.
pub const DEAD_KEY_BIAS: f64 = -30_000.0;

/// Token merging of the keys and values of Combined attention's dynamic heads.
#[derive(Config, Debug, PartialEq)]
pub struct KvMergeConfig {
    /// How many video tokens merge (count, or ratio of the video tokens).
    pub amount: MergeAmount,
    /// Destination boxes `[st, sy, sx]` on the frames after the first (default `[4, 3, 3]`).
    #[config(default = "[4, 3, 3]")]
    pub window: [usize; 3],
    /// Seed of the destination draw; `None` takes each box's first token (default: `Some(0)`).
    #[config(default = "Some(0)")]
    pub seed: Option<u64>,
    /// Similarity metric, per head: keys and values with their norms (default) or keys. A
    /// shared metric has no input here.
    #[config(default = "MergeMetric::KeysValues")]
    pub metric: MergeMetric,
    /// Merge by plain or size-weighted mean (default: mean).
    #[config(default = "MergeWeighting::Mean")]
    pub weighting: MergeWeighting,
    /// Add `log(size)` to the scores of merged keys (default: true).
    #[config(default = true)]
    pub proportional_attention: bool,
}

impl KvMergeConfig {
    /// The token-merging module behind it, for `canvas` and `text`.
    pub(crate) fn init(&self, canvas: [usize; 3], text: TextSpec, scale: Option<f64>) -> crate::Result<KvMerge> {
        if self.metric == MergeMetric::Shared {
            return Err(DitAttentionError::Invalid(
                "Combined attention merges keys per head: its KV merge metric is `keys_values` or `keys`, not `shared`"
                    .into(),
            ));
        }
        let module = TokenMergeAttentionConfig::new(canvas, self.amount)
            .with_text(text)
            .with_window(self.window)
            .with_seed(self.seed)
            .with_metric(self.metric)
            .with_weighting(self.weighting)
            .with_mode(MergeMode::KeysValues)
            .with_proportional_attention(self.proportional_attention)
            .with_scale(scale)
            .init()?;
        Ok(KvMerge { module: Arc::new(module) })
    }
}

/// The prepared merging (destinations drawn, layout fixed).
#[derive(Debug, Clone)]
pub(crate) struct KvMerge {
    module: Arc<TokenMergeAttention>,
}

/// Merged keys and values padded to the sequence length, with their per-key bias.
pub(crate) struct PaddedKv<B: SparseAttentionBackend> {
    pub k: Tensor<B, 4>,
    pub v: Tensor<B, 4>,
    /// `[b, h, n]`: `log(size)` (or 0) on the merged keys, [`DEAD_KEY_BIAS`] on the padding.
    pub bias: Tensor<B, 3>,
    pub plan: MergePlan<B>,
}

impl KvMerge {
    /// Matches `k`, `v` (one matching per head), merges them and pads them back to `n` keys.
    ///
    /// # Shapes
    /// - k `[b, h, n, d]`, v `[b, h, n, dv]`
    /// - output k `[b, h, n, d]`, v `[b, h, n, dv]`, bias `[b, h, n]`
    pub(crate) fn apply<B: SparseAttentionBackend>(
        &self,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
    ) -> crate::Result<PaddedKv<B>> {
        let [b, h, n, _] = k.dims();
        let plan = self.module.matching(&k, &v, None)?;
        let kept = plan.merged_len();
        let (device, dtype) = (k.device(), k.dtype());
        let pad = |x: Tensor<B, 4>| {
            let c = x.dims()[3];
            if kept == n {
                return x;
            }
            Tensor::cat(vec![x, Tensor::zeros([b, h, n - kept, c], (&device, dtype))], 2)
        };
        let (k, v) = (pad(plan.merge(k)?), pad(plan.merge(v)?));
        let live = if self.module.config().proportional_attention {
            plan.size_bias().cast(dtype)
        } else {
            Tensor::zeros([b, h, kept], (&device, dtype))
        };
        let bias = if kept == n {
            live
        } else {
            Tensor::cat(vec![live, Tensor::full([b, h, n - kept], DEAD_KEY_BIAS, (&device, dtype))], 2)
        };
        Ok(PaddedKv { k, v, bias, plan })
    }
}
