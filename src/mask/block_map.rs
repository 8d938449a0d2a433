//! The block-sparse contract of the engine (spec section 4): per (head, query block) the key blocks
//! to visit, each full (no in-block mask) or partial (an in-block predicate applies).

use std::fmt::Debug;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::axis::Coverage;
use super::blocks::{BlockLayout, BlockPartition, Segment};
use super::pattern::AttentionMask;
use crate::canvas::{TokenOrder, VideoLayout};
use crate::error::{DitAttentionError, Result};

/// Whether a visited key block needs its in-block mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockKind {
    /// Every pair of the block is allowed.
    Full,
    /// Some pairs are masked: the predicate decides token by token.
    Partial,
}

/// A token-level predicate on sequence positions, for the partial blocks of a map.
pub trait TokenPredicate: Send + Sync + Debug {
    /// Is query position `q` allowed to attend to key position `k` in head `head`?
    fn allows(&self, head: usize, q: usize, k: usize) -> bool;
}

/// An [`AttentionMask`] read in one token order.
#[derive(Debug, Clone)]
pub struct OrderedMask {
    /// The mask.
    pub mask: AttentionMask,
    /// The order of the video tokens in the sequence.
    pub order: TokenOrder,
}

impl TokenPredicate for OrderedMask {
    fn allows(&self, head: usize, q: usize, k: usize) -> bool {
        self.mask.allows(head, q, k, self.order)
    }
}

/// Per (head, query block): the visited key blocks, ascending, each full or partial.
///
/// `heads() == 1` means one map shared by all heads. Query and key blocks use the same cut.
#[derive(Debug, Clone)]
pub struct BlockMap {
    blocks: BlockLayout,
    heads: usize,
    offsets: Vec<usize>,
    cols: Vec<u32>,
    kinds: Vec<BlockKind>,
    predicate: Option<Arc<dyn TokenPredicate>>,
}

impl BlockMap {
    /// Builds the map of `mask` for a sequence cut by `partition`, video in `order`.
    ///
    /// Classification works on canvas boxes, never on token pairs: a 115,200-token canvas takes
    /// milliseconds.
    pub fn from_mask(mask: &AttentionMask, order: TokenOrder, partition: BlockPartition) -> Result<Self> {
        let blocks = BlockLayout::new(mask.layout(), order, partition)?;
        let n = blocks.len();
        let heads = mask.heads();
        let mut offsets = Vec::with_capacity(heads * n + 1);
        let (mut cols, mut kinds) = (Vec::new(), Vec::new());
        offsets.push(0);
        let text_blocks: Vec<usize> = (0..n).filter(|&b| blocks.segment(b) == Segment::Text).collect();
        let mut candidates = Vec::new();
        for head in 0..heads {
            for qb in 0..n {
                let Some(hull) = blocks.hull(qb) else {
                    // Text queries see every key.
                    cols.extend(0..n as u32);
                    kinds.extend(std::iter::repeat_n(BlockKind::Full, n));
                    offsets.push(cols.len());
                    continue;
                };
                let reach = mask.reach(head, hull);
                candidates.clear();
                blocks.video_blocks_touching(&reach, &mut candidates);
                // Video keys that may be allowed, then every text key (always allowed), ascending.
                let mut row: Vec<(u32, BlockKind)> = candidates
                    .iter()
                    .filter_map(|&kb| classify(mask, &blocks, head, qb, kb).map(|k| (kb as u32, k)))
                    .chain(text_blocks.iter().map(|&kb| (kb as u32, BlockKind::Full)))
                    .collect();
                row.sort_unstable_by_key(|e| e.0);
                cols.extend(row.iter().map(|e| e.0));
                kinds.extend(row.iter().map(|e| e.1));
                offsets.push(cols.len());
            }
        }
        let predicate: Arc<dyn TokenPredicate> = Arc::new(OrderedMask { mask: mask.clone(), order });
        Ok(Self { blocks, heads, offsets, cols, kinds, predicate: Some(predicate) })
    }

    /// A map from explicit rows: `rows[head * num_blocks + query_block]` lists `(key_block, kind)`.
    /// Partial blocks need a `predicate`; rows are sorted and checked for duplicates.
    pub fn from_rows(
        blocks: BlockLayout,
        heads: usize,
        rows: Vec<Vec<(u32, BlockKind)>>,
        predicate: Option<Arc<dyn TokenPredicate>>,
    ) -> Result<Self> {
        let n = blocks.len();
        if heads == 0 || rows.len() != heads * n {
            return Err(DitAttentionError::Invalid(format!(
                "a block map with {heads} head(s) and {n} blocks needs {} rows, got {}",
                heads * n,
                rows.len()
            )));
        }
        let mut offsets = vec![0];
        let (mut cols, mut kinds) = (Vec::new(), Vec::new());
        for (r, mut row) in rows.into_iter().enumerate() {
            row.sort_by_key(|e| e.0);
            for (i, &(kb, kind)) in row.iter().enumerate() {
                if kb as usize >= n || (i > 0 && row[i - 1].0 == kb) {
                    return Err(DitAttentionError::Invalid(format!(
                        "row {r} of the block map lists key block {kb} twice or beyond the {n} blocks"
                    )));
                }
                if kind == BlockKind::Partial && predicate.is_none() {
                    return Err(DitAttentionError::Invalid(format!(
                        "row {r} has a partial key block {kb} but the map has no token predicate"
                    )));
                }
                cols.push(kb);
                kinds.push(kind);
            }
            offsets.push(cols.len());
        }
        Ok(Self { blocks, heads, offsets, cols, kinds, predicate })
    }

    /// The block cut.
    pub fn blocks(&self) -> &BlockLayout {
        &self.blocks
    }

    /// The layout.
    pub fn layout(&self) -> &VideoLayout {
        self.blocks.layout()
    }

    /// Number of per-head maps (1 = shared by all heads).
    pub fn heads(&self) -> usize {
        self.heads
    }

    /// Number of (query and key) blocks.
    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// The visited key blocks of `(head, query_block)`; `head` is ignored for a shared map.
    pub fn row(&self, head: usize, query_block: usize) -> impl ExactSizeIterator<Item = (usize, BlockKind)> + '_ {
        let r = self.row_index(head, query_block);
        let (a, b) = (self.offsets[r], self.offsets[r + 1]);
        self.cols[a..b].iter().zip(&self.kinds[a..b]).map(|(&c, &k)| (c as usize, k))
    }

    fn row_index(&self, head: usize, query_block: usize) -> usize {
        let h = if self.heads == 1 { 0 } else { head };
        h * self.blocks.len() + query_block
    }

    /// The token predicate of partial blocks, if any.
    pub fn predicate(&self) -> Option<&Arc<dyn TokenPredicate>> {
        self.predicate.as_ref()
    }

    /// Is the pair of sequence positions `(q, k)` allowed for `head` under this map?
    ///
    /// # Panics
    /// If `q` or `k` is not a position of the sequence.
    pub fn allows(&self, head: usize, q: usize, k: usize) -> bool {
        let n = self.layout().seq_len();
        assert!(q < n && k < n, "positions ({q}, {k}) outside a sequence of {n} tokens");
        let (qb, kb) = (self.block_of(q), self.block_of(k));
        match self.row(head, qb).find(|e| e.0 == kb) {
            None => false,
            Some((_, BlockKind::Full)) => true,
            Some((_, BlockKind::Partial)) => {
                self.predicate.as_ref().expect("partial blocks always come with a predicate").allows(head, q, k)
            }
        }
    }

    /// The block holding sequence position `pos`.
    pub fn block_of(&self, pos: usize) -> usize {
        self.blocks.block_at(pos)
    }

    /// The kernel form: `counts[head * n + qb]` and `indices` padded to `max_count` per row with the
    /// kind of each entry (`1` = partial, `0` = full).
    pub fn to_index_arrays(&self) -> IndexArrays {
        let rows = self.heads * self.blocks.len();
        let counts: Vec<u32> = (0..rows).map(|r| (self.offsets[r + 1] - self.offsets[r]) as u32).collect();
        let max_count = counts.iter().copied().max().unwrap_or(0) as usize;
        let mut indices = vec![0u32; rows * max_count];
        let mut partial = vec![0u8; rows * max_count];
        for r in 0..rows {
            for (i, e) in (self.offsets[r]..self.offsets[r + 1]).enumerate() {
                indices[r * max_count + i] = self.cols[e];
                partial[r * max_count + i] = (self.kinds[e] == BlockKind::Partial) as u8;
            }
        }
        IndexArrays { rows, max_count, counts, indices, partial }
    }

    /// Counts of visited entries by segment pair: `(full, partial)` over video x video blocks, and
    /// entries of any pair involving text. Summed over heads.
    pub(crate) fn entry_counts(&self) -> (u64, u64, u64) {
        let n = self.blocks.len();
        let (mut full, mut partial, mut text) = (0, 0, 0);
        for r in 0..self.heads * n {
            let q_video = self.blocks.segment(r % n) == Segment::Video;
            for e in self.offsets[r]..self.offsets[r + 1] {
                if q_video && self.blocks.segment(self.cols[e] as usize) == Segment::Video {
                    match self.kinds[e] {
                        BlockKind::Full => full += 1,
                        BlockKind::Partial => partial += 1,
                    }
                } else {
                    text += 1;
                }
            }
        }
        (full, partial, text)
    }
}

/// A block map as flat arrays for a kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexArrays {
    /// `heads * num_blocks` rows.
    pub rows: usize,
    /// Row stride of `indices` and `partial`.
    pub max_count: usize,
    /// Visited key blocks per row.
    pub counts: Vec<u32>,
    /// Key block indices, `rows x max_count`, ascending within a row, padded with 0.
    pub indices: Vec<u32>,
    /// 1 where the entry is a partial block.
    pub partial: Vec<u8>,
}

/// Classifies a video query block against a video key block from their canvas boxes.
fn classify(mask: &AttentionMask, blocks: &BlockLayout, head: usize, qb: usize, kb: usize) -> Option<BlockKind> {
    let (mut any_full, mut any_empty) = (false, false);
    for q in blocks.boxes(qb) {
        for k in blocks.boxes(kb) {
            match mask.coverage(head, q, k) {
                Coverage::Partial => return Some(BlockKind::Partial),
                Coverage::Full => any_full = true,
                Coverage::Empty => any_empty = true,
            }
            if any_full && any_empty {
                return Some(BlockKind::Partial);
            }
        }
    }
    any_full.then_some(BlockKind::Full)
}
