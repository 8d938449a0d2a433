//! Exact statistics of a pattern (spec sections 2-3), from the geometry.

use serde::Serialize;

use super::block_map::BlockMap;
use super::blocks::BlockPartition;
use super::pattern::AttentionMask;
use crate::canvas::TokenOrder;
use crate::error::Result;

/// Sparsity and block statistics of a pattern on a layout.
///
/// Sparsity counts video pairs only (text excluded). Block fractions are over video x video
/// blocks, summed over the per-head maps; `visited_blocks` counts every block pair the engine
/// would visit, text included.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MaskStats {
    /// Pattern name.
    pub pattern: String,
    /// Canvas `[t, h, w]`.
    pub canvas: [usize; 3],
    /// Tile `[t, h, w]`.
    pub tile: [usize; 3],
    /// Token order of the video block.
    pub order: TokenOrder,
    /// Block size in tokens (the tile volume for one block per tile).
    pub block: usize,
    /// One block per tile (ragged edge tiles give shorter blocks).
    pub per_tile: bool,
    /// Text tokens.
    pub text: usize,
    /// Number of per-head patterns.
    pub heads: usize,
    /// Video tokens.
    pub video_tokens: usize,
    /// Blocks over the whole sequence.
    pub blocks: usize,
    /// Blocks over the video.
    pub video_blocks: usize,
    /// Allowed video pairs, summed over heads.
    pub allowed_pairs: u64,
    /// All video pairs, times heads.
    pub total_pairs: u64,
    /// 1 - allowed / total.
    pub sparsity: f64,
    /// Sparsity of each head.
    pub head_sparsity: Vec<f64>,
    /// Fraction of video x video blocks where every pair is allowed.
    pub dense_blocks: f64,
    /// Fraction where some pairs are allowed.
    pub mixed_blocks: f64,
    /// Fraction where none is.
    pub empty_blocks: f64,
    /// Fraction of all block pairs (text included) that the engine visits.
    pub visited_blocks: f64,
}

impl MaskStats {
    /// Statistics of `mask` for a sequence cut by `partition`, video in `order`.
    pub fn compute(mask: &AttentionMask, order: TokenOrder, partition: BlockPartition) -> Result<Self> {
        let map = BlockMap::from_mask(mask, order, partition)?;
        Ok(Self::from_map(mask, &map))
    }

    /// Statistics of `mask` given its already built block map.
    pub fn from_map(mask: &AttentionMask, map: &BlockMap) -> Self {
        let layout = mask.layout();
        let heads = mask.heads();
        let nv = layout.video_len() as u64;
        let per_head: Vec<u64> = (0..heads).map(|h| mask.allowed_video_pairs(h)).collect();
        let allowed: u64 = per_head.iter().sum();
        let total = nv * nv * heads as u64;
        let (full, partial, text) = map.entry_counts();
        let vb = map.blocks().video_blocks() as u64;
        let video_pairs = (vb * vb * heads as u64) as f64;
        let all_pairs = (map.num_blocks() as u64).pow(2) as f64 * heads as f64;
        Self {
            pattern: mask.spec().name().to_string(),
            canvas: layout.canvas().dims(),
            tile: layout.tiling().tile().dims(),
            order: map.blocks().order(),
            block: match map.blocks().partition() {
                BlockPartition::Uniform(b) => b,
                BlockPartition::PerTile => layout.tiling().tile().volume(),
            },
            per_tile: map.blocks().partition() == BlockPartition::PerTile,
            text: layout.text().len,
            heads,
            video_tokens: layout.video_len(),
            blocks: map.num_blocks(),
            video_blocks: vb as usize,
            allowed_pairs: allowed,
            total_pairs: total,
            sparsity: 1.0 - allowed as f64 / total as f64,
            head_sparsity: per_head.iter().map(|&a| 1.0 - a as f64 / (nv * nv) as f64).collect(),
            dense_blocks: full as f64 / video_pairs,
            mixed_blocks: partial as f64 / video_pairs,
            empty_blocks: (video_pairs - (full + partial) as f64) / video_pairs,
            visited_blocks: (full + partial + text) as f64 / all_pairs,
        }
    }
}
