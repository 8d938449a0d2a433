//! Block masses of the sampled tokens, from the attention engine: no score matrix is written.
//!
//! `mass[qb, kb] = sum over qb's sampled rows a of sum over kb's sampled keys c of p[a, c]`,
//! `p` the softmax of a sampled row over every sampled key. With values `V[c, j] = 1` when key
//! `c` lies in block `j` (and 0 otherwise), attention returns `sum_c p[a, c] V[c, j]`, the
//! row's mass in block `j`. The value width is bounded, so the keys go in chunks of
//! [`CHUNK_BLOCKS`] blocks, each chunk a head of one engine call over the same sampled rows
//! (the keys padded to whole chunks, the padding masked): each chunk's attention is normalised
//! over its own keys, and its LSE rescales it to the whole row (`exp(lse_chunk - lse_row)`),
//! exactly. CubeCL backends fold the LSEs and sum the rows per block in two kernels
//! ([`SparseAttentionBackend::chunk_masses`]); the burn-op composite below runs elsewhere.

use burn::tensor::{DType, Tensor, TensorData};

use crate::attention::attention_with_plan;
use crate::glue::SparseAttentionBackend;
use crate::plan::KernelPlan;

/// Key blocks per chunk: the value width of one engine call (a head dim every path takes).
pub(crate) const CHUNK_BLOCKS: usize = 64;

/// Masses `[b * h, nb, nb]` of `nb` blocks of `samples` sampled tokens each, in f64 for f64
/// inputs and f32 otherwise. NaN where a row has no finite softmax (every key masked, or a NaN or
/// `+inf` score); the selection counts NaN as 0.
///
/// # Shapes
/// - qs, ks `[b, h, nb * samples, d]`, block after block; bias `[b or 1, h or 1, nb * samples]`
pub(crate) fn block_masses<B: SparseAttentionBackend>(
    qs: Tensor<B, 4>,
    ks: Tensor<B, 4>,
    bias: Option<Tensor<B, 3>>,
    samples: usize,
    scale: f64,
) -> crate::Result<Tensor<B, 3>> {
    let [b, h, m, d] = qs.dims();
    let (bh, nb) = (b * h, m / samples);
    let dtype = qs.dtype();
    let work = if dtype == DType::F64 { DType::F64 } else { DType::F32 };
    let device = qs.device();
    let (width, chunk_keys) = (CHUNK_BLOCKS, CHUNK_BLOCKS * samples);
    let chunks = nb.div_ceil(width);
    let pad = chunks * chunk_keys - m;
    // Head `bh * chunks + t`: batch-head `bh`'s sampled rows against its chunk `t` of keys.
    let q = qs.reshape([bh, 1, m, d]).expand([bh, chunks, m, d]).reshape([1, bh * chunks, m, d]);
    let mut k = ks.reshape([bh, m, d]);
    if pad > 0 {
        let zeros = Tensor::<B, 3>::zeros([bh, pad, d], &device).cast(dtype);
        k = Tensor::cat(vec![k, zeros], 1);
    }
    let k = k.reshape([1, bh * chunks, chunk_keys, d]);
    // The caller's bias, and -inf on the padding keys.
    let bias = match (bias, pad) {
        (None, 0) => None,
        (bias, pad) => {
            let mut bias = bias.map_or_else(
                || Tensor::<B, 2>::zeros([bh, m], &device).cast(dtype),
                |x| x.cast(dtype).expand([b, h, m]).reshape([bh, m]),
            );
            if pad > 0 {
                let masked = Tensor::<B, 2>::full([bh, pad], f64::NEG_INFINITY, &device).cast(dtype);
                bias = Tensor::cat(vec![bias, masked], 1);
            }
            Some(bias.reshape([1, bh * chunks, chunk_keys]))
        }
    };
    // One-hot block membership of a chunk's keys, the same for every chunk and batch-head.
    let onehot: Vec<f32> = (0..chunk_keys * width).map(|i| f32::from(i / width / samples == i % width)).collect();
    let v = Tensor::<B, 2>::from_data(TensorData::new(onehot, [chunk_keys, width]), &device)
        .cast(dtype)
        .unsqueeze::<4>()
        .expand([1, bh * chunks, chunk_keys, width]);
    let out = attention_with_plan(q, k, v, bias, &KernelPlan::dense(m, chunk_keys, scale))?;
    let (rows, lse) = (out.output.reshape([bh, chunks, m, width]), out.lse.reshape([bh, chunks, m]));
    // The backend's kernels where it has them: they fold the LSEs and sum the rows per block.
    if let Some(masses) = B::chunk_masses(rows.clone(), lse.clone(), samples, nb) {
        return Ok(masses);
    }
    // The row's LSE over every chunk, then each chunk rescaled to it.
    let lse = lse.cast(work);
    let top = lse.clone().max_dim(1);
    let row_lse = top.clone() + (lse.clone() - top).exp().sum_dim(1).log();
    let weights = (lse - row_lse).exp().unsqueeze_dim::<4>(3);
    // A chunk whose keys are all masked has weight 0 and no defined output.
    let empty = weights.clone().equal_elem(0.0).expand([bh, chunks, m, width]);
    let masses = (rows.cast(work) * weights)
        .mask_fill(empty, 0.0)
        .reshape([bh, chunks, nb, samples, width])
        .sum_dim(3)
        .reshape([bh, chunks, nb, width])
        .swap_dims(1, 2)
        .reshape([bh, nb, chunks * width]);
    Ok(masses.slice([0..bh, 0..nb, 0..nb]))
}
