//! Dynamic block-sparse and Combined attention on CubeCL backends: the selection kernel, the
//! forward kernel reading the kept blocks where the selection wrote them, the estimate's block
//! masses, the top-mass and the frame statistics.

use burn::tensor::{DType, Int, Shape, Tensor};
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement, kernel::into_contiguous};
use dit_attention_kernels::attention::{BlockMapArrays, KernelElem, KeyBlocks};
use dit_attention_kernels::dynamic::{ChunkGeometry, SelectJob, launch_chunk_masses, launch_select, select_fits};
use dit_attention_kernels::stats::{
    FrameRows, UNITS as STATS_UNITS, launch_cross_frame_energy, launch_frame_row_stats, launch_top_mass, launch_top_sum,
};

use super::backend::{
    BlockLists, BlockSelection, FrameStatistics, SparseAttentionBackend, chunk_shapes_match, unwrap, wrap,
};
use super::cube::{kernel_elem, launch_forward};
use crate::combined::{top_mass_of_probabilities, top_sum_reference};
use crate::dynamic::select_reference;

type Cube<R, F, I, BT> = CubeBackend<R, F, I, BT>;

/// The selection kernel where the runtime takes the row length, the host replay otherwise.
pub(super) fn select<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    masses: Tensor<Cube<R, F, I, BT>, 3>,
    job: &SelectJob,
) -> BlockSelection<Cube<R, F, I, BT>> {
    let fits = select_fits(job.nkb) && job.nqb <= 65_535 && job.bh <= 65_535;
    if !fits || job.nkb == 0 {
        return select_reference(masses, job);
    }
    let m: CubeTensor<R> = into_contiguous(unwrap(masses.clone().cast(DType::F32)));
    let out = launch_select::<R, I>(&m.client, m.handle.clone(), *job);
    let rows = job.bh * job.nqb;
    let tensor = |handle, shape: Vec<usize>| {
        CubeTensor::new_contiguous(m.client.clone(), m.device.clone(), Shape::from(shape), handle, I::dtype())
    };
    BlockSelection {
        masses,
        counts: Tensor::<Cube<R, F, I, BT>, 1, Int>::from_primitive(tensor(out.counts, vec![rows])),
        indices: Tensor::<Cube<R, F, I, BT>, 2, Int>::from_primitive(tensor(out.indices, vec![rows, job.nkb])),
    }
}

/// The forward kernel over device lists of 32-bit ints; other int dtypes read the lists back.
pub(super) fn forward_lists<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    q: CubeTensor<R>,
    k: CubeTensor<R>,
    v: CubeTensor<R>,
    bias: Option<CubeTensor<R>>,
    lists: &BlockLists<Cube<R, F, I, BT>>,
) -> (CubeTensor<R>, CubeTensor<R>) {
    // The kernel reads the lists as 32-bit words (whatever int dtype the caller built them in).
    let words = [lists.counts.dtype(), lists.indices.dtype()].iter().all(|d| matches!(d, DType::I32 | DType::U32));
    let Some(elem) = kernel_elem(q.dtype).filter(|_| words) else {
        let plan = lists.host_plan();
        return Cube::<R, F, I, BT>::sparse_attention_forward(q, k, v, bias, &plan);
    };
    let counts = into_contiguous(lists.counts.clone().into_primitive());
    let indices = into_contiguous(lists.indices.clone().into_primitive());
    let (rows, max_count) = (indices.meta.shape()[0], indices.meta.shape()[1]);
    let starts: Vec<u32> = lists.blocks.starts().iter().map(|&s| s as u32).collect();
    let map = BlockMapArrays {
        q_starts: &starts,
        k_starts: &starts,
        blocks: KeyBlocks::Device { counts: &counts.handle, indices: &indices.handle, rows, max_count },
        map_heads: rows / lists.blocks.len(),
        gather: None,
    };
    launch_forward(q, k, v, bias, elem, map, lists.scale)
}

/// The top-sum kernel (in f32, the result cast back to x's dtype) where the grid takes the rows.
pub(super) fn top_sum<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    x: Tensor<Cube<R, F, I, BT>, 2>,
    m: usize,
) -> Tensor<Cube<R, F, I, BT>, 1> {
    let [rows, n] = x.dims();
    if rows == 0 || rows > 65_535 || m == 0 || m > n {
        return top_sum_reference(x, m);
    }
    let dtype = x.dtype();
    let t: CubeTensor<R> = into_contiguous(unwrap(x.cast(DType::F32)));
    let sums = launch_top_sum(&t.client, t.handle.clone(), rows, n, m);
    let out = CubeTensor::new_contiguous(t.client.clone(), t.device.clone(), Shape::from(vec![rows]), sums, DType::F32);
    wrap::<Cube<R, F, I, BT>, 1>(out).cast(dtype)
}

/// Whether the frame-statistics kernels take `heads` heads of `t * samples` rows: a kernel
/// dtype the device runs, the rows and the per-(head, sample, frame) cubes within the grid, a
/// frame count a cube's units cover, and 32-bit offsets.
pub(super) fn frame_statistics_apply<R: CubeRuntime>(
    device: &R::Device,
    dtype: DType,
    heads: usize,
    samples: usize,
    rows: &FrameRows,
) -> bool {
    let n_rows = heads * rows.frames * samples;
    kernel_elem(dtype).is_some_and(|e| e.supported(&R::client(device)))
        && n_rows > 0
        && n_rows <= 65_535
        && rows.frame_len > 0
        && rows.frames <= STATS_UNITS
        && n_rows * rows.n.max(rows.width()) < u32::MAX as usize
}

/// The frame-statistics kernels: the per-row pass, then from its maxima and sums the top mass
/// of frame 0's rows, and from its masses and norms the cross-frame energy per (head, sample,
/// frame), summed per head.
pub(super) fn frame_statistics<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    scores: Tensor<Cube<R, F, I, BT>, 3>,
    samples: usize,
    rows: &FrameRows,
    top: usize,
) -> Option<FrameStatistics<Cube<R, F, I, BT>>> {
    let [p, r, n] = scores.dims();
    if !frame_statistics_apply::<R>(&scores.device(), scores.dtype(), p, samples, rows) {
        return None;
    }
    let (t, width) = (rows.frames, rows.width());
    let x: CubeTensor<R> = into_contiguous(unwrap(scores.clone()));
    let elem = kernel_elem(x.dtype)?;
    let handle = match elem {
        KernelElem::F32 => launch_frame_row_stats::<R, f32>(&x.client, &x.handle, p * r, *rows),
        KernelElem::F16 => launch_frame_row_stats::<R, burn::tensor::f16>(&x.client, &x.handle, p * r, *rows),
        KernelElem::BF16 => launch_frame_row_stats::<R, burn::tensor::bf16>(&x.client, &x.handle, p * r, *rows),
    };
    let f32_tensor = |handle, shape: Vec<usize>| {
        CubeTensor::new_contiguous(x.client.clone(), x.device.clone(), Shape::from(shape), handle, DType::F32)
    };
    let stats = wrap::<Cube<R, F, I, BT>, 3>(f32_tensor(handle.clone(), vec![p, r, width]));
    let parts = [&x.handle, &handle];
    let energy = match elem {
        KernelElem::F32 => launch_cross_frame_energy::<R, f32>(&x.client, parts, p, samples, *rows),
        KernelElem::F16 => launch_cross_frame_energy::<R, burn::tensor::f16>(&x.client, parts, p, samples, *rows),
        KernelElem::BF16 => launch_cross_frame_energy::<R, burn::tensor::bf16>(&x.client, parts, p, samples, *rows),
    };
    let energy = wrap::<Cube<R, F, I, BT>, 2>(f32_tensor(energy, vec![p, samples * t])).sum_dim(1).reshape([p]);
    let top = top.clamp(1, n);
    let top_mass = match elem {
        KernelElem::F32 => launch_top_mass::<R, f32>(&x.client, parts, p, samples, r, *rows, top),
        KernelElem::F16 => launch_top_mass::<R, burn::tensor::f16>(&x.client, parts, p, samples, r, *rows, top),
        KernelElem::BF16 => launch_top_mass::<R, burn::tensor::bf16>(&x.client, parts, p, samples, r, *rows, top),
    };
    let top_mass = match top_mass {
        Some(handle) => wrap::<Cube<R, F, I, BT>, 1>(f32_tensor(handle, vec![p * samples])),
        // Rows longer than a cube's registers hold: the probabilities, then the top sums.
        None => {
            let frame0 = scores.narrow(1, 0, samples).reshape([p * samples, n]).cast(DType::F32);
            top_mass_of_probabilities(burn::tensor::activation::softmax(frame0, 1), top)
        }
    };
    Some(FrameStatistics { rows: stats, energy, top_mass })
}

/// Whether the block-mass kernels take this engine output (see
/// [`SparseAttentionBackend::chunk_masses_apply`]).
pub(super) fn chunk_masses_apply<R: CubeRuntime>(device: &R::Device, dtype: DType, geometry: &ChunkGeometry) -> bool {
    kernel_elem(dtype).is_some_and(|e| e.supported(&R::client(device))) && geometry.fits()
}

/// The block masses from the engine's chunked output: the rows' LSE over the chunks, then the
/// per-block sums, into one `[bh, nqb, nkb]` f32 buffer.
pub(super) fn chunk_masses<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    rows: Tensor<Cube<R, F, I, BT>, 4>,
    lse: Tensor<Cube<R, F, I, BT>, 3>,
    g: &ChunkGeometry,
) -> Option<Tensor<Cube<R, F, I, BT>, 3>> {
    let dtype = rows.dtype();
    if !chunk_shapes_match(&rows, &lse, g) || !chunk_masses_apply::<R>(&rows.device(), dtype, g) {
        return None;
    }
    let rows: CubeTensor<R> = into_contiguous(unwrap(rows));
    let lse: CubeTensor<R> = into_contiguous(unwrap(lse.cast(DType::F32)));
    let (r, l, c) = (&rows.handle, &lse.handle, &rows.client);
    let handle = match kernel_elem(dtype)? {
        KernelElem::F32 => launch_chunk_masses::<R, f32>(c, r, l, g),
        KernelElem::F16 => launch_chunk_masses::<R, burn::tensor::f16>(c, r, l, g),
        KernelElem::BF16 => launch_chunk_masses::<R, burn::tensor::bf16>(c, r, l, g),
    };
    let masses = CubeTensor::new_contiguous(
        c.clone(),
        rows.device.clone(),
        Shape::from(vec![g.bh, g.nqb, g.nkb]),
        handle,
        DType::F32,
    );
    Some(wrap::<Cube<R, F, I, BT>, 3>(masses))
}
