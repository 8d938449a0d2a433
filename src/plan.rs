//! What one attention call hands to a backend: the block map in the kernel's form (every block,
//! the STA geometry, or counts and indices with in-block masks), the token gather when the inputs
//! are not in the map's order, the scale, and what the reference fallbacks need (the map itself).

use std::sync::{Arc, OnceLock};

use dit_attention_kernels::attention::{BlockMapArrays, KeyBlocks, StaGeometry, TransposedLists};

use crate::canvas::TextPlacement;
use crate::error::{DitAttentionError, Result};
use crate::mask::{BlockKind, BlockMap, BlockPartition, Segment};
use crate::permutation::TokenPermutation;

/// Query rows per block of a dense plan: one cube of the 8-plane MMA kernel (two of the portable one).
const DENSE_Q_BLOCK: usize = 128;
/// Keys per block of a dense plan (the kernel streams a block in tiles, so larger is cheaper).
const DENSE_K_BLOCK: usize = 256;

/// A block-sparse attention problem as kernels read it. Cheap to clone (shared); modules build
/// theirs once and set the scale per call ([`KernelPlan::with_scale`]).
#[derive(Debug, Clone)]
pub struct KernelPlan {
    data: Arc<PlanData>,
    scale: f64,
}

#[derive(Debug, Clone)]
struct PlanData {
    q_starts: Vec<u32>,
    k_starts: Vec<u32>,
    map_heads: usize,
    blocks: PlanBlocks,
    gather: Option<Arc<TokenPermutation>>,
    /// Key block -> query blocks, for the backward (built on first use).
    transposed: Arc<OnceLock<Transposed>>,
}

/// The transposed lists, and the mask bits their offsets point into where the forward's arrays
/// are not cached in the plan (index-list plans borrow the forward's bits instead of a copy).
#[derive(Debug)]
struct Transposed {
    lists: TransposedLists,
    own_bits: Option<Vec<u32>>,
}

#[derive(Debug, Clone)]
enum PlanBlocks {
    /// Every query sees every key.
    Dense,
    /// Index lists and in-block masks, built on first use by a kernel.
    Map { map: Arc<BlockMap>, arrays: Arc<OnceLock<MapArrays>> },
    /// STA: the kernel computes each window from tile coordinates (no index lists).
    Sta { map: Arc<BlockMap>, geometry: Vec<u32> },
}

/// Index lists of a map as the kernel reads them.
#[derive(Debug)]
struct MapArrays {
    counts: Vec<u32>,
    indices: Vec<u32>,
    max_count: usize,
    /// Per entry `u32::MAX` (full) or the first word of its bit mask, and the bits.
    masks: Option<(Vec<u32>, Vec<u32>)>,
}

fn cut(n: usize, step: usize) -> Vec<u32> {
    let mut s: Vec<u32> = (0..n).step_by(step).map(|x| x as u32).collect();
    s.push(n as u32);
    s
}

impl KernelPlan {
    fn new(q_starts: Vec<u32>, k_starts: Vec<u32>, map_heads: usize, blocks: PlanBlocks, scale: f64) -> Self {
        Self {
            data: Arc::new(PlanData {
                q_starts,
                k_starts,
                map_heads,
                blocks,
                gather: None,
                transposed: Arc::new(OnceLock::new()),
            }),
            scale,
        }
    }

    /// Every query sees every key (`q_len` queries, `k_len` keys).
    pub fn dense(q_len: usize, k_len: usize, scale: f64) -> Self {
        Self::new(cut(q_len, DENSE_Q_BLOCK), cut(k_len, DENSE_K_BLOCK), 1, PlanBlocks::Dense, scale)
    }

    /// Every query sees every key, the sequence cut at `starts` (queries and keys alike): the
    /// shape of a block-list call, and its dense fast path.
    pub(crate) fn dense_blocks(starts: Vec<u32>, scale: f64) -> Self {
        Self::new(starts.clone(), starts, 1, PlanBlocks::Dense, scale)
    }

    /// Self-attention over a block map (index lists; partial blocks masked in the kernel).
    pub fn from_map(map: Arc<BlockMap>, scale: f64) -> Self {
        let starts: Vec<u32> = map.blocks().starts().iter().map(|&s| s as u32).collect();
        let heads = map.heads();
        Self::new(starts.clone(), starts, heads, PlanBlocks::Map { map, arrays: Arc::new(OnceLock::new()) }, scale)
    }

    /// Sliding Tile Attention with `windows` (one, or one per head of `map`) over `map`, a
    /// one-block-per-tile map of the same windows: kernels compute each window from tile
    /// coordinates; the map serves the reference fallbacks.
    pub fn sta(map: Arc<BlockMap>, windows: &[[usize; 3]], scale: f64) -> Result<Self> {
        let blocks = map.blocks();
        if blocks.partition() != BlockPartition::PerTile || windows.len() != map.heads() {
            return Err(DitAttentionError::Invalid(format!(
                "an STA plan needs a one-block-per-tile map with one row set per window; got {:?} with {} row set(s) for {} window(s)",
                blocks.partition(),
                map.heads(),
                windows.len()
            )));
        }
        let n = blocks.len();
        let text_blocks = (0..n).filter(|&b| blocks.segment(b) == Segment::Text).count();
        let (video_block0, text_block0) = match blocks.layout().text().placement {
            TextPlacement::Before => (text_blocks, 0),
            TextPlacement::After => (0, n - text_blocks),
        };
        let geometry = StaGeometry {
            tiles: blocks.layout().tiling().counts(),
            video_block0,
            text_block0,
            text_blocks,
            windows: windows.to_vec(),
        }
        .to_kernel_array();
        let starts: Vec<u32> = blocks.starts().iter().map(|&s| s as u32).collect();
        let heads = map.heads();
        Ok(Self::new(starts.clone(), starts, heads, PlanBlocks::Sta { map, geometry }, scale))
    }

    /// The same plan with the inputs in another order: map position `i` is input row
    /// `gather.forward()[i]` (queries and keys alike; kernels fuse the gather into their loads
    /// and the scatter into their writes).
    pub fn with_gather(&self, gather: Arc<TokenPermutation>) -> Result<Self> {
        if self.q_len() != self.k_len() || gather.len() != self.q_len() {
            return Err(DitAttentionError::Invalid(format!(
                "a token gather of {} positions needs a self-attention plan of that length, got {} x {}",
                gather.len(),
                self.q_len(),
                self.k_len()
            )));
        }
        // Shares the map and its lazily built arrays (both behind `Arc`s).
        let data = PlanData { gather: Some(gather), ..(*self.data).clone() };
        Ok(Self { data: Arc::new(data), scale: self.scale })
    }

    /// The same plan with another score scale.
    pub fn with_scale(&self, scale: f64) -> Self {
        Self { data: self.data.clone(), scale }
    }

    /// Query block boundaries (`nqb + 1`, last = query length).
    pub fn q_starts(&self) -> &[u32] {
        &self.data.q_starts
    }

    /// Key block boundaries (last = key length).
    pub fn k_starts(&self) -> &[u32] {
        &self.data.k_starts
    }

    /// 1 (shared by all heads) or the number of heads.
    pub fn map_heads(&self) -> usize {
        self.data.map_heads
    }

    /// The block map, `None` for a dense plan.
    pub fn map(&self) -> Option<&Arc<BlockMap>> {
        match &self.data.blocks {
            PlanBlocks::Dense => None,
            PlanBlocks::Map { map, .. } | PlanBlocks::Sta { map, .. } => Some(map),
        }
    }

    /// The gather from input rows to map positions, when the inputs are in another order.
    pub fn gather(&self) -> Option<&Arc<TokenPermutation>> {
        self.data.gather.as_ref()
    }

    /// The plan as the kernels read it (index lists and masks are built on the first call).
    pub fn kernel_arrays(&self) -> BlockMapArrays<'_> {
        let d = &self.data;
        let blocks = match &d.blocks {
            PlanBlocks::Dense => KeyBlocks::All,
            PlanBlocks::Sta { geometry, .. } => KeyBlocks::Sta(geometry),
            PlanBlocks::Map { map, arrays } => {
                let a = arrays.get_or_init(|| map_arrays(map));
                KeyBlocks::Arrays {
                    counts: &a.counts,
                    indices: &a.indices,
                    max_count: a.max_count,
                    masks: a.masks.as_ref().map(|(o, b)| (&o[..], &b[..])),
                }
            }
        };
        BlockMapArrays {
            q_starts: &d.q_starts,
            k_starts: &d.k_starts,
            blocks,
            map_heads: d.map_heads,
            gather: d.gather.as_deref().map(|g| g.forward()),
        }
    }

    /// The plan seen from the keys, as the backward's dK/dV kernel reads it: key block
    /// boundaries first, then per key block the query blocks that visit it (with their in-block
    /// masks); built once from the forward lists, never as a dense block matrix.
    pub fn transposed_kernel_arrays(&self) -> BlockMapArrays<'_> {
        let d = &self.data;
        let blocks = match &d.blocks {
            PlanBlocks::Dense => KeyBlocks::All,
            PlanBlocks::Map { map, .. } | PlanBlocks::Sta { map, .. } => {
                let t = d.transposed.get_or_init(|| {
                    let nkb = d.k_starts.len() - 1;
                    let transpose = |a: &MapArrays| {
                        let offsets = a.masks.as_ref().map(|(o, _)| &o[..]);
                        TransposedLists::new(&a.counts, &a.indices, a.max_count, offsets, d.map_heads, nkb)
                    };
                    match &d.blocks {
                        PlanBlocks::Map { arrays, .. } => {
                            Transposed { lists: transpose(arrays.get_or_init(|| map_arrays(map))), own_bits: None }
                        }
                        _ => {
                            let a = map_arrays(map);
                            Transposed { lists: transpose(&a), own_bits: a.masks.map(|(_, b)| b) }
                        }
                    }
                });
                let bits = match &d.blocks {
                    PlanBlocks::Map { arrays, .. } => arrays.get().and_then(|a| a.masks.as_ref()).map(|(_, b)| &b[..]),
                    _ => t.own_bits.as_deref(),
                };
                KeyBlocks::Arrays {
                    counts: &t.lists.counts,
                    indices: &t.lists.indices,
                    max_count: t.lists.max_count,
                    masks: t.lists.mask_offsets.as_deref().zip(bits),
                }
            }
        };
        BlockMapArrays {
            q_starts: &d.k_starts,
            k_starts: &d.q_starts,
            blocks,
            map_heads: d.map_heads,
            gather: d.gather.as_deref().map(|g| g.forward()),
        }
    }

    /// Score scale.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Number of queries.
    pub fn q_len(&self) -> usize {
        *self.data.q_starts.last().expect("at least one boundary") as usize
    }

    /// Number of keys.
    pub fn k_len(&self) -> usize {
        *self.data.k_starts.last().expect("at least one boundary") as usize
    }

    /// Whether input query row `q` may see input key row `k` under head `head` (through the
    /// gather, when there is one).
    pub fn allows(&self, head: usize, q: usize, k: usize) -> bool {
        let Some(m) = self.map() else {
            return true;
        };
        let (q, k) = match &self.data.gather {
            Some(g) => (g.inverse()[q] as usize, g.inverse()[k] as usize),
            None => (q, k),
        };
        m.allows(if m.heads() == 1 { 0 } else { head }, q, k)
    }

    /// Allowed (query, key) pairs of one head, for throughput figures.
    pub fn allowed_pairs(&self, head: usize) -> u64 {
        let Some(map) = self.map() else {
            return self.q_len() as u64 * self.k_len() as u64;
        };
        let h = if map.heads() == 1 { 0 } else { head };
        let blocks = map.blocks();
        let mut pairs = 0u64;
        for qb in 0..blocks.len() {
            for (kb, kind) in map.row(h, qb) {
                pairs += match kind {
                    BlockKind::Full => (blocks.range(qb).len() * blocks.range(kb).len()) as u64,
                    BlockKind::Partial => blocks
                        .range(qb)
                        .flat_map(|q| blocks.range(kb).map(move |k| (q, k)))
                        .filter(|&(q, k)| map.allows(h, q, k))
                        .count() as u64,
                };
            }
        }
        pairs
    }
}

/// Index lists of `map`, with a bit mask for every partial entry (one bit per pair of the
/// block, rows padded to whole 32-bit words).
fn map_arrays(map: &BlockMap) -> MapArrays {
    let a = map.to_index_arrays();
    let masks = a.partial.iter().any(|&p| p != 0).then(|| {
        let blocks = map.blocks();
        let n = blocks.len();
        let mut offsets = vec![u32::MAX; a.indices.len()];
        let mut bits = Vec::new();
        for r in 0..a.rows {
            let (head, qb) = (r / n, r % n);
            for e in 0..a.counts[r] as usize {
                let slot = r * a.max_count + e;
                if a.partial[slot] == 0 {
                    continue;
                }
                offsets[slot] = bits.len() as u32;
                let keys = blocks.range(a.indices[slot] as usize);
                let words = keys.len().div_ceil(32);
                for q in blocks.range(qb) {
                    let row = bits.len();
                    bits.resize(row + words, 0u32);
                    for (j, k) in keys.clone().enumerate() {
                        if map.allows(head, q, k) {
                            bits[row + j / 32] |= 1 << (j % 32);
                        }
                    }
                }
            }
        }
        (offsets, bits)
    });
    MapArrays { counts: a.counts, indices: a.indices, max_count: a.max_count, masks }
}
