//! Sliding Tile Attention computed tile by tile from the spec's formula (spec section 2), written
//! independently of the block-map code so that each checks the other.

use std::collections::BTreeMap;

use burn::tensor::{Tensor, backend::Backend};

use super::dense::attend;
use super::{AttentionOptions, AttentionOutput, check_qkv};
use crate::canvas::{TokenOrder, VideoLayout};
use crate::error::Result;
use crate::glue::index_tensor;
use crate::mask::{AttentionMask, PatternSpec};
use crate::permutation::tile_positions;

/// STA for any canvas (ragged edge tiles included), windows in tiles shared or per head, text
/// before or after (text keys seen by every query, text queries see every key); the video in
/// `order`.
///
/// # Shapes
/// - q, k `[b, h, n, d]`, v `[b, h, n, dv]`, `n = layout.seq_len()`
/// - bias `[b or 1, h or 1, n]`
/// - output `[b, h, n, dv]`, lse `[b, h, n]`
#[allow(clippy::too_many_arguments)]
pub fn sta_attention_reference<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    layout: &VideoLayout,
    windows: &[[usize; 3]],
    order: TokenOrder,
    bias: Option<Tensor<B, 3>>,
    options: AttentionOptions,
) -> Result<AttentionOutput<B>> {
    check_qkv(&q, &k, &v, bias.as_ref())?;
    options.validate()?;
    let [_, heads, n, d] = q.dims();
    layout.check_seq_len(n)?;
    layout.check_seq_len(k.dims()[2])?;
    // Validation only (odd, non-zero windows); the attention below does not use the mask code.
    AttentionMask::new(*layout, PatternSpec::Sta { windows: windows.to_vec() })?.check_heads(heads)?;
    let options = AttentionOptions { scale: Some(options.scale_for(d)) };
    let device = q.device();
    if windows.len() == 1 {
        return Ok(sta_heads(q, k, v, layout, windows[0], order, bias, options));
    }
    // Heads sharing a window are computed together.
    let mut groups: BTreeMap<[usize; 3], Vec<usize>> = BTreeMap::new();
    for (h, w) in windows.iter().enumerate() {
        groups.entry(*w).or_default().push(h);
    }
    let (mut outs, mut lses, mut order_of_heads) = (Vec::new(), Vec::new(), Vec::new());
    for (w, hs) in groups {
        let idx = index_tensor::<B>(hs.iter().copied(), &device);
        let hb = bias.as_ref().map(|b| if b.dims()[1] == 1 { b.clone() } else { b.clone().select(1, idx.clone()) });
        let r = sta_heads(
            q.clone().select(1, idx.clone()),
            k.clone().select(1, idx.clone()),
            v.clone().select(1, idx),
            layout,
            w,
            order,
            hb,
            options,
        );
        outs.push(r.output);
        lses.push(r.lse);
        order_of_heads.extend(hs);
    }
    let back = index_tensor::<B>(inverse(&order_of_heads), &device);
    Ok(AttentionOutput {
        output: Tensor::cat(outs, 1).select(1, back.clone()),
        lse: Tensor::cat(lses, 1).select(1, back),
    })
}

#[allow(clippy::too_many_arguments)]
fn sta_heads<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    layout: &VideoLayout,
    window: [usize; 3],
    order: TokenOrder,
    bias: Option<Tensor<B, 3>>,
    options: AttentionOptions,
) -> AttentionOutput<B> {
    let device = q.device();
    let tiling = layout.tiling();
    let n_tiles = tiling.counts();
    let text: Vec<usize> = layout.text_range().collect();
    let (mut outs, mut lses, mut rows) = (Vec::new(), Vec::new(), Vec::new());
    let mut run = |qpos: Vec<usize>, kpos: Vec<usize>| {
        let qi = index_tensor::<B>(qpos.iter().copied(), &device);
        let ki = index_tensor::<B>(kpos, &device);
        let r = attend(
            q.clone().select(2, qi),
            k.clone().select(2, ki.clone()),
            v.clone().select(2, ki.clone()),
            None,
            bias.clone().map(|b| b.select(2, ki)),
            options,
        );
        outs.push(r.output);
        lses.push(r.lse);
        rows.extend(qpos);
    };
    for tile in 0..tiling.num_tiles() {
        let tc = tiling.tile_coords(tile);
        // Key tiles per dimension: the window of k tiles centred on the query tile, slid inside.
        let span = |dim: usize| {
            let (nd, kd) = (n_tiles[dim], window[dim]);
            if kd >= nd {
                0..nd
            } else {
                let c = tc[dim].clamp(kd / 2, nd - 1 - kd / 2);
                c - kd / 2..c + kd / 2 + 1
            }
        };
        let mut keys = Vec::new();
        for a in span(0) {
            for b in span(1) {
                for c in span(2) {
                    keys.extend(tile_positions(layout, (a * n_tiles[1] + b) * n_tiles[2] + c, order));
                }
            }
        }
        keys.extend(&text);
        run(tile_positions(layout, tile, order), keys);
    }
    if !text.is_empty() {
        run(text.clone(), (0..layout.seq_len()).collect());
    }
    let back = index_tensor::<B>(inverse(&rows), &device);
    AttentionOutput { output: Tensor::cat(outs, 2).select(2, back.clone()), lse: Tensor::cat(lses, 2).select(2, back) }
}

/// `inv[p[i]] = i`.
fn inverse(p: &[usize]) -> Vec<usize> {
    let mut inv = vec![0; p.len()];
    for (i, &x) in p.iter().enumerate() {
        inv[x] = i;
    }
    inv
}
