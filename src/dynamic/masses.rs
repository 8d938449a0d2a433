//! Block masses of the sampled tokens, from the attention engine: no score matrix is written.
//!
//! `mass[qb, kb] = sum over qb's sampled rows a of sum over kb's sampled keys c of p[a, c]`,
//! `p` the softmax of a sampled row over every sampled key. With values `V[c, j] = 1` when key
//! `c` lies in block `j` (and 0 otherwise), attention returns `sum_c p[a, c] V[c, j]`, the
//! row's mass in block `j`. The value width is bounded, so the keys go in chunks of
//! [`CHUNK_BLOCKS`] blocks: each chunk's attention is normalised over its own keys, and its
//! LSE rescales it to the whole row (`exp(lse_chunk - lse_row)`), exactly.

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
    let [b, h, m, _] = qs.dims();
    let nb = m / samples;
    let dtype = qs.dtype();
    let work = if dtype == DType::F64 { DType::F64 } else { DType::F32 };
    let device = qs.device();
    let chunk_keys = CHUNK_BLOCKS * samples;
    let chunks = nb.div_ceil(CHUNK_BLOCKS);
    let (mut rows, mut lses) = (Vec::with_capacity(chunks), Vec::with_capacity(chunks));
    for t in 0..chunks {
        let keys = t * chunk_keys..(m).min((t + 1) * chunk_keys);
        let len = keys.len();
        // One-hot block membership of the chunk's keys, shared by every batch-head.
        let onehot: Vec<f32> =
            (0..len * CHUNK_BLOCKS).map(|i| f32::from(i / CHUNK_BLOCKS / samples == i % CHUNK_BLOCKS)).collect();
        let v = Tensor::<B, 2>::from_data(TensorData::new(onehot, [len, CHUNK_BLOCKS]), &device)
            .cast(dtype)
            .unsqueeze::<4>()
            .expand([b, h, len, CHUNK_BLOCKS]);
        let k = ks.clone().slice([0..b, 0..h, keys.clone()]);
        let bias = bias.clone().map(|x| {
            let [bb, bh, _] = x.dims();
            x.slice([0..bb, 0..bh, keys])
        });
        let out = attention_with_plan(qs.clone(), k, v, bias, &KernelPlan::dense(m, len, scale))?;
        rows.push(out.output.cast(work));
        lses.push(out.lse.cast(work).unsqueeze_dim::<4>(3));
    }
    // The row's LSE over every chunk, then each chunk rescaled to it.
    let lse = Tensor::cat(lses, 3);
    let top = lse.clone().max_dim(3);
    let row_lse = top.clone() + (lse.clone() - top).exp().sum_dim(3).log();
    let weights = (lse - row_lse).exp();
    let blocks: Vec<Tensor<B, 3>> = rows
        .into_iter()
        .enumerate()
        .map(|(t, r)| {
            let w = weights.clone().slice([0..b, 0..h, 0..m, t..t + 1]);
            // A chunk whose keys are all masked has weight 0 and no defined output.
            let empty = w.clone().equal_elem(0.0).expand([b, h, m, CHUNK_BLOCKS]);
            (r * w).mask_fill(empty, 0.0).reshape([b * h, nb, samples, CHUNK_BLOCKS]).sum_dim(2).reshape([
                b * h,
                nb,
                CHUNK_BLOCKS,
            ])
        })
        .collect();
    Ok(Tensor::cat(blocks, 2).slice([0..b * h, 0..nb, 0..nb]))
}
