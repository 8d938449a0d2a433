//! The merge plan: matching (spec section 5, steps 2-4), then `merge` / `unmerge` of any tensor
//! laid out like the sequence, and the sizes for proportional attention.

use std::sync::Arc;

use burn::tensor::{Int, Tensor, TensorData, backend::Backend};
use serde::{Deserialize, Serialize};

use super::layout::MergeLayout;
use super::reference::unmerged_indices;
use crate::error::{DitAttentionError, Result};
use crate::glue::{MergeIndices, SparseAttentionBackend};

/// Cosine similarity of every source to every destination, `[b, m, sources, >= dsts]` (columns
/// past `dsts` are padding and never read), from a metric `[b, m, n, c]`: [`unit_metric`], then
/// [`unit_scores`].
pub fn cosine_scores<B: Backend>(metric: Tensor<B, 4>, layout: &MergeLayout) -> Tensor<B, 4> {
    unit_scores(unit_metric(metric), layout)
}

/// ToMe's default metric rows `concat(k, ||k||, v, ||v||)` `[b, h, n, d + dv + 2]`, or `k` alone
/// when `v` is `None`.
pub fn metric_rows<B: Backend>(k: Tensor<B, 4>, v: Option<Tensor<B, 4>>) -> Tensor<B, 4> {
    let Some(v) = v else {
        return k;
    };
    let norm = |x: &Tensor<B, 4>| x.clone().powi_scalar(2).sum_dim(3).sqrt();
    let (nk, nv) = (norm(&k), norm(&v));
    Tensor::cat(vec![k, nk, v, nv], 3)
}

/// Channels of the unit metric of [`metric_rows`]`(a, b)` with `ca` (and `cb`) channels:
/// `ca + cb + 2` (or `ca`) rounded up to a multiple of 16.
pub fn unit_metric_width(ca: usize, cb: Option<usize>) -> usize {
    cb.map_or(ca, |cb| ca + cb + 2).next_multiple_of(16)
}

/// The metric `[b, m, n, c]` with unit rows (a floor of 1e-6 on the norm) and zero channels up
/// to a multiple of 16 (16-byte aligned rows for the kernels' and the matmul's loads), which the
/// matching takes ([`SparseAttentionBackend::merge_match_metric`]).
pub fn unit_metric<B: Backend>(metric: Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, m, n, c] = metric.dims();
    let norm = metric.clone().powi_scalar(2).sum_dim(3).sqrt().clamp_min(1e-6);
    let unit = metric / norm;
    let pad = c.next_multiple_of(16) - c;
    if pad == 0 {
        return unit;
    }
    let zeros = Tensor::zeros([b, m, n, pad], (&unit.device(), unit.dtype()));
    Tensor::cat(vec![unit, zeros], 3)
}

/// Every source's cosine with every destination from a [`unit_metric`], `[b, m, sources, >=
/// dsts]`: the rows gathered, zero destinations up to a multiple of 8 (16-byte aligned output
/// rows), one matmul.
pub fn unit_scores<B: Backend>(unit: Tensor<B, 4>, layout: &MergeLayout) -> Tensor<B, 4> {
    let [b, m, _, _] = unit.dims();
    let device = unit.device();
    let pick = |idx: &[u32]| {
        let v: Vec<i64> = idx.iter().map(|&i| i as i64).collect();
        let len = v.len();
        unit.clone().select(2, Tensor::<B, 1, Int>::from_data(TensorData::new(v, [len]), &device))
    };
    let (src, mut dst) = (pick(&layout.src_token), pick(&layout.dst_token));
    let dsts = layout.dst_token.len();
    let pad = dsts.next_multiple_of(8) - dsts;
    if pad > 0 {
        let [_, _, _, c] = dst.dims();
        dst = Tensor::cat(vec![dst, Tensor::zeros([b, m, pad, c], (&device, unit.dtype()))], 2);
    }
    src.matmul(dst.swap_dims(2, 3))
}

/// How a merged token's value is formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MergeWeighting {
    /// The plain mean of the destination and its merged sources; size = 1 + merged sources.
    #[default]
    Mean,
    /// `sum(size * x) / sum(size)` with the tokens' incoming sizes (ToMe's `merge_wavg`);
    /// size = the sum of the sizes. Without incoming sizes this equals `Mean`.
    SizeWeighted,
}

/// A matching, ready to merge and unmerge tensors of its sequence.
///
/// Groups: one per `(batch, metric head)`; a metric with one head (shared) gives one plan per
/// batch element that every head uses. The merged sequence keeps the text where it was and puts
/// the destinations, then the unmerged sources, in the video's place (token order inside each).
#[derive(Debug, Clone)]
pub struct MergePlan<B: Backend> {
    layout: Arc<MergeLayout>,
    batch: usize,
    metric_heads: usize,
    indices: MergeIndices<B>,
    /// `[groups, n_kept]`.
    sizes: Tensor<B, 2>,
    /// Incoming sizes `[groups, n]` (size-weighted merging only).
    weights: Option<Tensor<B, 2>>,
}

impl<B: SparseAttentionBackend> MergePlan<B> {
    /// Matches the tokens of `metric` (cosine similarity of sources to destinations; each
    /// source's best destination, the `layout.r` most similar sources merge).
    ///
    /// # Shapes
    /// - metric `[b, m, n, c]`: `m` = heads (one matching per head) or 1 (shared by every head)
    /// - sizes `[b, m, n]` (optional incoming sizes, used by [`MergeWeighting::SizeWeighted`])
    pub fn new(
        metric: Tensor<B, 4>,
        layout: Arc<MergeLayout>,
        weighting: MergeWeighting,
        sizes: Option<Tensor<B, 3>>,
    ) -> Result<Self> {
        if metric.dims().contains(&0) {
            return Err(DitAttentionError::Invalid(format!(
                "the metric shape {:?} has a zero dimension",
                metric.dims()
            )));
        }
        Self::from_unit_metric(unit_metric(metric), layout, weighting, sizes)
    }

    /// [`Self::new`] from a metric already normalised and padded ([`unit_metric`], or
    /// [`SparseAttentionBackend::merge_unit_metric`], which builds it from keys and values in
    /// one pass on the kernels' backends).
    ///
    /// # Shapes
    /// - unit `[b, m, n, c]`: rows of norm 1 (or 0), `c` a multiple of 16
    /// - sizes `[b, m, n]` (optional incoming sizes)
    pub fn from_unit_metric(
        unit: Tensor<B, 4>,
        layout: Arc<MergeLayout>,
        weighting: MergeWeighting,
        sizes: Option<Tensor<B, 3>>,
    ) -> Result<Self> {
        let [batch, metric_heads, n, c] = unit.dims();
        if n != layout.n {
            return Err(DitAttentionError::Shape {
                what: "metric sequence length (text + video tokens)".into(),
                expected: vec![layout.n],
                got: vec![n],
            });
        }
        if c == 0 || batch == 0 || metric_heads == 0 || !c.is_multiple_of(16) {
            return Err(DitAttentionError::Invalid(format!(
                "the unit metric shape {:?} has a zero dimension or channels that are not a multiple of 16",
                unit.dims()
            )));
        }
        if let Some(s) = &sizes
            && s.dims() != [batch, metric_heads, n]
        {
            return Err(DitAttentionError::Shape {
                what: "incoming token sizes".into(),
                expected: vec![batch, metric_heads, n],
                got: s.dims().to_vec(),
            });
        }
        let groups = batch * metric_heads;
        let device = unit.device();
        let dtype = unit.dtype();
        let indices = if layout.r == 0 {
            unmerged_indices(&layout, groups, &device)
        } else {
            B::merge_match_metric(unit, &layout)
        };
        let weights = match weighting {
            MergeWeighting::Mean => None,
            MergeWeighting::SizeWeighted => sizes.map(|s| s.reshape([groups, n])),
        };
        let ones = || Tensor::<B, 2>::ones([groups, n], (&device, dtype));
        let per_token = weights.clone().unwrap_or_else(ones);
        let sizes = B::merge_segment_sum(per_token.reshape([groups, 1, n, 1]), &indices, &layout);
        let sizes = sizes.reshape([groups, layout.n_kept()]);
        Ok(Self { layout, batch, metric_heads, indices, sizes, weights })
    }

    /// Whether the plan serves tensors of `batch` x `heads`.
    pub fn fits(&self, batch: usize, heads: usize) -> bool {
        batch == self.batch && (self.metric_heads == 1 || self.metric_heads == heads)
    }

    /// Which implementation built the plan and moves the data: `"CubeCL kernels"` or
    /// `"burn-tensor reference"`.
    pub fn path(&self) -> &'static str {
        if self.indices.members.is_some() { "CubeCL kernels" } else { "burn-tensor reference" }
    }

    /// The layout (tokens, slots, r).
    pub fn layout(&self) -> &MergeLayout {
        &self.layout
    }

    /// Tokens after merging.
    pub fn merged_len(&self) -> usize {
        self.layout.n_kept()
    }

    /// `[b, m, n_kept]`: how many tokens (or how much incoming size) each slot stands for.
    pub fn sizes(&self) -> Tensor<B, 3> {
        self.sizes.clone().reshape([self.batch, self.metric_heads, self.layout.n_kept()])
    }

    /// `[b, m, n_kept]`: `log(size)`, the per-key bias of proportional attention.
    pub fn size_bias(&self) -> Tensor<B, 3> {
        self.sizes().log()
    }

    /// `[b, m, n]`: the slot of the merged sequence each token went to.
    pub fn slot_of_token(&self) -> Tensor<B, 3, Int> {
        self.indices.slot_of_token.clone().reshape([self.batch, self.metric_heads, self.layout.n])
    }

    /// `[b, m, n_kept]`: the token each slot keeps (a destination, an unmerged source or text).
    pub fn kept_token(&self) -> Tensor<B, 3, Int> {
        self.indices.kept_token.clone().reshape([self.batch, self.metric_heads, self.layout.n_kept()])
    }

    fn reps(&self, dims: [usize; 4], len: usize, what: &str) -> Result<usize> {
        let [b, h, n, _] = dims;
        let heads_ok = h == self.metric_heads || (self.metric_heads == 1 && h >= 1);
        if b != self.batch || !heads_ok || n != len {
            let m = self.metric_heads;
            return Err(DitAttentionError::Invalid(format!(
                "{what}: shape {dims:?} does not fit a plan for batch {}, {} and {len} tokens",
                self.batch,
                if m == 1 { "any number of heads".to_string() } else { format!("{m} heads") },
            )));
        }
        Ok(h / self.metric_heads)
    }

    /// Merges `x`: each slot gets the mean (or size-weighted mean) of its tokens.
    ///
    /// # Shapes
    /// - x `[b, h, n, c]` (`h` = the metric's heads, or any with a shared metric)
    /// - output `[b, h, n_kept, c]`
    pub fn merge(&self, x: Tensor<B, 4>) -> Result<Tensor<B, 4>> {
        let dims = x.dims();
        let reps = self.reps(dims, self.layout.n, "tensor to merge")?;
        let [b, h, n, c] = dims;
        let groups = self.batch * self.metric_heads;
        let dtype = x.dtype();
        let mut x = x.reshape([groups, reps, n, c]);
        if let Some(w) = &self.weights {
            x = x * w.clone().cast(dtype).reshape([groups, 1, n, 1]);
        }
        let sums = B::merge_segment_sum(x, &self.indices, &self.layout);
        let sizes = self.sizes.clone().cast(dtype).reshape([groups, 1, self.layout.n_kept(), 1]);
        Ok((sums / sizes).reshape([b, h, self.layout.n_kept(), c]))
    }

    /// Unmerges `y`: every token receives its slot's row (kept tokens their own, merged
    /// sources their destination's).
    ///
    /// # Shapes
    /// - y `[b, h, n_kept, c]`
    /// - output `[b, h, n, c]`
    pub fn unmerge(&self, y: Tensor<B, 4>) -> Result<Tensor<B, 4>> {
        let dims = y.dims();
        let reps = self.reps(dims, self.layout.n_kept(), "tensor to unmerge")?;
        let [b, h, _, c] = dims;
        let groups = self.batch * self.metric_heads;
        let y = y.reshape([groups, reps, self.layout.n_kept(), c]);
        Ok(B::merge_gather(y, &self.indices, &self.layout).reshape([b, h, self.layout.n, c]))
    }

    /// [`Self::merge`] for `[b, n, c]` (e.g. a block's hidden states) with a shared plan.
    pub fn merge_tokens(&self, x: Tensor<B, 3>) -> Result<Tensor<B, 3>> {
        Ok(self.merge(x.unsqueeze_dim(1))?.squeeze_dim(1))
    }

    /// [`Self::unmerge`] for `[b, n_kept, c]` with a shared plan.
    pub fn unmerge_tokens(&self, y: Tensor<B, 3>) -> Result<Tensor<B, 3>> {
        Ok(self.unmerge(y.unsqueeze_dim(1))?.squeeze_dim(1))
    }
}
