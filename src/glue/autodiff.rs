//! `Autodiff<B>`: the forward runs `B`'s kernel and records one graph node per output; their
//! gradients come from `B`'s backward (kernels on CubeCL backends, the reference composite
//! elsewhere).

use std::sync::Arc;

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::{DType, Tensor, backend::Backend, ops::FloatTensor};

use dit_attention_kernels::dynamic::{ChunkGeometry, SelectJob};
use dit_attention_kernels::stats::FrameRows;

use super::backend::{BlockSelection, FrameStatistics, GradInputs, MergeIndices, SparseAttentionBackend};
use crate::error::Result;
use crate::merge::MergeLayout;
use crate::plan::KernelPlan;

/// What the backward needs, shared by the output's and the LSE's graph nodes.
#[derive(Debug)]
struct Saved<B: Backend> {
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    bias: Option<FloatTensor<B>>,
    out: FloatTensor<B>,
    lse: FloatTensor<B>,
    plan: KernelPlan,
}

/// Which forward output a graph node stands for.
#[derive(Debug, Clone, Copy)]
enum Which {
    Output,
    Lse,
}

#[derive(Debug)]
struct AttentionBackward(Which);

impl<B: SparseAttentionBackend, const N: usize> Backward<B, N> for AttentionBackward {
    type State = Arc<Saved<B>>;

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let s = &ops.state;
        let (d_out, d_lse) = match self.0 {
            Which::Output => (Some(grad), None),
            Which::Lse => (None, Some(grad)),
        };
        let x = GradInputs {
            q: s.q.clone(),
            k: s.k.clone(),
            v: s.v.clone(),
            bias: s.bias.clone(),
            out: s.out.clone(),
            lse: s.lse.clone(),
            d_out,
            d_lse,
        };
        let g = B::sparse_attention_backward(x, &s.plan);
        let mut parent_grads = vec![g.dq, g.dk, g.dv];
        parent_grads.extend(g.dbias);
        for (parent, grad) in ops.parents.iter().zip(parent_grads) {
            if let Some(node) = parent {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

/// Records one forward output as a graph node over `N` parents.
fn record<B: SparseAttentionBackend, C: CheckpointStrategy, const N: usize>(
    parents: [&FloatTensor<Autodiff<B, C>>; N],
    which: Which,
    saved: &Arc<Saved<B>>,
    value: FloatTensor<B>,
) -> FloatTensor<Autodiff<B, C>> {
    match AttentionBackward(which).prepare::<C>(parents.map(|p| p.node.clone())).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish(saved.clone(), value),
        OpsKind::UnTracked(prep) => prep.finish(value),
    }
}

impl<B: SparseAttentionBackend, C: CheckpointStrategy> SparseAttentionBackend for Autodiff<B, C> {
    fn sparse_attention_support(device: &Self::Device, dtype: DType, head_dim: usize, value_dim: usize) -> Result<()> {
        B::sparse_attention_support(device, dtype, head_dim, value_dim)
    }

    fn sparse_attention_check_plan(device: &Self::Device, plan: &KernelPlan, batch_heads: usize) -> Result<()> {
        B::sparse_attention_check_plan(device, plan, batch_heads)
    }

    fn sparse_attention_path(device: &Self::Device, dtype: DType, head_dim: usize, value_dim: usize) -> &'static str {
        B::sparse_attention_path(device, dtype, head_dim, value_dim)
    }

    fn sparse_attention_forward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        plan: &KernelPlan,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (out, lse) = B::sparse_attention_forward(
            q.primitive.clone(),
            k.primitive.clone(),
            v.primitive.clone(),
            bias.as_ref().map(|b| b.primitive.clone()),
            plan,
        );
        let saved = Arc::new(Saved {
            q: q.primitive.clone(),
            k: k.primitive.clone(),
            v: v.primitive.clone(),
            bias: bias.as_ref().map(|b| b.primitive.clone()),
            out: out.clone(),
            lse: lse.clone(),
            plan: plan.clone(),
        });
        match &bias {
            None => (
                record::<B, C, 3>([&q, &k, &v], Which::Output, &saved, out),
                record::<B, C, 3>([&q, &k, &v], Which::Lse, &saved, lse),
            ),
            Some(b) => (
                record::<B, C, 4>([&q, &k, &v, b], Which::Output, &saved, out),
                record::<B, C, 4>([&q, &k, &v, b], Which::Lse, &saved, lse),
            ),
        }
    }

    // The selection has no gradient: it runs on the inner backend. The attention over its
    // lists keeps the default (a block map read back, then the tracked forward above).
    fn dynamic_select(masses: Tensor<Self, 3>, job: &SelectJob) -> BlockSelection<Self> {
        let inner = B::dynamic_select(masses.clone().inner(), job);
        BlockSelection { masses, counts: Tensor::from_inner(inner.counts), indices: Tensor::from_inner(inner.indices) }
    }

    fn top_sum(x: Tensor<Self, 2>, m: usize) -> Tensor<Self, 1> {
        Tensor::from_inner(B::top_sum(x.inner(), m))
    }

    fn chunk_masses_apply(device: &Self::Device, dtype: DType, geometry: &ChunkGeometry) -> bool {
        B::chunk_masses_apply(device, dtype, geometry)
    }

    fn chunk_masses(rows: Tensor<Self, 4>, lse: Tensor<Self, 3>, geometry: &ChunkGeometry) -> Option<Tensor<Self, 3>> {
        B::chunk_masses(rows.inner(), lse.inner(), geometry).map(Tensor::from_inner)
    }

    // No gradient of its own (as documented): the inner backend's checked product.
    fn checked_matmul(a: Tensor<Self, 4>, b: Tensor<Self, 4>) -> Tensor<Self, 4> {
        Tensor::from_inner(B::checked_matmul(a.inner(), b.inner()))
    }

    fn frame_statistics_apply(
        device: &Self::Device,
        dtype: DType,
        heads: usize,
        samples: usize,
        rows: &FrameRows,
    ) -> bool {
        B::frame_statistics_apply(device, dtype, heads, samples, rows)
    }

    fn frame_statistics(
        scores: Tensor<Self, 3>,
        samples: usize,
        rows: &FrameRows,
        top: usize,
    ) -> Option<FrameStatistics<Self>> {
        let s = B::frame_statistics(scores.inner(), samples, rows, top)?;
        Some(FrameStatistics {
            rows: Tensor::from_inner(s.rows),
            energy: Tensor::from_inner(s.energy),
            top_mass: Tensor::from_inner(s.top_mass),
        })
    }

    fn merge_kernels_apply(device: &Self::Device, layout: &MergeLayout, groups: usize, dtype: DType) -> bool {
        B::merge_kernels_apply(device, layout, groups, dtype)
    }

    // The matching has no gradient: it runs on the inner backend (its kernels where it has
    // them). Merge and unmerge keep the default burn-tensor composites, which autodiff tracks.
    fn merge_match(scores: Tensor<Self, 4>, layout: &MergeLayout) -> MergeIndices<Self> {
        outer_indices(B::merge_match(scores.inner(), layout))
    }

    fn merge_unit_metric_applies(device: &Self::Device, dtype: DType, elements: usize) -> bool {
        B::merge_unit_metric_applies(device, dtype, elements)
    }

    fn merge_unit_metric(a: Tensor<Self, 4>, b: Option<Tensor<Self, 4>>) -> Tensor<Self, 4> {
        Tensor::from_inner(B::merge_unit_metric(a.inner(), b.map(|b| b.inner())))
    }

    fn merge_match_metric(unit: Tensor<Self, 4>, layout: &MergeLayout) -> MergeIndices<Self> {
        outer_indices(B::merge_match_metric(unit.inner(), layout))
    }
}

/// The inner backend's merge tables as tables of the autodiff backend.
fn outer_indices<B: SparseAttentionBackend, C: CheckpointStrategy>(
    inner: MergeIndices<B>,
) -> MergeIndices<Autodiff<B, C>> {
    MergeIndices {
        slot_of_token: Tensor::from_inner(inner.slot_of_token),
        kept_token: Tensor::from_inner(inner.kept_token),
        members: inner.members.map(|(o, m)| (Tensor::from_inner(o), Tensor::from_inner(m))),
    }
}
