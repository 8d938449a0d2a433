//! The extension trait every backend implements: a kernel where there is one (CubeCL backends,
//! fused or not), the burn-tensor references elsewhere.

use burn::tensor::{DType, Int, Tensor, TensorPrimitive, backend::Backend, ops::FloatTensor};

use std::sync::Arc;

use dit_attention_kernels::dynamic::{ChunkGeometry, SelectJob};
use dit_attention_kernels::stats::FrameRows;

use crate::combined::top_sum_reference;
use crate::dynamic::select_reference;
use crate::error::Result;
use crate::mask::{BlockKind, BlockLayout, BlockMap};
use crate::merge::reference::{gather_reference, match_reference, segment_sum_reference};
use crate::merge::{MergeLayout, metric_rows, unit_metric, unit_scores};
use crate::plan::KernelPlan;
use crate::reference::{
    AttentionOptions, attention_backward_reference, block_sparse_attention_reference, dense_attention_reference,
};

/// Block-sparse attention on a burn backend.
///
/// Callers use the functions of [`crate::attention`], which validate every input first; the
/// methods here assume valid shapes (`q [b, h, nq, d]`, `k [b, h, nk, d]`, `v [b, h, nk, dv]`,
/// `bias [b or 1, h or 1, nk]` in q's dtype, a plan for `nq` x `nk`).
pub trait SparseAttentionBackend: Backend {
    /// Checks that this backend's path for `device` takes the dtype and head dims.
    fn sparse_attention_support(device: &Self::Device, dtype: DType, head_dim: usize, value_dim: usize) -> Result<()> {
        let _ = (device, dtype, head_dim, value_dim);
        Ok(())
    }

    /// Checks that the kernel can take this plan for `batch_heads` (batch x heads) rows of work
    /// (launch-grid limits).
    fn sparse_attention_check_plan(device: &Self::Device, plan: &KernelPlan, batch_heads: usize) -> Result<()> {
        let _ = (device, plan, batch_heads);
        Ok(())
    }

    /// A short name of the path that runs for these inputs (for benchmarks and logs).
    fn sparse_attention_path(device: &Self::Device, dtype: DType, head_dim: usize, value_dim: usize) -> &'static str {
        let _ = (device, dtype, head_dim, value_dim);
        "burn-tensor reference"
    }

    /// Forward pass: `(output [b, h, nq, dv], lse [b, h, nq])`; the LSE is `-inf` for a row with
    /// no key.
    fn sparse_attention_forward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        plan: &KernelPlan,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        reference_forward::<Self>(q, k, v, bias, plan)
    }

    /// Backward of [`sparse_attention_forward`](Self::sparse_attention_forward) from its saved
    /// output and LSE and the upstream gradient of either or both. The burn-tensor composite
    /// ([`crate::reference::attention_backward_reference`], dense in memory) by default;
    /// CubeCL backends run the block-sparse backward kernels.
    fn sparse_attention_backward(x: GradInputs<Self>, plan: &KernelPlan) -> BackwardGrads<Self> {
        reference_backward::<Self>(x, plan)
    }

    /// Dynamic block-sparse attention: the kept key blocks of every (batch-head, query block)
    /// from its estimated masses `[bh, nqb, nkb]` (see [`crate::dynamic::select_blocks`] for the
    /// rule); the selection holds the masses given. No gradient.
    fn dynamic_select(masses: Tensor<Self, 3>, job: &SelectJob) -> BlockSelection<Self> {
        select_reference(masses, job)
    }

    /// `a [b, h, m, k]` times `b [b, h, k, n]` (same batch dims, same float dtype): the products
    /// of the reference backward and the sampled scores of Combined's statistics. burn's matmul
    /// by default; CubeCL backends run a plain bounds-checked kernel instead of burn 0.21's
    /// autotuned one, which can read past `k` (tracel-ai/burn#5626). No gradient of its own.
    fn checked_matmul(a: Tensor<Self, 4>, b: Tensor<Self, 4>) -> Tensor<Self, 4> {
        a.matmul(b)
    }

    /// Whether [`chunk_masses`](Self::chunk_masses) runs a kernel for an engine output in
    /// `dtype` of this geometry (otherwise the dynamic estimate's burn-op composite runs).
    fn chunk_masses_apply(device: &Self::Device, dtype: DType, geometry: &ChunkGeometry) -> bool {
        let _ = (device, dtype, geometry);
        false
    }

    /// The dynamic estimate's block masses `[bh, nqb, nkb]` (f32) from the engine's chunked
    /// one-hot attention over the sampled tokens, where
    /// [`chunk_masses_apply`](Self::chunk_masses_apply) (`None` elsewhere, or where the tensors
    /// are not of the geometry's shapes): chunk `t` of batch-head `bh` gave `rows[bh, t] [nqb *
    /// samples, width]` (each row's mass in key blocks `t * per_chunk ..`, normalised over the
    /// chunk) and `lse[bh, t] [nqb * samples]`; the chunks' LSEs rescale each to its whole row,
    /// and each query block sums its rows (see `dit_attention_kernels::dynamic::chunk_masses`).
    /// No gradient.
    ///
    /// # Shapes
    /// - rows `[bh, chunks, nqb * samples, width]`, lse `[bh, chunks, nqb * samples]`
    fn chunk_masses(rows: Tensor<Self, 4>, lse: Tensor<Self, 3>, geometry: &ChunkGeometry) -> Option<Tensor<Self, 3>> {
        let _ = (rows, lse, geometry);
        None
    }

    /// Sum of the `m` largest values of each row of `x [r, n]` (`1 <= m <= n`), in x's dtype:
    /// the sparsity statistic of Combined attention. No gradient.
    fn top_sum(x: Tensor<Self, 2>, m: usize) -> Tensor<Self, 1> {
        top_sum_reference(x, m)
    }

    /// Whether [`frame_statistics`](Self::frame_statistics) runs kernels for `heads` heads of
    /// `t * samples` sampled rows of scores in `dtype` (otherwise Combined attention's burn-op
    /// composite runs).
    fn frame_statistics_apply(
        device: &Self::Device,
        dtype: DType,
        heads: usize,
        samples: usize,
        rows: &FrameRows,
    ) -> bool {
        let _ = (device, dtype, heads, samples, rows);
        false
    }

    /// Combined attention's statistics of the sampled rows' scores `[P, t * samples, n]` (query
    /// frame after query frame, `samples` rows each), where
    /// [`frame_statistics_apply`](Self::frame_statistics_apply) (`None` elsewhere); see
    /// [`FrameStatistics`]. `top`: how many of a row's largest probabilities the top mass sums
    /// (`1 <= top <= n`). No gradient.
    fn frame_statistics(
        scores: Tensor<Self, 3>,
        samples: usize,
        rows: &FrameRows,
        top: usize,
    ) -> Option<FrameStatistics<Self>> {
        let _ = (scores, samples, rows, top);
        None
    }

    /// Attention over per-(batch-head) key-block lists (every listed block full), e.g. from
    /// [`dynamic_select`](Self::dynamic_select): `q [1, bh, n, d]` with one list row per
    /// `(bh, query block)`; the other shapes as [`sparse_attention_forward`](Self::sparse_attention_forward).
    /// Backends without a kernel for device lists read them back and run a block map.
    fn sparse_attention_forward_lists(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        lists: &BlockLists<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let plan = lists.host_plan();
        Self::sparse_attention_forward(q, k, v, bias, &plan)
    }

    /// Whether the token-merging kernels take a matching of `groups` score matrices of `dtype`
    /// (otherwise the burn-tensor references run).
    fn merge_kernels_apply(device: &Self::Device, layout: &MergeLayout, groups: usize, dtype: DType) -> bool {
        let _ = (device, layout, groups, dtype);
        false
    }

    /// Token merging: the merge plan's index tables from the cosine scores
    /// `[b, m, sources, >= dsts]` (columns past the layout's destinations are padding), one
    /// matching per `(b, m)` group (see [`crate::merge`]).
    fn merge_match(scores: Tensor<Self, 4>, layout: &MergeLayout) -> MergeIndices<Self> {
        match_reference(scores, layout)
    }

    /// Whether [`Self::merge_unit_metric`] runs kernels for a metric of `dtype` with `elements`
    /// output elements (otherwise the burn-tensor composite runs).
    fn merge_unit_metric_applies(device: &Self::Device, dtype: DType, elements: usize) -> bool {
        let _ = (device, dtype, elements);
        false
    }

    /// Token merging: the [`unit_metric`] of [`metric_rows`]`(a, b)`: rows `concat(a, ||a||, b,
    /// ||b||)` (or `a`) normalised, zero channels up to a multiple of 16. No gradient flows
    /// through it. Backends with kernels build it in one pass, f32 inside.
    ///
    /// # Shapes
    /// - a `[b, h, n, ca]`, b `[b, h, n, cb]`
    /// - output `[b, h, n, c]`, `c` = `ca + cb + 2` (or `ca`) rounded up to a multiple of 16
    ///
    /// [`unit_metric`]: crate::merge::unit_metric
    /// [`metric_rows`]: crate::merge::metric_rows
    fn merge_unit_metric(a: Tensor<Self, 4>, b: Option<Tensor<Self, 4>>) -> Tensor<Self, 4> {
        unit_metric(metric_rows(a, b))
    }

    /// Token merging: the merge plan's index tables straight from the [`unit_metric`]
    /// `[b, m, n, c]` (rows normalised, `c` a multiple of 16), one matching per `(b, m)` group.
    /// Backends with a fused kernel never form the score matrix; the default forms it
    /// ([`unit_scores`]) and calls [`Self::merge_match`].
    ///
    /// [`unit_metric`]: crate::merge::unit_metric
    fn merge_match_metric(unit: Tensor<Self, 4>, layout: &MergeLayout) -> MergeIndices<Self> {
        Self::merge_match(unit_scores(unit, layout), layout)
    }

    /// Token merging: segment sums of `x [groups, reps, n, c]` into `[groups, reps, n_kept, c]`.
    fn merge_segment_sum(x: Tensor<Self, 4>, indices: &MergeIndices<Self>, layout: &MergeLayout) -> Tensor<Self, 4> {
        segment_sum_reference(x, indices, layout)
    }

    /// Token merging: unmerge, `[groups, reps, n_kept, c]` into `[groups, reps, n, c]`.
    fn merge_gather(y: Tensor<Self, 4>, indices: &MergeIndices<Self>, layout: &MergeLayout) -> Tensor<Self, 4> {
        gather_reference(y, indices, layout)
    }
}

/// What the backward of one attention call reads: its inputs, the forward's output and LSE, and
/// the upstream gradients (shapes as [`SparseAttentionBackend::sparse_attention_forward`]).
#[derive(Debug, Clone)]
pub struct GradInputs<B: Backend> {
    /// `[b, h, nq, d]`.
    pub q: FloatTensor<B>,
    /// `[b, h, nk, d]`.
    pub k: FloatTensor<B>,
    /// `[b, h, nk, dv]`.
    pub v: FloatTensor<B>,
    /// `[b or 1, h or 1, nk]`.
    pub bias: Option<FloatTensor<B>>,
    /// The forward's output `[b, h, nq, dv]`.
    pub out: FloatTensor<B>,
    /// The forward's LSE `[b, h, nq]`.
    pub lse: FloatTensor<B>,
    /// Gradient of the output, if it has one.
    pub d_out: Option<FloatTensor<B>>,
    /// Gradient of the LSE (any float dtype), if it has one.
    pub d_lse: Option<FloatTensor<B>>,
}

/// Gradients of one attention call, each in its input's shape and dtype.
#[derive(Debug, Clone)]
pub struct BackwardGrads<B: Backend> {
    /// Of the queries.
    pub dq: FloatTensor<B>,
    /// Of the keys.
    pub dk: FloatTensor<B>,
    /// Of the values.
    pub dv: FloatTensor<B>,
    /// Of the bias, when there is one.
    pub dbias: Option<FloatTensor<B>>,
}

/// The backward through the burn-tensor composite (any backend).
pub fn reference_backward<B: SparseAttentionBackend>(x: GradInputs<B>, plan: &KernelPlan) -> BackwardGrads<B> {
    let g = attention_backward_reference(
        wrap::<B, 4>(x.q),
        wrap::<B, 4>(x.k),
        wrap::<B, 4>(x.v),
        x.bias.map(wrap::<B, 3>),
        plan,
        wrap::<B, 4>(x.out),
        wrap::<B, 3>(x.lse),
        x.d_out.map(wrap::<B, 4>),
        x.d_lse.map(wrap::<B, 3>),
    );
    BackwardGrads { dq: unwrap(g.dq), dk: unwrap(g.dk), dv: unwrap(g.dv), dbias: g.dbias.map(unwrap) }
}

/// A merge plan's index tables on the device (see [`crate::merge::MergeLayout`] for the slots).
#[derive(Debug, Clone)]
pub struct MergeIndices<B: Backend> {
    /// `[groups, n]`: the slot each token merges into (its own for a kept token).
    pub slot_of_token: Tensor<B, 2, Int>,
    /// `[groups, n_kept]`: the kept token of each slot.
    pub kept_token: Tensor<B, 2, Int>,
    /// The kernels' member lists: offsets `[groups, dsts + 1]` and the merged tokens of each
    /// destination `[groups, max(r, 1)]`; `None` from the references.
    pub members: Option<(Tensor<B, 2, Int>, Tensor<B, 2, Int>)>,
}

/// Estimated block masses and kept key blocks on the device.
#[derive(Debug, Clone)]
pub struct BlockSelection<B: Backend> {
    /// `[bh, nqb, nkb]`: estimated mass of each key block per query block (a row sums to the
    /// samples per block); f32 on the kernel backends.
    pub masses: Tensor<B, 3>,
    /// `[bh * nqb]`: kept key blocks per (batch-head, query block).
    pub counts: Tensor<B, 1, Int>,
    /// `[bh * nqb, nkb]`: the kept key blocks, ascending, padded with `nkb`.
    pub indices: Tensor<B, 2, Int>,
}

/// Combined attention's statistics from [`SparseAttentionBackend::frame_statistics`], all f32.
#[derive(Debug, Clone)]
pub struct FrameStatistics<B: Backend> {
    /// `[P, t * samples, 2t + 3]`: per sampled row its frame masses, text mass, squared norms,
    /// maximum and sum, as `dit_attention_kernels::stats::frame_row_stats` writes them.
    pub rows: Tensor<B, 3>,
    /// `[P]`: per head the cross-frame energy `sum_i |sum_j x_ij|^2` (see [`crate::combined`]).
    pub energy: Tensor<B, 1>,
    /// `[P * samples]`: per sampled row of frame 0 the sum of its `top` largest probabilities.
    pub top_mass: Tensor<B, 1>,
}

/// Key-block lists of an attention call, one row per (batch-head, query block).
#[derive(Debug, Clone)]
pub struct BlockLists<B: Backend> {
    /// The block cut (queries and keys alike).
    pub blocks: Arc<BlockLayout>,
    /// `[rows]` listed blocks per row.
    pub counts: Tensor<B, 1, Int>,
    /// `[rows, nkb]` key blocks, the first `counts[row]` of each row valid.
    pub indices: Tensor<B, 2, Int>,
    /// Score scale.
    pub scale: f64,
}

impl<B: Backend> BlockLists<B> {
    /// The lists read back as a per-row block map (`rows / nqb` heads).
    pub fn host_plan(&self) -> KernelPlan {
        let n = self.blocks.len();
        let counts: Vec<i64> = self.counts.clone().into_data().iter::<i64>().collect();
        let indices: Vec<i64> = self.indices.clone().into_data().iter::<i64>().collect();
        let stride = indices.len() / counts.len().max(1);
        let rows = counts
            .iter()
            .enumerate()
            .map(|(r, &c)| {
                indices[r * stride..r * stride + c as usize].iter().map(|&j| (j as u32, BlockKind::Full)).collect()
            })
            .collect();
        let map = BlockMap::from_rows((*self.blocks).clone(), counts.len() / n, rows, None)
            .expect("the selection lists each key block at most once, below the block count");
        KernelPlan::from_map(Arc::new(map), self.scale)
    }
}

/// The forward through the burn-tensor references (any backend).
pub fn reference_forward<B: Backend>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    bias: Option<FloatTensor<B>>,
    plan: &KernelPlan,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let valid = "inputs are validated by crate::attention before they reach a backend";
    let (mut q, mut k, mut v) = (wrap::<B, 4>(q), wrap::<B, 4>(k), wrap::<B, 4>(v));
    let mut bias = bias.map(wrap::<B, 3>);
    // Inputs in another order than the map's: into the map's order and back.
    if let Some(g) = plan.gather() {
        (q, k, v) = (g.apply(q, 2).expect(valid), g.apply(k, 2).expect(valid), g.apply(v, 2).expect(valid));
        bias = bias.map(|b| g.apply(b, 2).expect(valid));
    }
    let options = AttentionOptions::with_scale(plan.scale());
    let mut result = match plan.map() {
        Some(map) => block_sparse_attention_reference(q, k, v, map, bias, options),
        None => dense_attention_reference(q, k, v, None, bias, options),
    }
    .expect(valid);
    if let Some(g) = plan.gather() {
        result.output = g.apply_inverse(result.output, 2).expect(valid);
        result.lse = g.apply_inverse(result.lse, 2).expect(valid);
    }
    (result.output.into_primitive().tensor(), result.lse.into_primitive().tensor())
}

/// A float primitive as a tensor.
pub(crate) fn wrap<B: Backend, const D: usize>(x: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(x))
}

/// A tensor's float primitive.
pub(crate) fn unwrap<B: Backend, const D: usize>(x: Tensor<B, D>) -> FloatTensor<B> {
    x.into_primitive().tensor()
}

/// Whether the engine's chunked rows and LSE have the shapes of `g` (checked before a kernel or
/// a fused op takes them).
#[cfg(feature = "cube")]
pub(crate) fn chunk_shapes_match<B: Backend>(rows: &Tensor<B, 4>, lse: &Tensor<B, 3>, g: &ChunkGeometry) -> bool {
    rows.dims() == [g.bh, g.chunks, g.rows(), g.width] && lse.dims() == [g.bh, g.chunks, g.rows()]
}
