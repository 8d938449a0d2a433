//! Block masses of the sampled tokens, from the attention engine: no score matrix is written.
//!
//! `mass[qb, kb] = sum over qb's sampled rows a of sum over kb's sampled keys c of p[a, c]`,
//! `p` the softmax of a sampled row over every sampled key. With values `V[c, j] = 1` when key
//! `c` lies in block `j` (and 0 otherwise), attention returns `sum_c p[a, c] V[c, j]`, the
//! row's mass in block `j`. The value width is bounded, so the keys go in chunks of at most
//! [`CHUNK_BLOCKS`] blocks, each chunk a head of one engine call over the same sampled rows
//! (the keys padded to whole chunks, the padding masked): each chunk's attention is normalised
//! over its own keys, and its LSE rescales it to the whole row (`exp(lse_chunk - lse_row)`),
//! exactly. CubeCL backends fold the LSEs and sum the rows per block in two kernels
//! ([`SparseAttentionBackend::chunk_masses`]); the burn-op composite below runs elsewhere.

use burn::tensor::{DType, Tensor, TensorData};

use crate::attention::attention_with_plan;
use dit_attention_kernels::dynamic::ChunkGeometry;

use crate::glue::{SparseAttentionBackend, index_tensor};
use crate::plan::KernelPlan;

/// Key blocks per chunk: the value width of one engine call (a head dim every path takes).
pub(crate) const CHUNK_BLOCKS: usize = 64;

/// Masses `[b * h, nb, nb]` of `nb` blocks of `samples` sampled tokens each (`positions`, block
/// after block), in f64 for f64 inputs and f32 otherwise. NaN where a row has no finite softmax
/// (every key masked, or a NaN or `+inf` score); the selection counts NaN as 0.
///
/// The engine call has batch `b * h` and one head per chunk: each chunk head gathers the sampled
/// rows itself (one gather of the positions repeated, no broadcast copy of the queries), the
/// keys are gathered padded to whole chunks (the padding repeats the first sampled key, so a
/// caller's bias on it is one the row already has), the padding masked by a `-inf` bias the
/// same for every batch-head.
///
/// # Shapes
/// - q, k `[b, h, n, d]`; bias `[b or 1, h or 1, n]`; `positions.len()` = `nb * samples`
pub(crate) fn block_masses<B: SparseAttentionBackend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    bias: Option<Tensor<B, 3>>,
    positions: &[usize],
    samples: usize,
    scale: f64,
) -> crate::Result<Tensor<B, 3>> {
    let [b, h, _, d] = q.dims();
    let m = positions.len();
    let (bh, nb) = (b * h, m / samples);
    let dtype = q.dtype();
    let work = if dtype == DType::F64 { DType::F64 } else { DType::F32 };
    let device = q.device();
    // As many chunks as the value width needs, the blocks spread evenly over them: the padding
    // is then fewer blocks than there are chunks, not up to a whole chunk.
    let width = CHUNK_BLOCKS;
    let chunks = nb.div_ceil(width);
    let per_chunk = nb.div_ceil(chunks);
    let chunk_keys = per_chunk * samples;
    let pad = chunks * chunk_keys - m;
    // Head `t` of batch `bh`: batch-head `bh`'s sampled rows against its chunk `t` of keys.
    let rows = index_tensor::<B>(positions.iter().copied().cycle().take(chunks * m), &device);
    let q = q.select(2, rows).reshape([bh, chunks, m, d]);
    let keys = index_tensor::<B>(positions.iter().copied().chain(std::iter::repeat_n(positions[0], pad)), &device);
    let k = k.select(2, keys.clone()).reshape([bh, chunks, chunk_keys, d]);
    // -inf on the padding keys (the last chunk's tail), broadcast over batch-heads.
    let padding = (pad > 0).then(|| {
        let values: Vec<f32> = (0..chunks * chunk_keys).map(|c| if c < m { 0.0 } else { f32::NEG_INFINITY }).collect();
        Tensor::<B, 1>::from_data(TensorData::new(values, [chunks * chunk_keys]), &device)
            .reshape([1, chunks, chunk_keys])
    });
    let bias = match (bias, padding) {
        (None, padding) => padding,
        (Some(x), padding) => {
            let x = x.cast(dtype).select(2, keys).expand([b, h, chunks * chunk_keys]).reshape([bh, chunks, chunk_keys]);
            Some(match padding {
                Some(p) => x + p.cast(dtype),
                None => x,
            })
        }
    };
    // One-hot block membership of a chunk's keys, the same for every chunk and batch-head.
    let onehot: Vec<f32> = (0..chunk_keys * width).map(|i| f32::from(i / width / samples == i % width)).collect();
    let v = Tensor::<B, 2>::from_data(TensorData::new(onehot, [chunk_keys, width]), &device)
        .cast(dtype)
        .unsqueeze::<4>()
        .expand([bh, chunks, chunk_keys, width]);
    let out = attention_with_plan(q, k, v, bias, &KernelPlan::dense(m, chunk_keys, scale))?;
    let (rows, lse) = (out.output.reshape([bh, chunks, m, width]), out.lse.reshape([bh, chunks, m]));
    // The backend's kernels where it has them: they fold the LSEs and sum the rows per block.
    let geometry = ChunkGeometry { bh, chunks, per_chunk, width, nqb: nb, samples, nkb: nb };
    if let Some(masses) = B::chunk_masses(rows.clone(), lse.clone(), &geometry) {
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
        .slice([0..bh, 0..chunks, 0..nb, 0..1, 0..per_chunk])
        .reshape([bh, chunks, nb, per_chunk])
        .swap_dims(1, 2)
        .reshape([bh, nb, chunks * per_chunk]);
    Ok(masses.slice([0..bh, 0..nb, 0..nb]))
}
