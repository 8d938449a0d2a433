//! CubeCL backends (`CubeBackend<R, ..>`: CUDA, wgpu): the engine's kernels.

use burn::tensor::{DType, Shape};
use burn_cubecl::{
    BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement, kernel::into_contiguous, tensor::CubeTensor,
};
use dit_attention_kernels::attention::{ForwardPath, ForwardProblem, KernelElem, TC_ROWS, forward_elem};

use super::backend::{SparseAttentionBackend, reference_forward, unwrap, wrap};
use crate::error::{DitAttentionError, Result};
use crate::plan::KernelPlan;

/// Largest launch-grid dimension every runtime takes.
const GRID_LIMIT: usize = 65_535;

/// Largest head dim of the portable kernel (one query row lives in a unit's registers).
pub(crate) const PORTABLE_MAX_HEAD_DIM: usize = 256;

fn kernel_elem(dtype: DType) -> Option<KernelElem> {
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
        // (batch, head); grid dimensions are limited to 65,535 on some runtimes.
        let largest = plan.q_starts().windows(2).map(|w| (w[1] - w[0]) as usize).max().unwrap_or(1);
        let cubes = (plan.q_starts().len() - 1) * largest.div_ceil(TC_ROWS.min(64)).max(1);
        if cubes > GRID_LIMIT || batch_heads > GRID_LIMIT {
            return Err(DitAttentionError::Unsupported {
                path: "CubeCL kernel".into(),
                what: format!(
                    "{cubes} query cubes ({} query blocks, the largest of {largest} rows) x {batch_heads} batch-heads: each must be at most {GRID_LIMIT}",
                    plan.q_starts().len() - 1
                ),
            });
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
        let elem = elem.expect("checked above");
        let (q, k, v) = (into_contiguous(q), into_contiguous(k), into_contiguous(v));
        let qs = q.meta.shape().clone();
        let (batch, heads, q_len, head_dim) = (qs[0], qs[1], qs[2], qs[3]);
        let k_len = k.meta.shape()[2];
        let value_dim = v.meta.shape()[3];
        let bias = bias.map(|b| {
            let b = into_contiguous(b);
            let bs = b.meta.shape().clone();
            let batch_stride = if bs[0] == 1 { 0 } else { bs[1] * k_len };
            let head_stride = if bs[1] == 1 { 0 } else { k_len };
            (b.handle.clone(), batch_stride, head_stride)
        });
        let map = plan.kernel_arrays();
        let problem = ForwardProblem { batch, heads, q_len, k_len, head_dim, value_dim, scale: plan.scale() as f32 };
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
}
