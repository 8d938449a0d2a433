//! The tile permutation (spec section 1) as index arrays, and as burn tensor operations.
//!
//! Convention: a permutation is a *gather* index. Reordering a sequence `x` from order `A` to
//! order `B` is `y[i] = x[index[i]]`, i.e. `Tensor::select(seq_dim, index)`.

use burn::tensor::{Tensor, backend::Backend};

use crate::canvas::{Token, TokenOrder, VideoLayout};
use crate::error::Result;
use crate::glue;

/// A permutation of the joint sequence between two token orders, with its exact inverse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenPermutation {
    forward: Vec<u32>,
    inverse: Vec<u32>,
}

impl TokenPermutation {
    /// The permutation taking a sequence in order `from` to order `to`. Text tokens keep their place.
    pub fn between(layout: &VideoLayout, from: TokenOrder, to: TokenOrder) -> Self {
        let n = layout.seq_len();
        let mut forward = vec![0u32; n];
        let mut inverse = vec![0u32; n];
        for (dst, slot) in forward.iter_mut().enumerate() {
            let src = layout.position_of(layout.token_at(dst, to), from);
            *slot = src as u32;
            inverse[src] = dst as u32;
        }
        Self { forward, inverse }
    }

    /// Natural order -> tile-major order. Equal to `between(layout, Natural, TileMajor)`, built
    /// tile by tile without per-token division (modules build it at init: a few ms at 115k
    /// tokens the general way).
    pub fn to_tile_major(layout: &VideoLayout) -> Self {
        let n = layout.seq_len();
        let video = layout.video_range();
        let [_, h, w] = layout.canvas().dims();
        let tiling = layout.tiling();
        let mut forward: Vec<u32> = Vec::with_capacity(n);
        forward.extend(0..video.start as u32);
        for tile in 0..tiling.num_tiles() {
            let (origin, extent) = tiling.tile_box(tiling.tile_coords(tile));
            for t in origin[0]..origin[0] + extent[0] {
                for y in origin[1]..origin[1] + extent[1] {
                    let row = video.start + (t * h + y) * w;
                    forward.extend((row + origin[2]..row + origin[2] + extent[2]).map(|p| p as u32));
                }
            }
        }
        forward.extend(video.end as u32..n as u32);
        let mut inverse = vec![0u32; n];
        for (dst, &src) in forward.iter().enumerate() {
            inverse[src as usize] = dst as u32;
        }
        Self { forward, inverse }
    }

    /// Gather indices of the forward direction: `y[i] = x[forward()[i]]`.
    pub fn forward(&self) -> &[u32] {
        &self.forward
    }

    /// Gather indices of the inverse direction: `x[j] = y[inverse()[j]]`.
    pub fn inverse(&self) -> &[u32] {
        &self.inverse
    }

    /// The inverse permutation.
    pub fn inverted(&self) -> Self {
        Self { forward: self.inverse.clone(), inverse: self.forward.clone() }
    }

    /// Sequence length.
    pub fn len(&self) -> usize {
        self.forward.len()
    }

    /// True for an empty sequence.
    pub fn is_empty(&self) -> bool {
        self.forward.is_empty()
    }

    /// True when the permutation changes nothing (e.g. tiles that are whole rows).
    pub fn is_identity(&self) -> bool {
        self.forward.iter().enumerate().all(|(i, &j)| i as u32 == j)
    }

    /// Applies the permutation to `x` along dimension `dim` (which must have the sequence length).
    pub fn apply<B: Backend, const D: usize>(&self, x: Tensor<B, D>, dim: usize) -> Result<Tensor<B, D>> {
        glue::gather_seq(x, dim, &self.forward)
    }

    /// Applies the inverse permutation to `x` along dimension `dim`.
    pub fn apply_inverse<B: Backend, const D: usize>(&self, x: Tensor<B, D>, dim: usize) -> Result<Tensor<B, D>> {
        glue::gather_seq(x, dim, &self.inverse)
    }
}

/// Reorders `[batch, heads, seq, dim]` tensors from natural to tile-major order.
pub fn to_tile_major<B: Backend>(x: Tensor<B, 4>, layout: &VideoLayout) -> Result<Tensor<B, 4>> {
    layout.check_seq_len(x.dims()[2])?;
    TokenPermutation::to_tile_major(layout).apply(x, 2)
}

/// Reorders `[batch, heads, seq, dim]` tensors from tile-major back to natural order.
pub fn to_natural<B: Backend>(x: Tensor<B, 4>, layout: &VideoLayout) -> Result<Tensor<B, 4>> {
    layout.check_seq_len(x.dims()[2])?;
    TokenPermutation::to_tile_major(layout).apply_inverse(x, 2)
}

/// Sequence positions (in `order`) of the video tokens of tile `i` (tiles numbered row-major).
pub fn tile_positions(layout: &VideoLayout, tile: usize, order: TokenOrder) -> Vec<usize> {
    let tiling = layout.tiling();
    let (origin, extent) = tiling.tile_box(tiling.tile_coords(tile));
    let mut out = Vec::with_capacity(extent.iter().product());
    for t in 0..extent[0] {
        for h in 0..extent[1] {
            for w in 0..extent[2] {
                let c = [origin[0] + t, origin[1] + h, origin[2] + w];
                out.push(layout.position_of(Token::Video(c), order));
            }
        }
    }
    out
}
