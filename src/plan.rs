//! What one attention call hands to a backend: the block map in the kernel's form (counts and
//! indices per query block), plus what the fallbacks need (the map itself, the scale).

use std::sync::Arc;

use crate::mask::{BlockKind, BlockMap};

/// Query rows per block of a dense plan: one cube of the portable kernel.
const DENSE_Q_BLOCK: usize = 64;
/// Keys per block of a dense plan (the kernel streams a block in tiles, so larger is cheaper).
const DENSE_K_BLOCK: usize = 256;

/// A block-sparse attention problem as kernels read it. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct KernelPlan(Arc<PlanData>);

#[derive(Debug)]
struct PlanData {
    q_starts: Vec<u32>,
    k_starts: Vec<u32>,
    counts: Vec<u32>,
    indices: Vec<u32>,
    max_count: usize,
    map_heads: usize,
    has_partial: bool,
    map: Option<Arc<BlockMap>>,
    scale: f64,
}

impl KernelPlan {
    /// Every query sees every key (`q_len` queries, `k_len` keys).
    pub fn dense(q_len: usize, k_len: usize, scale: f64) -> Self {
        let cut = |n: usize, step: usize| -> Vec<u32> {
            let mut s: Vec<u32> = (0..n).step_by(step).map(|x| x as u32).collect();
            s.push(n as u32);
            s
        };
        let q_starts = cut(q_len, DENSE_Q_BLOCK);
        let k_starts = cut(k_len, DENSE_K_BLOCK);
        let (nqb, nkb) = (q_starts.len() - 1, k_starts.len() - 1);
        let row: Vec<u32> = (0..nkb as u32).collect();
        Self(Arc::new(PlanData {
            q_starts,
            k_starts,
            counts: vec![nkb as u32; nqb],
            indices: row.repeat(nqb),
            max_count: nkb,
            map_heads: 1,
            has_partial: false,
            map: None,
            scale,
        }))
    }

    /// Self-attention over a block map.
    pub fn from_map(map: Arc<BlockMap>, scale: f64) -> Self {
        let arrays = map.to_index_arrays();
        let starts: Vec<u32> = map.blocks().starts().iter().map(|&s| s as u32).collect();
        let has_partial = arrays.partial.iter().any(|&p| p != 0);
        Self(Arc::new(PlanData {
            q_starts: starts.clone(),
            k_starts: starts,
            counts: arrays.counts,
            indices: arrays.indices,
            max_count: arrays.max_count,
            map_heads: map.heads(),
            has_partial,
            map: Some(map),
            scale,
        }))
    }

    /// Query block boundaries (`nqb + 1`, last = query length).
    pub fn q_starts(&self) -> &[u32] {
        &self.0.q_starts
    }

    /// Key block boundaries (last = key length).
    pub fn k_starts(&self) -> &[u32] {
        &self.0.k_starts
    }

    /// Visited key blocks per map row.
    pub fn counts(&self) -> &[u32] {
        &self.0.counts
    }

    /// Key block indices, `rows x max_count`.
    pub fn indices(&self) -> &[u32] {
        &self.0.indices
    }

    /// Row stride of [`Self::indices`].
    pub fn max_count(&self) -> usize {
        self.0.max_count
    }

    /// 1 (shared by all heads) or the number of heads.
    pub fn map_heads(&self) -> usize {
        self.0.map_heads
    }

    /// Whether some visited block is only partly allowed (kernels without in-block masks must
    /// hand such plans to the reference).
    pub fn has_partial(&self) -> bool {
        self.0.has_partial
    }

    /// The block map, `None` for a dense plan.
    pub fn map(&self) -> Option<&Arc<BlockMap>> {
        self.0.map.as_ref()
    }

    /// Score scale.
    pub fn scale(&self) -> f64 {
        self.0.scale
    }

    /// Number of queries.
    pub fn q_len(&self) -> usize {
        *self.0.q_starts.last().expect("at least one boundary") as usize
    }

    /// Number of keys.
    pub fn k_len(&self) -> usize {
        *self.0.k_starts.last().expect("at least one boundary") as usize
    }

    /// Whether query `q` may see key `k` under head `head`.
    pub fn allows(&self, head: usize, q: usize, k: usize) -> bool {
        match &self.0.map {
            None => true,
            Some(m) => m.allows(if m.heads() == 1 { 0 } else { head }, q, k),
        }
    }

    /// Allowed (query, key) pairs of one head, for throughput figures.
    pub fn allowed_pairs(&self, head: usize) -> u64 {
        let Some(map) = &self.0.map else {
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
