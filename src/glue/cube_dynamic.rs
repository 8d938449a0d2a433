//! Dynamic block-sparse attention on CubeCL backends: the selection kernel, and the forward
//! kernel reading the kept blocks where the selection wrote them.

use burn::tensor::{DType, Int, Shape, Tensor};
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement, kernel::into_contiguous};
use dit_attention_kernels::attention::{BlockMapArrays, KernelElem, KeyBlocks};
use dit_attention_kernels::dynamic::{SelectJob, launch_select, select_fits};

use super::backend::{BlockLists, BlockSelection, SparseAttentionBackend, unwrap, wrap};
use super::cube::{kernel_elem, launch_forward};
use crate::dynamic::select_reference;

type Cube<R, F, I, BT> = CubeBackend<R, F, I, BT>;

/// The selection kernel where the runtime takes it, the reference otherwise; masses in f32.
pub(super) fn select<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    scores: Tensor<Cube<R, F, I, BT>, 3>,
    job: &SelectJob,
) -> BlockSelection<Cube<R, F, I, BT>> {
    let client = R::client(&scores.device());
    let elem = kernel_elem(scores.dtype()).filter(|e| e.supported(&client));
    let fits = select_fits(&client, job.nkb, job.samples) && job.nqb <= 65_535 && job.bh <= 65_535;
    let Some(elem) = elem.filter(|_| fits && job.nkb > 0) else {
        let sel = select_reference(scores, job);
        return BlockSelection { masses: sel.masses.cast(DType::F32), ..sel };
    };
    let s: CubeTensor<R> = into_contiguous(unwrap(scores));
    let h = s.handle.clone();
    let out = match elem {
        KernelElem::F32 => launch_select::<R, f32, I>(&s.client, h, *job),
        KernelElem::F16 => launch_select::<R, burn::tensor::f16, I>(&s.client, h, *job),
        KernelElem::BF16 => launch_select::<R, burn::tensor::bf16, I>(&s.client, h, *job),
    };
    let rows = job.bh * job.nqb;
    let tensor = |handle, shape: Vec<usize>, dtype| {
        CubeTensor::new_contiguous(s.client.clone(), s.device.clone(), Shape::from(shape), handle, dtype)
    };
    BlockSelection {
        masses: wrap(tensor(out.masses, vec![job.bh, job.nqb, job.nkb], DType::F32)),
        counts: Tensor::<Cube<R, F, I, BT>, 1, Int>::from_primitive(tensor(out.counts, vec![rows], I::dtype())),
        indices: Tensor::<Cube<R, F, I, BT>, 2, Int>::from_primitive(tensor(
            out.indices,
            vec![rows, job.nkb],
            I::dtype(),
        )),
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
