//! CubeCL backends (`CubeBackend<R, ..>`: CUDA, wgpu): the engine's kernels.

use burn::tensor::{DType, Shape, Tensor};
use burn_cubecl::{
    BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement, kernel::into_contiguous, tensor::CubeTensor,
};
use dit_attention_kernels::attention::{
    BackwardInputs, BlockMapArrays, ForwardPath, ForwardProblem, KernelElem, TC_ROWS, backward_elem, forward_elem,
};

use dit_attention_kernels::dynamic::{ChunkGeometry, SelectJob};
use dit_attention_kernels::matmul::{launch_batched_matmul, matmul_fits};
use dit_attention_kernels::stats::FrameRows;

use super::backend::{
    BackwardGrads, BlockLists, BlockSelection, FrameStatistics, GradInputs, MergeIndices, SparseAttentionBackend,
    reference_backward, reference_forward, unwrap, wrap,
};
use crate::error::{DitAttentionError, Result};
use crate::merge::MergeLayout;
use crate::plan::KernelPlan;

/// Largest launch-grid dimension every runtime takes.
const GRID_LIMIT: usize = 65_535;

/// Largest head dim of the portable kernel (one query row lives in a unit's registers).
pub(crate) const PORTABLE_MAX_HEAD_DIM: usize = 256;

pub(super) fn kernel_elem(dtype: DType) -> Option<KernelElem> {
    match dtype {
        DType::F32 => Some(KernelElem::F32),
        DType::F16 => Some(KernelElem::F16),
        DType::BF16 => Some(KernelElem::BF16),
        _ => None,
    }
}

impl<R, F, I, BT> SparseAttentionBackend for CubeBackend<R, F, I, BT>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    fn sparse_attention_support(device: &Self::Device, dtype: DType, head_dim: usize, value_dim: usize) -> Result<()> {
        let path = || "CubeCL kernel".to_string();
        let Some(elem) = kernel_elem(dtype) else {
            return Err(DitAttentionError::Unsupported {
                path: path(),
                what: format!("dtype {dtype:?} (f32, f16 and bf16 are)"),
            });
        };
        let client = R::client(device);
        if !elem.supported(&client) {
            return Err(DitAttentionError::Unsupported {
                path: path(),
                what: format!("dtype {dtype:?}: the runtime does not report it"),
            });
        }
        for (what, d) in [("head dim", head_dim), ("value head dim", value_dim)] {
            if d > PORTABLE_MAX_HEAD_DIM {
                return Err(DitAttentionError::Unsupported {
                    path: path(),
                    what: format!("{what} {d} (at most {PORTABLE_MAX_HEAD_DIM})"),
                });
            }
        }
        Ok(())
    }

    fn sparse_attention_check_plan(_device: &Self::Device, plan: &KernelPlan, batch_heads: usize) -> Result<()> {
        // One cube per (query block, chunk of the smallest row count of any path) and per
        // (batch, head), and for the backward's dK/dV the same per key block; grid dimensions
        // are limited to 65,535 on some runtimes.
        for (what, starts) in [("query", plan.q_starts()), ("key", plan.k_starts())] {
            let largest = starts.windows(2).map(|w| (w[1] - w[0]) as usize).max().unwrap_or(1);
            let cubes = (starts.len() - 1) * largest.div_ceil(TC_ROWS.min(64)).max(1);
            if cubes > GRID_LIMIT || batch_heads > GRID_LIMIT {
                return Err(DitAttentionError::Unsupported {
                    path: "CubeCL kernel".into(),
                    what: format!(
                        "{cubes} {what} cubes ({} {what} blocks, the largest of {largest} rows) x {batch_heads} batch-heads: each must be at most {GRID_LIMIT}",
                        starts.len() - 1
                    ),
                });
            }
        }
        Ok(())
    }

    fn sparse_attention_path(device: &Self::Device, dtype: DType, head_dim: usize, value_dim: usize) -> &'static str {
        match kernel_elem(dtype) {
            Some(elem) => ForwardPath::choose(&R::client(device), elem, head_dim, value_dim).name(),
            None => "burn-tensor reference",
        }
    }

    fn sparse_attention_forward(
        q: CubeTensor<R>,
        k: CubeTensor<R>,
        v: CubeTensor<R>,
        bias: Option<CubeTensor<R>>,
        plan: &KernelPlan,
    ) -> (CubeTensor<R>, CubeTensor<R>) {
        let elem = kernel_elem(q.dtype);
        // The LSE is f32 on this backend whichever path runs (the fusion layer declares it so).
        if elem.is_none() {
            let (out, lse) = reference_forward::<Self>(q, k, v, bias, plan);
            return (out, unwrap(wrap::<Self, 3>(lse).cast(DType::F32)));
        }
        launch_forward(q, k, v, bias, elem.expect("checked above"), plan.kernel_arrays(), plan.scale())
    }

    fn sparse_attention_backward(x: GradInputs<Self>, plan: &KernelPlan) -> BackwardGrads<Self> {
        match kernel_elem(x.q.dtype) {
            Some(elem) => launch_backward(x, elem, plan),
            None => reference_backward::<Self>(x, plan),
        }
    }

    fn dynamic_select(masses: Tensor<Self, 3>, job: &SelectJob) -> BlockSelection<Self> {
        super::cube_dynamic::select(masses, job)
    }

    fn sparse_attention_forward_lists(
        q: CubeTensor<R>,
        k: CubeTensor<R>,
        v: CubeTensor<R>,
        bias: Option<CubeTensor<R>>,
        lists: &BlockLists<Self>,
    ) -> (CubeTensor<R>, CubeTensor<R>) {
        super::cube_dynamic::forward_lists(q, k, v, bias, lists)
    }

    fn top_sum(x: Tensor<Self, 2>, m: usize) -> Tensor<Self, 1> {
        super::cube_dynamic::top_sum(x, m)
    }

    fn chunk_masses_apply(device: &Self::Device, dtype: DType, geometry: &ChunkGeometry) -> bool {
        super::cube_dynamic::chunk_masses_apply::<R>(device, dtype, geometry)
    }

    fn chunk_masses(rows: Tensor<Self, 4>, lse: Tensor<Self, 3>, geometry: &ChunkGeometry) -> Option<Tensor<Self, 3>> {
        super::cube_dynamic::chunk_masses(rows, lse, geometry)
    }

    fn frame_statistics_apply(
        device: &Self::Device,
        dtype: DType,
        heads: usize,
        samples: usize,
        rows: &FrameRows,
    ) -> bool {
        super::cube_dynamic::frame_statistics_apply::<R>(device, dtype, heads, samples, rows)
    }

    fn frame_statistics(
        scores: Tensor<Self, 3>,
        samples: usize,
        rows: &FrameRows,
        top: usize,
    ) -> Option<FrameStatistics<Self>> {
        super::cube_dynamic::frame_statistics(scores, samples, rows, top)
    }

    fn checked_matmul(a: Tensor<Self, 4>, b: Tensor<Self, 4>) -> Tensor<Self, 4> {
        checked_matmul(a, b)
    }

    fn merge_kernels_apply(device: &Self::Device, layout: &MergeLayout, groups: usize, dtype: DType) -> bool {
        merge::applies::<R>(device, layout, groups, dtype)
    }

    fn merge_match(scores: Tensor<Self, 4>, layout: &MergeLayout) -> MergeIndices<Self> {
        merge::match_tokens(scores, layout)
    }

    fn merge_match_metric(unit: Tensor<Self, 4>, layout: &MergeLayout) -> MergeIndices<Self> {
        merge::match_metric(unit, layout)
    }

    fn merge_unit_metric_applies(device: &Self::Device, dtype: DType, elements: usize) -> bool {
        merge::unit_metric_applies::<R>(device, dtype, elements)
    }

    fn merge_unit_metric(a: Tensor<Self, 4>, b: Option<Tensor<Self, 4>>) -> Tensor<Self, 4> {
        merge::unit_metric(a, b)
    }

    fn merge_segment_sum(x: Tensor<Self, 4>, indices: &MergeIndices<Self>, layout: &MergeLayout) -> Tensor<Self, 4> {
        merge::segment_sum(x, indices, layout)
    }

    fn merge_gather(y: Tensor<Self, 4>, indices: &MergeIndices<Self>, layout: &MergeLayout) -> Tensor<Self, 4> {
        merge::gather(y, indices, layout)
    }
}

/// Runs the forward kernel of `elem` over `map` (inputs of any layout).
pub(super) fn launch_forward<R: CubeRuntime>(
    q: CubeTensor<R>,
    k: CubeTensor<R>,
    v: CubeTensor<R>,
    bias: Option<CubeTensor<R>>,
    elem: KernelElem,
    map: BlockMapArrays<'_>,
    scale: f64,
) -> (CubeTensor<R>, CubeTensor<R>) {
    let (q, k, v) = (into_contiguous(q), into_contiguous(k), into_contiguous(v));
    let qs = q.meta.shape().clone();
    let (batch, heads, q_len, head_dim) = (qs[0], qs[1], qs[2], qs[3]);
    let k_len = k.meta.shape()[2];
    let value_dim = v.meta.shape()[3];
    let bias = bias.map(into_contiguous);
    let bias = bias.as_ref().map(|b| bias_arg(b, k_len));
    let problem = ForwardProblem { batch, heads, q_len, k_len, head_dim, value_dim, scale: scale as f32 };
    let path = ForwardPath::choose(&q.client, elem, head_dim, value_dim);
    let (qh, kh, vh) = (q.handle.clone(), k.handle.clone(), v.handle.clone());
    let result = forward_elem::<R>(&q.client, path, elem, qh, kh, vh, bias, map, problem);
    let out = CubeTensor::new_contiguous(
        q.client.clone(),
        q.device.clone(),
        Shape::from([batch, heads, q_len, value_dim]),
        result.out,
        q.dtype,
    );
    let lse = CubeTensor::new_contiguous(
        q.client.clone(),
        q.device.clone(),
        Shape::from([batch, heads, q_len]),
        result.lse,
        DType::F32,
    );
    (out, lse)
}

/// A contiguous `[b, h, k_len]` bias (b, h each 1 or full) as the kernels take it: the buffer and
/// its batch and head strides (0 over a broadcast dim).
fn bias_arg<R: CubeRuntime>(
    b: &CubeTensor<R>,
    k_len: usize,
) -> (dit_attention_kernels::cubecl::server::Handle, usize, usize) {
    let shape = b.meta.shape();
    let batch_stride = if shape[0] == 1 { 0 } else { shape[1] * k_len };
    let head_stride = if shape[1] == 1 { 0 } else { k_len };
    (b.handle.clone(), batch_stride, head_stride)
}

/// Runs the backward kernels over `plan` (inputs of any layout and float dtype for the LSE and
/// its gradient); an absent upstream gradient is zero, with no buffer made for it.
fn launch_backward<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    x: GradInputs<CubeBackend<R, F, I, BT>>,
    elem: KernelElem,
    plan: &KernelPlan,
) -> BackwardGrads<CubeBackend<R, F, I, BT>> {
    type Cube<R, F, I, BT> = CubeBackend<R, F, I, BT>;
    let dtype = x.q.dtype;
    let (q, k, v, out) = (into_contiguous(x.q), into_contiguous(x.k), into_contiguous(x.v), into_contiguous(x.out));
    let qs = q.meta.shape().clone();
    let (batch, heads, q_len, head_dim) = (qs[0], qs[1], qs[2], qs[3]);
    let k_len = k.meta.shape()[2];
    let value_dim = v.meta.shape()[3];
    let device = q.device.clone();
    let f32_contiguous = |t: CubeTensor<R>| into_contiguous(unwrap(wrap::<Cube<R, F, I, BT>, 3>(t).cast(DType::F32)));
    let lse = f32_contiguous(x.lse);
    let d_out = x.d_out.map(|g| into_contiguous(unwrap(wrap::<Cube<R, F, I, BT>, 4>(g).cast(dtype))));
    let d_lse = x.d_lse.map(f32_contiguous);
    let bias = x.bias.map(into_contiguous);
    let bias_dims = bias.as_ref().map(|b| [b.meta.shape()[0], b.meta.shape()[1]]);
    let inputs = BackwardInputs {
        q: q.handle.clone(),
        k: k.handle.clone(),
        v: v.handle.clone(),
        bias: bias.as_ref().map(|b| bias_arg(b, k_len)),
        out: out.handle.clone(),
        lse: lse.handle.clone(),
        d_out: d_out.as_ref().map(|t| t.handle.clone()),
        d_lse: d_lse.as_ref().map(|t| t.handle.clone()),
    };
    let problem = ForwardProblem { batch, heads, q_len, k_len, head_dim, value_dim, scale: plan.scale() as f32 };
    // The forward's path: the same runtime features decide it.
    let path = ForwardPath::choose(&q.client, elem, head_dim, value_dim);
    let (map, transposed) = (plan.kernel_arrays(), plan.transposed_kernel_arrays());
    let g = backward_elem::<R>(&q.client, path, elem, inputs, map, transposed, problem);
    let tensor = |handle, shape: Vec<usize>, dtype| {
        CubeTensor::new_contiguous(q.client.clone(), device.clone(), Shape::from(shape), handle, dtype)
    };
    let dbias = g.dbias.zip(bias_dims).map(|(h, [b0, h0])| {
        // Per (batch, head) sums, reduced over the bias's broadcast dims, in its dtype.
        let mut t = wrap::<Cube<R, F, I, BT>, 3>(tensor(h, vec![batch, heads, k_len], DType::F32));
        if b0 == 1 {
            t = t.sum_dim(0);
        }
        if h0 == 1 {
            t = t.sum_dim(1);
        }
        unwrap(t.cast(dtype))
    });
    BackwardGrads {
        dq: tensor(g.dq, vec![batch, heads, q_len, head_dim], dtype),
        dk: tensor(g.dk, vec![batch, heads, k_len, head_dim], dtype),
        dv: tensor(g.dv, vec![batch, heads, k_len, value_dim], dtype),
        dbias,
    }
}

/// Token merging on CubeCL backends: the kernels of `dit_attention_kernels::merge`.
pub(crate) mod merge {
    use burn::tensor::{DType, Int, Shape, Tensor};
    use burn_cubecl::tensor::CubeTensor;
    use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement, kernel::into_contiguous};
    use dit_attention_kernels::attention::KernelElem;
    use dit_attention_kernels::merge::{
        MatchLaunch, MatchOutput, MetricMatch, RowsShape, launch_gather_rows, launch_match, launch_match_metric,
        launch_segment_sum, launch_unit_metric, match_fits, metric_match_path, unit_metric_tile,
    };

    use super::{GRID_LIMIT, kernel_elem};
    use crate::glue::{MergeIndices, unwrap, wrap};
    use crate::merge::reference::{gather_reference, match_reference, segment_sum_reference};
    use crate::merge::{MergeLayout, unit_scores};

    type Cube<R, F, I, BT> = CubeBackend<R, F, I, BT>;

    pub(crate) fn applies<R: CubeRuntime>(
        device: &R::Device,
        layout: &MergeLayout,
        groups: usize,
        dtype: DType,
    ) -> bool {
        let client = R::client(device);
        layout.r > 0
            && kernel_elem(dtype).is_some_and(|e| e.supported(&client))
            && groups <= GRID_LIMIT
            && groups * layout.n < u32::MAX as usize
            && match_fits(&client, layout.src_token.len(), layout.dst_token.len())
    }

    fn int_tensor<R: CubeRuntime, I: IntElement, const D: usize>(
        like: &CubeTensor<R>,
        handle: dit_attention_kernels::cubecl::server::Handle,
        shape: [usize; D],
    ) -> CubeTensor<R> {
        CubeTensor::new_contiguous(like.client.clone(), like.device.clone(), Shape::from(shape), handle, I::dtype())
    }

    pub(crate) fn match_tokens<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
        scores: Tensor<Cube<R, F, I, BT>, 4>,
        layout: &MergeLayout,
    ) -> MergeIndices<Cube<R, F, I, BT>> {
        let [outer, inner, _, _] = scores.dims();
        let groups = outer * inner;
        // The scores as the matmul wrote them: the kernel reads any strides (no 4 GB copy), in
        // 32-bit offsets (the fused matching forms no score matrix).
        let s: CubeTensor<R> = unwrap(scores);
        let st = s.meta.strides();
        let strides = [st[0], st[1], st[2], st[3]];
        let dims = s.meta.shape().clone();
        let extent = 1 + (0..4).map(|i| dims[i].saturating_sub(1) * strides[i]).sum::<usize>();
        if extent >= u32::MAX as usize || !applies::<R>(&s.device, layout, groups, s.dtype) {
            return match_reference(wrap(s), layout);
        }
        let job = MatchLaunch { scores: s.handle.clone(), strides, groups, inner, tables: layout.tables() };
        let out: MatchOutput = match kernel_elem(s.dtype).expect("checked by applies") {
            KernelElem::F32 => launch_match::<R, f32, I>(&s.client, job),
            KernelElem::F16 => launch_match::<R, burn::tensor::f16, I>(&s.client, job),
            KernelElem::BF16 => launch_match::<R, burn::tensor::bf16, I>(&s.client, job),
        };
        indices_of::<R, F, I, BT>(&s, out, layout, groups)
    }

    pub(crate) fn unit_metric_applies<R: CubeRuntime>(device: &R::Device, dtype: DType, elements: usize) -> bool {
        kernel_elem(dtype).is_some_and(|e| e.supported(&R::client(device))) && elements < u32::MAX as usize
    }

    /// The unit metric in one kernel pass (rows staged in shared memory, their norms, the
    /// normalised rows) where it applies; the burn-tensor composite otherwise.
    pub(crate) fn unit_metric<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
        a: Tensor<Cube<R, F, I, BT>, 4>,
        b: Option<Tensor<Cube<R, F, I, BT>, 4>>,
    ) -> Tensor<Cube<R, F, I, BT>, 4> {
        let [bs, h, n, ca] = a.dims();
        let cb = b.as_ref().map_or(0, |b| b.dims()[3]);
        let width = crate::merge::unit_metric_width(ca, b.as_ref().map(|_| cb));
        let same = b.as_ref().is_none_or(|b| b.dtype() == a.dtype() && b.dims()[..3] == a.dims()[..3]);
        let rows = bs * h * n;
        let elem = kernel_elem(a.dtype()).filter(|_| same && unit_metric_tile(ca, cb).is_some());
        let Some(elem) = elem.filter(|_| unit_metric_applies::<R>(&a.device(), a.dtype(), rows * width.max(ca + cb)))
        else {
            return crate::merge::unit_metric(crate::merge::metric_rows(a, b));
        };
        let a: CubeTensor<R> = into_contiguous(unwrap(a));
        let b: Option<CubeTensor<R>> = b.map(|b| into_contiguous(unwrap(b)));
        let bh = b.as_ref().map(|b| &b.handle);
        let out = match elem {
            KernelElem::F32 => launch_unit_metric::<R, f32>(&a.client, &a.handle, bh, rows, [ca, cb], width),
            KernelElem::F16 => {
                launch_unit_metric::<R, burn::tensor::f16>(&a.client, &a.handle, bh, rows, [ca, cb], width)
            }
            KernelElem::BF16 => {
                launch_unit_metric::<R, burn::tensor::bf16>(&a.client, &a.handle, bh, rows, [ca, cb], width)
            }
        };
        wrap(CubeTensor::new_contiguous(
            a.client.clone(),
            a.device.clone(),
            Shape::from([bs, h, n, width]),
            out,
            a.dtype,
        ))
    }

    /// The fused matching (no score matrix) where the kernels apply and the metric's width
    /// fits one of its paths; the score matrix and [`match_tokens`] otherwise.
    pub(crate) fn match_metric<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
        unit: Tensor<Cube<R, F, I, BT>, 4>,
        layout: &MergeLayout,
    ) -> MergeIndices<Cube<R, F, I, BT>> {
        let [outer, inner, _, channels] = unit.dims();
        let groups = outer * inner;
        let elem = kernel_elem(unit.dtype());
        let client = R::client(&unit.device());
        let fits = applies::<R>(&unit.device(), layout, groups, unit.dtype())
            && !layout.dst_token.is_empty()
            && groups * layout.n * channels < u32::MAX as usize;
        let path = elem.filter(|_| fits).and_then(|e| metric_match_path(&client, e, channels).map(|p| (e, p)));
        let Some((elem, path)) = path else {
            return match_tokens(unit_scores(unit, layout), layout);
        };
        let u: CubeTensor<R> = into_contiguous(unwrap(unit));
        let job = MetricMatch { unit: u.handle.clone(), groups, channels, tables: layout.tables() };
        let out: MatchOutput = match elem {
            KernelElem::F32 => launch_match_metric::<R, f32, I>(&u.client, job, path),
            KernelElem::F16 => launch_match_metric::<R, burn::tensor::f16, I>(&u.client, job, path),
            KernelElem::BF16 => launch_match_metric::<R, burn::tensor::bf16, I>(&u.client, job, path),
        };
        indices_of::<R, F, I, BT>(&u, out, layout, groups)
    }

    /// The plan kernel's tables as burn int tensors.
    fn indices_of<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
        like: &CubeTensor<R>,
        out: MatchOutput,
        layout: &MergeLayout,
        groups: usize,
    ) -> MergeIndices<Cube<R, F, I, BT>> {
        let (n, n_kept, d, rs) = (layout.n, layout.n_kept(), layout.dst_token.len(), layout.r.max(1));
        let t = |h, shape: [usize; 2]| {
            Tensor::<Cube<R, F, I, BT>, 2, Int>::from_primitive(int_tensor::<R, I, 2>(like, h, shape))
        };
        MergeIndices {
            slot_of_token: t(out.slot_of_token, [groups, n]),
            kept_token: t(out.kept_token, [groups, n_kept]),
            members: Some((t(out.member_offsets, [groups, d + 1]), t(out.members, [groups, rs]))),
        }
    }

    pub(crate) fn segment_sum<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
        x: Tensor<Cube<R, F, I, BT>, 4>,
        indices: &MergeIndices<Cube<R, F, I, BT>>,
        layout: &MergeLayout,
    ) -> Tensor<Cube<R, F, I, BT>, 4> {
        let [groups, reps, n, c] = x.dims();
        let elem = kernel_elem(x.dtype());
        let Some(((offsets, members), elem)) = indices.members.as_ref().zip(elem) else {
            return segment_sum_reference(x, indices, layout);
        };
        if groups * reps * layout.n.max(layout.n_kept()) * c >= u32::MAX as usize {
            return segment_sum_reference(x, indices, layout);
        }
        let x = into_contiguous(unwrap(x));
        let handle = |t: &Tensor<Cube<R, F, I, BT>, 2, Int>| into_contiguous(t.clone().into_primitive()).handle;
        let plan = MatchOutput {
            slot_of_token: handle(&indices.slot_of_token),
            kept_token: handle(&indices.kept_token),
            member_offsets: handle(offsets),
            members: handle(members),
        };
        let shape = RowsShape { groups, reps, n, n_kept: layout.n_kept(), channels: c };
        let tables = layout.tables();
        let out = match elem {
            KernelElem::F32 => launch_segment_sum::<R, f32, I>(&x.client, x.handle.clone(), &plan, tables, shape),
            KernelElem::F16 => {
                launch_segment_sum::<R, burn::tensor::f16, I>(&x.client, x.handle.clone(), &plan, tables, shape)
            }
            KernelElem::BF16 => {
                launch_segment_sum::<R, burn::tensor::bf16, I>(&x.client, x.handle.clone(), &plan, tables, shape)
            }
        };
        let out = CubeTensor::new_contiguous(
            x.client.clone(),
            x.device.clone(),
            Shape::from([groups, reps, layout.n_kept(), c]),
            out,
            x.dtype,
        );
        wrap(out)
    }

    pub(crate) fn gather<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
        y: Tensor<Cube<R, F, I, BT>, 4>,
        indices: &MergeIndices<Cube<R, F, I, BT>>,
        layout: &MergeLayout,
    ) -> Tensor<Cube<R, F, I, BT>, 4> {
        let [groups, reps, n_kept, c] = y.dims();
        let Some(elem) = kernel_elem(y.dtype()) else {
            return gather_reference(y, indices, layout);
        };
        if groups * reps * layout.n * c >= u32::MAX as usize {
            return gather_reference(y, indices, layout);
        }
        let y = into_contiguous(unwrap(y));
        let slots = into_contiguous(indices.slot_of_token.clone().into_primitive()).handle;
        let shape = RowsShape { groups, reps, n: layout.n, n_kept, channels: c };
        let h = y.handle.clone();
        let out = match elem {
            KernelElem::F32 => launch_gather_rows::<R, f32, I>(&y.client, h, &slots, shape),
            KernelElem::F16 => launch_gather_rows::<R, burn::tensor::f16, I>(&y.client, h, &slots, shape),
            KernelElem::BF16 => launch_gather_rows::<R, burn::tensor::bf16, I>(&y.client, h, &slots, shape),
        };
        let out = CubeTensor::new_contiguous(
            y.client.clone(),
            y.device.clone(),
            Shape::from([groups, reps, layout.n, c]),
            out,
            y.dtype,
        );
        wrap(out)
    }
}

/// The bounds-checked matmul kernel where the grid and the dtype take the problem, burn's
/// otherwise.
fn checked_matmul<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    a: Tensor<CubeBackend<R, F, I, BT>, 4>,
    b: Tensor<CubeBackend<R, F, I, BT>, 4>,
) -> Tensor<CubeBackend<R, F, I, BT>, 4> {
    let ([b0, h, m, k], [b1, h1, k1, n]) = (a.dims(), b.dims());
    let elem = kernel_elem(a.dtype()).filter(|_| a.dtype() == b.dtype());
    let Some(elem) = elem.filter(|_| [b0, h, k] == [b1, h1, k1] && matmul_fits(b0 * h, m)) else {
        return a.matmul(b);
    };
    let a: CubeTensor<R> = into_contiguous(unwrap(a));
    // `b` as `swap_dims(2, 3)` of a contiguous `[.., n, k]` (keys, as attention holds them): read
    // in place by the transposed kernel instead of copied.
    let b: CubeTensor<R> = unwrap(b);
    let st = b.meta.strides();
    let transposed = st.len() == 4 && [st[0], st[1], st[2], st[3]] == [h * n * k, n * k, 1, k];
    let b = if transposed { b } else { into_contiguous(b) };
    let handle =
        launch_batched_matmul(&a.client, elem, a.handle.clone(), b.handle.clone(), transposed, [b0 * h, m, n, k]);
    let out =
        CubeTensor::new_contiguous(a.client.clone(), a.device.clone(), Shape::from([b0, h, m, n]), handle, a.dtype);
    wrap(out)
}
