//! Attention restricted by a block map, computed query block by query block so that memory stays
//! bounded by one block row (never an N x N tensor).

use burn::tensor::{Tensor, backend::Backend};

use super::dense::attend;
use super::{AttentionOptions, AttentionOutput, check_qkv};
use crate::error::{DitAttentionError, Result};
use crate::glue::{bool_tensor, full_like_dtype, index_tensor};
use crate::mask::{BlockKind, BlockMap};

/// Exact softmax attention over the pairs a block map allows (full blocks whole, partial blocks
/// through the map's predicate). Self-attention: q, k and v share the map's sequence.
///
/// # Shapes
/// - q, k `[b, h, n, d]`, v `[b, h, n, dv]` with `n` the map's sequence length
/// - bias `[b or 1, h or 1, n]`
/// - output `[b, h, n, dv]`, lse `[b, h, n]`
pub fn block_sparse_attention_reference<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    map: &BlockMap,
    bias: Option<Tensor<B, 3>>,
    options: AttentionOptions,
) -> Result<AttentionOutput<B>> {
    check_qkv(&q, &k, &v, bias.as_ref())?;
    options.validate()?;
    let [_, heads, n, _] = q.dims();
    map.layout().check_seq_len(n)?;
    map.layout().check_seq_len(k.dims()[2])?;
    if map.heads() != 1 && map.heads() != heads {
        return Err(DitAttentionError::Invalid(format!(
            "the block map has {} per-head rows but the tensors have {heads} heads",
            map.heads()
        )));
    }
    if map.heads() == 1 {
        return Ok(one_head_group(q, k, v, map, 0, bias, options));
    }
    let (mut outs, mut lses) = (Vec::new(), Vec::new());
    for h in 0..heads {
        let hb = bias.as_ref().map(|b| if b.dims()[1] == 1 { b.clone() } else { b.clone().narrow(1, h, 1) });
        let r = one_head_group(
            q.clone().narrow(1, h, 1),
            k.clone().narrow(1, h, 1),
            v.clone().narrow(1, h, 1),
            map,
            h,
            hb,
            options,
        );
        outs.push(r.output);
        lses.push(r.lse);
    }
    Ok(AttentionOutput { output: Tensor::cat(outs, 1), lse: Tensor::cat(lses, 1) })
}

/// All heads of `q` use row set `head` of the map.
fn one_head_group<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    map: &BlockMap,
    head: usize,
    bias: Option<Tensor<B, 3>>,
    options: AttentionOptions,
) -> AttentionOutput<B> {
    let [b, h, _, d] = q.dims();
    let dv = v.dims()[3];
    let device = q.device();
    let blocks = map.blocks();
    let options = AttentionOptions { scale: Some(options.scale_for(d)) };
    let (mut outs, mut lses) = (Vec::new(), Vec::new());
    for qb in 0..blocks.len() {
        let rows = blocks.range(qb);
        let entries: Vec<(usize, BlockKind)> = map.row(head, qb).collect();
        if entries.is_empty() {
            outs.push(full_like_dtype(&v, [b, h, rows.len(), dv], 0.0));
            lses.push(full_like_dtype(&v, [b, h, rows.len()], f64::NEG_INFINITY));
            continue;
        }
        let keys: Vec<usize> = entries.iter().flat_map(|&(kb, _)| blocks.range(kb)).collect();
        let masked = entries.iter().any(|e| e.1 == BlockKind::Partial).then(|| {
            let pred = map.predicate().expect("partial blocks always come with a predicate");
            let mut m = Vec::with_capacity(rows.len() * keys.len());
            for qp in rows.clone() {
                for &(kb, kind) in &entries {
                    for kp in blocks.range(kb) {
                        m.push(kind == BlockKind::Partial && !pred.allows(head, qp, kp));
                    }
                }
            }
            bool_tensor::<B, 4>(m, [1, 1, rows.len(), keys.len()], &device).expand([b, h, rows.len(), keys.len()])
        });
        let idx = index_tensor::<B>(keys.iter().copied(), &device);
        let r = attend(
            q.clone().narrow(2, rows.start, rows.len()),
            k.clone().select(2, idx.clone()),
            v.clone().select(2, idx.clone()),
            masked,
            bias.clone().map(|bb| bb.select(2, idx)),
            options,
        );
        outs.push(r.output);
        lses.push(r.lse);
    }
    AttentionOutput { output: Tensor::cat(outs, 2), lse: Tensor::cat(lses, 2) }
}
