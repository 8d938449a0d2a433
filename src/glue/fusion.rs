//! `Fusion<B>` (what `burn::backend::Cuda` and `Wgpu` are with burn's default features): the
//! forward is registered as a custom operation in the fusion stream and runs `B`'s kernel when
//! the stream executes.

use std::marker::PhantomData;
use std::sync::Arc;

use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{DType, Element, Int, Shape, Tensor, TensorPrimitive};
use burn_fusion::stream::{Operation, OperationStreams};
use burn_fusion::{Fusion, FusionBackend, FusionTensor};
use burn_ir::{CustomOpIr, HandleContainer, OperationIr, TensorIr};

use dit_attention_kernels::dynamic::{ChunkGeometry, SelectJob};
use dit_attention_kernels::stats::FrameRows;

use super::backend::{
    BackwardGrads, BlockLists, BlockSelection, FrameStatistics, GradInputs, MergeIndices, SparseAttentionBackend,
    chunk_shapes_match,
};
use crate::error::Result;
use crate::merge::reference::{gather_reference, match_reference, segment_sum_reference};
use crate::merge::{MergeLayout, metric_rows, unit_metric, unit_metric_width, unit_scores};
use crate::plan::KernelPlan;

#[derive(Debug)]
struct ForwardOp<B> {
    desc: CustomOpIr,
    plan: KernelPlan,
    _b: PhantomData<B>,
}

impl<B: FusionBackend + SparseAttentionBackend> Operation<B::FusionRuntime> for ForwardOp<B> {
    fn execute(&self, handles: &mut HandleContainer<B::Handle>) {
        let ins = &self.desc.inputs;
        let get = |h: &mut HandleContainer<B::Handle>, i: usize| h.get_float_tensor::<B>(&ins[i]);
        let (q, k, v) = (get(handles, 0), get(handles, 1), get(handles, 2));
        let bias = (ins.len() == 4).then(|| get(handles, 3));
        let (out, lse) = B::sparse_attention_forward(q, k, v, bias, &self.plan);
        handles.register_float_tensor::<B>(&self.desc.outputs[0].id, out);
        handles.register_float_tensor::<B>(&self.desc.outputs[1].id, lse);
    }
}

impl<B: FusionBackend + SparseAttentionBackend> SparseAttentionBackend for Fusion<B> {
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
        let client = q.client.clone();
        let mut streams = OperationStreams::with_inputs([&q, &k, &v]);
        if let Some(b) = &bias {
            streams.tensor(b);
        }
        let [batch, heads, q_len] = [q.shape[0], q.shape[1], q.shape[2]];
        let value_dim = v.shape[3];
        let out =
            TensorIr::uninit(client.create_empty_handle(), Shape::from([batch, heads, q_len, value_dim]), q.dtype);
        let lse = TensorIr::uninit(client.create_empty_handle(), Shape::from([batch, heads, q_len]), DType::F32);
        let mut inputs = vec![q.into_ir(), k.into_ir(), v.into_ir()];
        inputs.extend(bias.map(|b| b.into_ir()));
        let desc = CustomOpIr::new("dit_attention::block_sparse_forward", &inputs, &[out, lse]);
        let op = ForwardOp::<B> { desc: desc.clone(), plan: plan.clone(), _b: PhantomData };
        let mut outputs = client.register(streams, OperationIr::Custom(desc), op);
        let lse = outputs.pop().expect("two outputs");
        let out = outputs.pop().expect("two outputs");
        (out, lse)
    }

    fn sparse_attention_backward(x: GradInputs<Self>, plan: &KernelPlan) -> BackwardGrads<Self> {
        backward::<B>(x, plan)
    }

    fn dynamic_select(masses: Tensor<Self, 3>, job: &SelectJob) -> BlockSelection<Self> {
        dynamic_select::<B>(masses, job)
    }

    fn sparse_attention_forward_lists(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        lists: &BlockLists<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        forward_lists::<B>(q, k, v, bias, lists)
    }

    fn top_sum(x: Tensor<Self, 2>, m: usize) -> Tensor<Self, 1> {
        top_sum::<B>(x, m)
    }

    fn chunk_masses_apply(device: &Self::Device, dtype: DType, geometry: &ChunkGeometry) -> bool {
        B::chunk_masses_apply(device, dtype, geometry)
    }

    fn chunk_masses(rows: Tensor<Self, 4>, lse: Tensor<Self, 3>, geometry: &ChunkGeometry) -> Option<Tensor<Self, 3>> {
        chunk_masses::<B>(rows, lse, geometry)
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
        frame_statistics::<B>(scores, samples, rows, top)
    }

    fn checked_matmul(a: Tensor<Self, 4>, b: Tensor<Self, 4>) -> Tensor<Self, 4> {
        checked_matmul::<B>(a, b)
    }

    fn merge_kernels_apply(device: &Self::Device, layout: &MergeLayout, groups: usize, dtype: DType) -> bool {
        B::merge_kernels_apply(device, layout, groups, dtype)
    }

    fn merge_unit_metric_applies(device: &Self::Device, dtype: DType, elements: usize) -> bool {
        B::merge_unit_metric_applies(device, dtype, elements)
    }

    fn merge_match(scores: Tensor<Self, 4>, layout: &MergeLayout) -> MergeIndices<Self> {
        merge_match::<B>(scores, layout, false)
    }

    fn merge_match_metric(unit: Tensor<Self, 4>, layout: &MergeLayout) -> MergeIndices<Self> {
        merge_match::<B>(unit, layout, true)
    }

    fn merge_unit_metric(a: Tensor<Self, 4>, b: Option<Tensor<Self, 4>>) -> Tensor<Self, 4> {
        merge_unit_metric::<B>(a, b)
    }

    fn merge_segment_sum(x: Tensor<Self, 4>, indices: &MergeIndices<Self>, layout: &MergeLayout) -> Tensor<Self, 4> {
        merge_segment_sum::<B>(x, indices, layout)
    }

    fn merge_gather(y: Tensor<Self, 4>, indices: &MergeIndices<Self>, layout: &MergeLayout) -> Tensor<Self, 4> {
        merge_gather::<B>(y, indices, layout)
    }
}

/// A float or int primitive of the inner backend.
enum Prim<B: FusionBackend> {
    Float(FloatTensor<B>),
    Int(IntTensor<B>),
}

/// Whether an operand is a float or an int tensor.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Float,
    Int,
}

type KernelFn<B> = dyn Fn(Vec<Prim<B>>) -> Vec<Prim<B>> + Send + Sync;

/// A custom operation that runs `B`'s token-merging kernels when the stream executes.
struct MergeOp<B: FusionBackend> {
    desc: CustomOpIr,
    inputs: Vec<Kind>,
    outputs: Vec<Kind>,
    run: Arc<KernelFn<B>>,
}

impl<B: FusionBackend> std::fmt::Debug for MergeOp<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MergeOp").field("desc", &self.desc).finish()
    }
}

impl<B: FusionBackend> Operation<B::FusionRuntime> for MergeOp<B> {
    fn execute(&self, handles: &mut HandleContainer<B::Handle>) {
        let ins = self.desc.inputs.iter().zip(&self.inputs);
        let prims = ins
            .map(|(ir, kind)| match kind {
                Kind::Float => Prim::Float(handles.get_float_tensor::<B>(ir)),
                Kind::Int => Prim::Int(handles.get_int_tensor::<B>(ir)),
            })
            .collect();
        let outs = (self.run)(prims);
        for ((ir, kind), prim) in self.desc.outputs.iter().zip(&self.outputs).zip(outs) {
            match (kind, prim) {
                (Kind::Float, Prim::Float(t)) => handles.register_float_tensor::<B>(&ir.id, t),
                (Kind::Int, Prim::Int(t)) => handles.register_int_tensor::<B>(&ir.id, t),
                _ => unreachable!("the operation's declared output kinds match what it returns"),
            }
        }
    }
}

/// Registers a merge kernel call: `inputs` (float or int fusion tensors) in, outputs of the
/// given shapes and dtypes out.
fn register<B: FusionBackend>(
    name: &'static str,
    inputs: Vec<(Kind, FusionTensor<B::FusionRuntime>)>,
    outputs: Vec<(Kind, Vec<usize>, DType)>,
    run: Arc<KernelFn<B>>,
) -> Vec<FusionTensor<B::FusionRuntime>> {
    let client = inputs[0].1.client.clone();
    let mut streams = OperationStreams::default();
    for (_, t) in &inputs {
        streams.tensor(t);
    }
    let in_kinds: Vec<Kind> = inputs.iter().map(|(k, _)| *k).collect();
    let out_kinds: Vec<Kind> = outputs.iter().map(|(k, _, _)| *k).collect();
    let in_ir: Vec<TensorIr> = inputs.into_iter().map(|(_, t)| t.into_ir()).collect();
    let out_ir: Vec<TensorIr> = outputs
        .into_iter()
        .map(|(_, shape, dtype)| TensorIr::uninit(client.create_empty_handle(), Shape::from(shape), dtype))
        .collect();
    let desc = CustomOpIr::new(name, &in_ir, &out_ir);
    let op = MergeOp::<B> { desc: desc.clone(), inputs: in_kinds, outputs: out_kinds, run };
    client.register(streams, OperationIr::Custom(desc), op)
}

fn float<B: FusionBackend>(p: Prim<B>) -> FloatTensor<B> {
    match p {
        Prim::Float(t) => t,
        Prim::Int(_) => unreachable!("declared as a float operand"),
    }
}

fn int<B: FusionBackend>(p: Prim<B>) -> IntTensor<B> {
    match p {
        Prim::Int(t) => t,
        Prim::Float(_) => unreachable!("declared as an int operand"),
    }
}

/// Inner-backend merge indices from int primitives (slots, kept, then optionally the members).
fn inner_indices<B: FusionBackend>(mut ints: Vec<IntTensor<B>>) -> MergeIndices<B> {
    let members = (ints.len() == 4).then(|| {
        let m = ints.pop().expect("four");
        let o = ints.pop().expect("four");
        (Tensor::from_primitive(o), Tensor::from_primitive(m))
    });
    let kept = ints.pop().expect("kept tokens");
    let slots = ints.pop().expect("slots");
    MergeIndices { slot_of_token: Tensor::from_primitive(slots), kept_token: Tensor::from_primitive(kept), members }
}

/// The int operands of fused merge indices, in [`inner_indices`] order.
fn index_operands<B: FusionBackend>(indices: &MergeIndices<Fusion<B>>) -> Vec<(Kind, FusionTensor<B::FusionRuntime>)> {
    let mut v = vec![indices.slot_of_token.clone(), indices.kept_token.clone()];
    if let Some((o, m)) = &indices.members {
        v.extend([o.clone(), m.clone()]);
    }
    v.into_iter().map(|t| (Kind::Int, t.into_primitive())).collect()
}

/// The matching as one custom op: from the scores (`metric` false, [`SparseAttentionBackend::merge_match`])
/// or from the unit metric (`metric` true, [`SparseAttentionBackend::merge_match_metric`]).
pub(super) fn merge_match<B: FusionBackend + SparseAttentionBackend>(
    input: Tensor<Fusion<B>, 4>,
    layout: &MergeLayout,
    metric: bool,
) -> MergeIndices<Fusion<B>> {
    let [b, m, _, _] = input.dims();
    let groups = b * m;
    if !B::merge_kernels_apply(&input.device(), layout, groups, input.dtype()) {
        let scores = if metric { unit_scores(input, layout) } else { input };
        return match_reference(scores, layout);
    }
    let (n, n_kept, d, rs) = (layout.n, layout.n_kept(), layout.dst_token.len(), layout.r.max(1));
    let int_dtype = B::IntElem::dtype();
    let shared = Arc::new(layout.clone());
    let run: Arc<KernelFn<B>> = Arc::new(move |ins: Vec<Prim<B>>| {
        let x = ins.into_iter().next().map(float::<B>).expect("one input");
        let x = Tensor::from_primitive(TensorPrimitive::Float(x));
        let idx = if metric { B::merge_match_metric(x, &shared) } else { B::merge_match(x, &shared) };
        let (o, m) = idx.members.expect("the kernels were checked to apply");
        [idx.slot_of_token, idx.kept_token, o, m].into_iter().map(|t| Prim::Int(t.into_primitive())).collect()
    });
    let outputs = [vec![groups, n], vec![groups, n_kept], vec![groups, d + 1], vec![groups, rs]]
        .into_iter()
        .map(|s| (Kind::Int, s, int_dtype))
        .collect();
    let name = if metric { "dit_attention::merge_match_metric" } else { "dit_attention::merge_match" };
    let outs = register::<B>(name, vec![(Kind::Float, input.into_primitive().tensor())], outputs, run);
    let mut t = outs.into_iter().map(Tensor::<Fusion<B>, 2, Int>::from_primitive);
    let (slot_of_token, kept_token) = (t.next().expect("4"), t.next().expect("4"));
    let members = Some((t.next().expect("4"), t.next().expect("4")));
    MergeIndices { slot_of_token, kept_token, members }
}

/// The unit metric as one custom op over `a` (and `b`), where the inner backend's kernels take
/// them; the burn-tensor composite otherwise.
fn merge_unit_metric<B: FusionBackend + SparseAttentionBackend>(
    a: Tensor<Fusion<B>, 4>,
    b: Option<Tensor<Fusion<B>, 4>>,
) -> Tensor<Fusion<B>, 4> {
    let [bs, h, n, ca] = a.dims();
    let cb = b.as_ref().map(|b| b.dims()[3]);
    let width = unit_metric_width(ca, cb);
    let same = b.as_ref().is_none_or(|b| b.dtype() == a.dtype() && b.dims()[..3] == a.dims()[..3]);
    if !same || !B::merge_unit_metric_applies(&a.device(), a.dtype(), bs * h * n * width) {
        return unit_metric(metric_rows(a, b));
    }
    let dtype = a.dtype();
    let run: Arc<KernelFn<B>> = Arc::new(move |ins: Vec<Prim<B>>| {
        let mut ins = ins.into_iter().map(|p| Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(float::<B>(p))));
        let a = ins.next().expect("a");
        vec![Prim::Float(B::merge_unit_metric(a, ins.next()).into_primitive().tensor())]
    });
    let mut inputs = vec![(Kind::Float, a.into_primitive().tensor())];
    inputs.extend(b.map(|b| (Kind::Float, b.into_primitive().tensor())));
    let out = register::<B>(
        "dit_attention::merge_unit_metric",
        inputs,
        vec![(Kind::Float, vec![bs, h, n, width], dtype)],
        run,
    );
    Tensor::from_primitive(TensorPrimitive::Float(out.into_iter().next().expect("one output")))
}

/// A float kernel over `x` and the indices: segment sums or the unmerge gather.
fn merge_data<B: FusionBackend + SparseAttentionBackend>(
    name: &'static str,
    x: Tensor<Fusion<B>, 4>,
    indices: &MergeIndices<Fusion<B>>,
    layout: &MergeLayout,
    out_shape: [usize; 4],
    sum: bool,
) -> Tensor<Fusion<B>, 4> {
    let dtype = x.dtype();
    let shared = Arc::new(layout.clone());
    let run: Arc<KernelFn<B>> = Arc::new(move |ins: Vec<Prim<B>>| {
        let mut ins = ins.into_iter();
        let x = Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(float::<B>(ins.next().expect("x"))));
        let idx = inner_indices::<B>(ins.map(int::<B>).collect());
        let out = if sum { B::merge_segment_sum(x, &idx, &shared) } else { B::merge_gather(x, &idx, &shared) };
        vec![Prim::Float(out.into_primitive().tensor())]
    });
    let mut inputs = vec![(Kind::Float, x.into_primitive().tensor())];
    inputs.extend(index_operands::<B>(indices));
    let out = register::<B>(name, inputs, vec![(Kind::Float, out_shape.to_vec(), dtype)], run);
    Tensor::from_primitive(TensorPrimitive::Float(out.into_iter().next().expect("one output")))
}

pub(super) fn merge_segment_sum<B: FusionBackend + SparseAttentionBackend>(
    x: Tensor<Fusion<B>, 4>,
    indices: &MergeIndices<Fusion<B>>,
    layout: &MergeLayout,
) -> Tensor<Fusion<B>, 4> {
    if indices.members.is_none() {
        return segment_sum_reference(x, indices, layout);
    }
    let [g, reps, _, c] = x.dims();
    merge_data("dit_attention::merge_segment_sum", x, indices, layout, [g, reps, layout.n_kept(), c], true)
}

pub(super) fn merge_gather<B: FusionBackend + SparseAttentionBackend>(
    y: Tensor<Fusion<B>, 4>,
    indices: &MergeIndices<Fusion<B>>,
    layout: &MergeLayout,
) -> Tensor<Fusion<B>, 4> {
    if indices.members.is_none() {
        return gather_reference(y, indices, layout);
    }
    let [g, reps, _, c] = y.dims();
    merge_data("dit_attention::merge_gather", y, indices, layout, [g, reps, layout.n, c], false)
}

fn dynamic_select<B: FusionBackend + SparseAttentionBackend>(
    masses: Tensor<Fusion<B>, 3>,
    job: &SelectJob,
) -> BlockSelection<Fusion<B>> {
    let job = *job;
    let rows = job.bh * job.nqb;
    let int_dtype = B::IntElem::dtype();
    let run: Arc<KernelFn<B>> = Arc::new(move |ins: Vec<Prim<B>>| {
        let masses = float::<B>(ins.into_iter().next().expect("one input"));
        let sel = B::dynamic_select(Tensor::from_primitive(TensorPrimitive::Float(masses)), &job);
        vec![Prim::Int(sel.counts.into_primitive()), Prim::Int(sel.indices.into_primitive())]
    });
    let outputs = vec![(Kind::Int, vec![rows], int_dtype), (Kind::Int, vec![rows, job.nkb], int_dtype)];
    let input = masses.clone().into_primitive().tensor();
    let mut outs = register::<B>("dit_attention::dynamic_select", vec![(Kind::Float, input)], outputs, run).into_iter();
    let counts = Tensor::<Fusion<B>, 1, Int>::from_primitive(outs.next().expect("2"));
    let indices = Tensor::<Fusion<B>, 2, Int>::from_primitive(outs.next().expect("2"));
    BlockSelection { masses, counts, indices }
}

fn top_sum<B: FusionBackend + SparseAttentionBackend>(x: Tensor<Fusion<B>, 2>, m: usize) -> Tensor<Fusion<B>, 1> {
    let [rows, _] = x.dims();
    let dtype = x.dtype();
    let run: Arc<KernelFn<B>> = Arc::new(move |ins: Vec<Prim<B>>| {
        let x = float::<B>(ins.into_iter().next().expect("one input"));
        let sums = B::top_sum(Tensor::from_primitive(TensorPrimitive::Float(x)), m);
        vec![Prim::Float(sums.into_primitive().tensor())]
    });
    let input = x.into_primitive().tensor();
    let mut outs = register::<B>(
        "dit_attention::top_sum",
        vec![(Kind::Float, input)],
        vec![(Kind::Float, vec![rows], dtype)],
        run,
    );
    Tensor::from_primitive(TensorPrimitive::Float(outs.pop().expect("one output")))
}

fn chunk_masses<B: FusionBackend + SparseAttentionBackend>(
    rows: Tensor<Fusion<B>, 4>,
    lse: Tensor<Fusion<B>, 3>,
    geometry: &ChunkGeometry,
) -> Option<Tensor<Fusion<B>, 3>> {
    let g = *geometry;
    // The inner backend's own shape checks, here, so the registered op cannot find them false.
    if !chunk_shapes_match(&rows, &lse, &g) || !B::chunk_masses_apply(&rows.device(), rows.dtype(), &g) {
        return None;
    }
    let run: Arc<KernelFn<B>> = Arc::new(move |ins: Vec<Prim<B>>| {
        let mut ins = ins.into_iter().map(float::<B>);
        let rows = Tensor::from_primitive(TensorPrimitive::Float(ins.next().expect("two inputs")));
        let lse = Tensor::from_primitive(TensorPrimitive::Float(ins.next().expect("two inputs")));
        let masses = B::chunk_masses(rows, lse, &g).expect("chunk_masses_apply held when the op was registered");
        vec![Prim::Float(masses.into_primitive().tensor())]
    });
    let mut outs = register::<B>(
        "dit_attention::chunk_masses",
        vec![(Kind::Float, rows.into_primitive().tensor()), (Kind::Float, lse.into_primitive().tensor())],
        vec![(Kind::Float, vec![g.bh, g.nqb, g.nkb], DType::F32)],
        run,
    );
    Some(Tensor::from_primitive(TensorPrimitive::Float(outs.pop().expect("one output"))))
}

fn frame_statistics<B: FusionBackend + SparseAttentionBackend>(
    scores: Tensor<Fusion<B>, 3>,
    samples: usize,
    rows: &FrameRows,
    top: usize,
) -> Option<FrameStatistics<Fusion<B>>> {
    let [p, r, _] = scores.dims();
    if !B::frame_statistics_apply(&scores.device(), scores.dtype(), p, samples, rows) {
        return None;
    }
    let geometry = *rows;
    let run: Arc<KernelFn<B>> = Arc::new(move |ins: Vec<Prim<B>>| {
        let x = float::<B>(ins.into_iter().next().expect("one input"));
        let s = B::frame_statistics(Tensor::from_primitive(TensorPrimitive::Float(x)), samples, &geometry, top)
            .expect("frame_statistics_apply held when the op was registered");
        [s.rows.into_primitive().tensor(), s.energy.into_primitive().tensor(), s.top_mass.into_primitive().tensor()]
            .into_iter()
            .map(Prim::Float)
            .collect()
    });
    let input = scores.into_primitive().tensor();
    let mut outs = register::<B>(
        "dit_attention::frame_statistics",
        vec![(Kind::Float, input)],
        vec![
            (Kind::Float, vec![p, r, rows.width()], DType::F32),
            (Kind::Float, vec![p], DType::F32),
            (Kind::Float, vec![p * samples], DType::F32),
        ],
        run,
    )
    .into_iter();
    let mut next = || TensorPrimitive::Float(outs.next().expect("three outputs"));
    let rows = Tensor::from_primitive(next());
    Some(FrameStatistics { rows, energy: Tensor::from_primitive(next()), top_mass: Tensor::from_primitive(next()) })
}

fn forward_lists<B: FusionBackend + SparseAttentionBackend>(
    q: FloatTensor<Fusion<B>>,
    k: FloatTensor<Fusion<B>>,
    v: FloatTensor<Fusion<B>>,
    bias: Option<FloatTensor<Fusion<B>>>,
    lists: &BlockLists<Fusion<B>>,
) -> (FloatTensor<Fusion<B>>, FloatTensor<Fusion<B>>) {
    let (blocks, scale, has_bias) = (lists.blocks.clone(), lists.scale, bias.is_some());
    let [batch, heads, q_len] = [q.shape[0], q.shape[1], q.shape[2]];
    let (value_dim, dtype) = (v.shape[3], q.dtype);
    let run: Arc<KernelFn<B>> = Arc::new(move |ins: Vec<Prim<B>>| {
        let mut it = ins.into_iter();
        let mut next_float = || float::<B>(it.next().expect("declared operand"));
        let (q, k, v) = (next_float(), next_float(), next_float());
        let bias = has_bias.then(&mut next_float);
        let mut ints = it.map(int::<B>);
        let counts = Tensor::from_primitive(ints.next().expect("counts"));
        let indices = Tensor::from_primitive(ints.next().expect("indices"));
        let lists = BlockLists { blocks: blocks.clone(), counts, indices, scale };
        let (out, lse) = B::sparse_attention_forward_lists(q, k, v, bias, &lists);
        vec![Prim::Float(out), Prim::Float(lse)]
    });
    let mut inputs = vec![(Kind::Float, q), (Kind::Float, k), (Kind::Float, v)];
    inputs.extend(bias.map(|b| (Kind::Float, b)));
    inputs.push((Kind::Int, lists.counts.clone().into_primitive()));
    inputs.push((Kind::Int, lists.indices.clone().into_primitive()));
    let outputs = vec![
        (Kind::Float, vec![batch, heads, q_len, value_dim], dtype),
        (Kind::Float, vec![batch, heads, q_len], DType::F32),
    ];
    let mut outs = register::<B>("dit_attention::block_list_forward", inputs, outputs, run).into_iter();
    let out = outs.next().expect("two outputs");
    (out, outs.next().expect("two outputs"))
}

/// The backward as one custom operation running `B`'s (inputs: q, k, v, out, lse, then the
/// upstream gradients and the bias that are present).
fn backward<B: FusionBackend + SparseAttentionBackend>(
    x: GradInputs<Fusion<B>>,
    plan: &KernelPlan,
) -> BackwardGrads<Fusion<B>> {
    let (q_shape, k_shape, v_shape, dtype) = (x.q.shape.to_vec(), x.k.shape.to_vec(), x.v.shape.to_vec(), x.q.dtype);
    let present = [x.d_out.is_some(), x.d_lse.is_some(), x.bias.is_some()];
    let mut outputs = vec![(Kind::Float, q_shape, dtype), (Kind::Float, k_shape, dtype), (Kind::Float, v_shape, dtype)];
    outputs.extend(x.bias.as_ref().map(|t| (Kind::Float, t.shape.to_vec(), t.dtype)));
    let mut inputs: Vec<_> = [x.q, x.k, x.v, x.out, x.lse].map(|t| (Kind::Float, t)).into();
    inputs.extend([x.d_out, x.d_lse, x.bias].into_iter().flatten().map(|t| (Kind::Float, t)));
    let plan = plan.clone();
    let run: Arc<KernelFn<B>> = Arc::new(move |ins: Vec<Prim<B>>| {
        let mut it = ins.into_iter().map(float::<B>);
        let mut next = || it.next().expect("declared inputs");
        let (q, k, v, out, lse) = (next(), next(), next(), next(), next());
        let [d_out, d_lse, bias] = present.map(|p| p.then(&mut next));
        let g = B::sparse_attention_backward(GradInputs { q, k, v, bias, out, lse, d_out, d_lse }, &plan);
        let mut outs = vec![Prim::Float(g.dq), Prim::Float(g.dk), Prim::Float(g.dv)];
        outs.extend(g.dbias.map(Prim::Float));
        outs
    });
    let mut outs = register::<B>("dit_attention::block_sparse_backward", inputs, outputs, run).into_iter();
    let mut next = || outs.next().expect("declared outputs");
    let (dq, dk, dv) = (next(), next(), next());
    let dbias = present[2].then(next);
    BackwardGrads { dq, dk, dv, dbias }
}

fn checked_matmul<B: FusionBackend + SparseAttentionBackend>(
    a: Tensor<Fusion<B>, 4>,
    b: Tensor<Fusion<B>, 4>,
) -> Tensor<Fusion<B>, 4> {
    let ([b0, h, m, k], [b1, h1, k1, n]) = (a.dims(), b.dims());
    if [b0, h, k] != [b1, h1, k1] {
        // Broadcast batch dims are outside the contract: burn's matmul takes them.
        return a.matmul(b);
    }
    let dtype = a.dtype();
    let run: Arc<KernelFn<B>> = Arc::new(|ins: Vec<Prim<B>>| {
        let mut it = ins.into_iter().map(|p| Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(float::<B>(p))));
        let (a, b) = (it.next().expect("a"), it.next().expect("b"));
        vec![Prim::Float(B::checked_matmul(a, b).into_primitive().tensor())]
    });
    let inputs = vec![(Kind::Float, a.into_primitive().tensor()), (Kind::Float, b.into_primitive().tensor())];
    let mut outs =
        register::<B>("dit_attention::checked_matmul", inputs, vec![(Kind::Float, vec![b0, h, m, n], dtype)], run);
    Tensor::from_primitive(TensorPrimitive::Float(outs.pop().expect("one output")))
}
