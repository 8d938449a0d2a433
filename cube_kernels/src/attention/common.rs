//! Pieces both forward kernels share: where the block map comes from (index arrays, every block,
//! or the STA window computed from tile coordinates), in-block masks, the token gather, the
//! cooperative row loads and the final write of one output row and its LSE.

use cubecl::prelude::*;

use super::portable::NEG_BIG;

/// Where a kernel reads its block map and token order. Arrays a configuration does not use hold
/// one dummy element.
///
/// - `q_starts` / `k_starts`: block boundaries (`nqb + 1` / `nkb + 1`, last = length).
/// - `counts`, `indices`: with [`MapSource::Arrays`], per map row `r = (map_heads == 1 ? 0 : h) *
///   nqb + qb`, key blocks `indices[r * max_count + e]` for `e < counts[r]`.
/// - `mask_offsets`, `mask_bits`: with partial blocks, entry `r * max_count + e` is `u32::MAX`
///   (full) or the first word of its bit mask in `mask_bits`: query row `i` of the block, key `j`,
///   bit `j % 32` of word `i * ceil(block keys / 32) + j / 32`.
/// - `sta`: with [`MapSource::Sta`], `[n_t, n_h, n_w, first video block, first text block, text
///   blocks]` then per map head `[ext_t, ext_h, ext_w, half_t, half_h, half_w]` (see
///   [`sta_window_lo`]).
/// - `gather`: with a gathered order, sequence position `p` of the map reads and writes input
///   row `gather[p]` (the permutation fused into the loads).
#[derive(CubeLaunch, CubeType)]
pub struct SparseMap {
    /// Query block boundaries.
    pub q_starts: Array<u32>,
    /// Key block boundaries.
    pub k_starts: Array<u32>,
    /// Visited key blocks per map row.
    pub counts: Array<u32>,
    /// `rows x max_count` key block indices.
    pub indices: Array<u32>,
    /// Per visited entry: `u32::MAX` or the first word of its bit mask.
    pub mask_offsets: Array<u32>,
    /// Bit masks of partial entries.
    pub mask_bits: Array<u32>,
    /// STA geometry.
    pub sta: Array<u32>,
    /// Input row of each map position.
    pub gather: Array<u32>,
}

/// How a kernel finds the key blocks of a query block (comptime).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MapSource {
    /// Counts and index lists.
    Arrays,
    /// Every key block (dense attention).
    All,
    /// The STA window of the query's tile plus every text block, from tile coordinates.
    Sta,
}

/// The comptime shape of a kernel's map: source, partial blocks, gathered order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MapConfig {
    /// Where the key blocks come from.
    pub source: MapSource,
    /// Some entries carry bit masks (index arrays only).
    pub partial: bool,
    /// Inputs are read and outputs written through `gather`.
    pub gathered: bool,
}

/// The key blocks one query block visits, decoded once per cube.
#[derive(CubeType)]
pub struct Visits {
    /// Number of visited key blocks.
    pub count: usize,
    /// Map row (index arrays).
    pub row: usize,
    /// STA: the query is a text block (visits every block).
    pub text_query: bool,
    /// STA: first window tile per dimension.
    pub lo_t: usize,
    /// STA: first window tile per dimension.
    pub lo_h: usize,
    /// STA: first window tile per dimension.
    pub lo_w: usize,
    /// STA: window tiles per dimension.
    pub ext_h: usize,
    /// STA: window tiles per dimension.
    pub ext_w: usize,
    /// STA: tiles in the window.
    pub window: usize,
}

/// First window tile of a query tile `q` in one dimension: `clamp(q - half, 0, n - ext)`, i.e.
/// the window centred at `clamp(q, half, n - 1 - half)` (spec section 2); `ext = min(k, n)`.
#[cube]
pub fn sta_window_lo(q: usize, half: usize, n: usize, ext: usize) -> usize {
    let mut lo = 0usize;
    if q > half {
        lo = q - half;
    }
    let top = n - ext;
    if lo > top {
        lo = top;
    }
    lo
}

/// The visits of query block `qb` for head `h`.
#[cube]
pub fn visits(map: &SparseMap, qb: usize, h: usize, map_heads: u32, #[comptime] config: MapConfig) -> Visits {
    let n_q_blocks = map.q_starts.len() - 1;
    let n_k_blocks = map.k_starts.len() - 1;
    let mut row = qb;
    if map_heads != 1 {
        row = h * n_q_blocks + qb;
    }
    let mut v =
        Visits { count: n_k_blocks, row, text_query: true, lo_t: 0, lo_h: 0, lo_w: 0, ext_h: 1, ext_w: 1, window: 0 };
    if comptime![config.source == MapSource::Arrays] {
        v.count = map.counts[row] as usize;
    }
    if comptime![config.source == MapSource::Sta] {
        let n_t = map.sta[0] as usize;
        let n_h = map.sta[1] as usize;
        let n_w = map.sta[2] as usize;
        let video0 = map.sta[3] as usize;
        let tiles = n_t * n_h * n_w;
        if qb >= video0 && qb < video0 + tiles {
            let mut hh = 0usize;
            if map_heads != 1 {
                hh = h;
            }
            let w = 6 + hh * 6;
            let tile = qb - video0;
            let ext_t = map.sta[w] as usize;
            v.ext_h = map.sta[w + 1] as usize;
            v.ext_w = map.sta[w + 2] as usize;
            v.lo_t = sta_window_lo(tile / (n_h * n_w), map.sta[w + 3] as usize, n_t, ext_t);
            v.lo_h = sta_window_lo((tile / n_w) % n_h, map.sta[w + 4] as usize, n_h, v.ext_h);
            v.lo_w = sta_window_lo(tile % n_w, map.sta[w + 5] as usize, n_w, v.ext_w);
            v.window = ext_t * v.ext_h * v.ext_w;
            v.count = v.window + map.sta[5] as usize;
            v.text_query = false;
        }
    }
    v
}

/// The `e`-th key block of `v`.
// The outer `if`s are comptime branches (whole code paths), not conditions to merge.
#[allow(clippy::collapsible_if)]
#[cube]
pub fn key_block(map: &SparseMap, v: &Visits, e: usize, max_count: u32, #[comptime] config: MapConfig) -> usize {
    let mut kb = e;
    if comptime![config.source == MapSource::Arrays] {
        kb = map.indices[v.row * max_count as usize + e] as usize;
    }
    if comptime![config.source == MapSource::Sta] {
        if !v.text_query {
            if e < v.window {
                let n_h = map.sta[1] as usize;
                let n_w = map.sta[2] as usize;
                let t = v.lo_t + e / (v.ext_h * v.ext_w);
                let y = v.lo_h + (e / v.ext_w) % v.ext_h;
                let x = v.lo_w + e % v.ext_w;
                kb = map.sta[3] as usize + (t * n_h + y) * n_w + x;
            } else {
                kb = map.sta[4] as usize + e - v.window;
            }
        }
    }
    kb
}

/// First mask word of entry `e` of `v` (`u32::MAX`: a full block); only with partial blocks.
#[cube]
pub fn mask_offset(map: &SparseMap, v: &Visits, e: usize, max_count: u32) -> u32 {
    map.mask_offsets[v.row * max_count as usize + e]
}

/// Whether key `j` (of a block of `block_keys` keys) is allowed for query row `i` of its block
/// under the mask starting at word `offset`.
#[cube]
pub fn mask_allows(map: &SparseMap, offset: u32, i: usize, j: usize, block_keys: usize) -> bool {
    let words = block_keys.div_ceil(32);
    let word = map.mask_bits[offset as usize + i * words + j / 32];
    ((word >> (j % 32) as u32) & 1u32) == 1u32
}

/// The input row of map position `pos`.
#[cube]
pub fn input_row(map: &SparseMap, pos: usize, #[comptime] gathered: bool) -> usize {
    let mut r = pos;
    if comptime![gathered] {
        r = map.gather[pos] as usize;
    }
    r
}

/// Loads `rows x dim` elements of `src` (map positions `start..start + rows` of the sequence whose
/// first row is `base`, through the gather when `gathered`) into `dst` with row stride `stride`
/// (`dim`, or more to spread rows over shared-memory banks), all `threads` units of the cube
/// together; positions at or past `end` are zero-filled.
#[cube]
#[allow(clippy::too_many_arguments)]
pub fn load_rows<F: Float>(
    src: &Array<F>,
    dst: &mut SharedMemory<F>,
    map: &SparseMap,
    base: usize,
    start: usize,
    end: usize,
    #[comptime] rows: usize,
    #[comptime] dim: usize,
    #[comptime] stride: usize,
    #[comptime] threads: usize,
    #[comptime] gathered: bool,
) {
    let loads = (rows * dim).div_ceil(threads);
    for it in 0..loads {
        let idx = it * threads + UNIT_POS as usize;
        if idx < rows * dim {
            let r = start + idx / dim;
            let mut val = F::new(0.0);
            if r < end {
                val = src[(base + input_row(map, r, gathered)) * dim + idx % dim];
            }
            dst[(idx / dim) * stride + idx % dim] = val;
        }
    }
}

/// Writes `acc / l` as output row `pos` and `m + ln(l)` as its LSE; a row that saw no key
/// (`l == 0`) gets zeros and `empty_lse`.
#[cube]
#[allow(clippy::too_many_arguments)]
pub fn write_row<F: Float>(
    out: &mut Array<F>,
    lse: &mut Array<f32>,
    acc: &Array<f32>,
    m: f32,
    l: f32,
    pos: usize,
    empty_lse: f32,
    #[comptime] value_dim: usize,
) {
    let out_base = pos * value_dim;
    if l > 0.0 {
        for x in 0..value_dim {
            out[out_base + x] = F::cast_from(acc[x] / l);
        }
        lse[pos] = m + f32::ln(l);
    } else {
        for x in 0..value_dim {
            out[out_base + x] = F::new(0.0);
        }
        lse[pos] = empty_lse;
    }
}

/// The score of key `key` (map position) for a query after bias and mask: `s` plus the key's
/// bias, or [`NEG_BIG`] where the in-block mask forbids it (such scores get weight 0).
// The outer `if` is a comptime branch (a code path), not a condition to merge.
#[allow(clippy::too_many_arguments, clippy::collapsible_if)]
#[cube]
pub fn finish_score<F: Float>(
    s: f32,
    bias: &Array<F>,
    map: &SparseMap,
    bias_base: usize,
    key: usize,
    mask_word: u32,
    qi: usize,
    kj: usize,
    block_keys: usize,
    #[comptime] has_bias: bool,
    #[comptime] config: MapConfig,
) -> f32 {
    let mut out = s;
    if has_bias {
        out += f32::cast_from(bias[bias_base + input_row(map, key, config.gathered)]);
    }
    if comptime![config.partial] {
        // Nested, not `&&`: kernel conditions evaluate both sides, and a full block's word is
        // no index.
        if mask_word != u32::MAX {
            if !mask_allows(map, mask_word, qi, kj, block_keys) {
                out = f32::new(NEG_BIG);
            }
        }
    }
    out
}

/// Weight `exp(s - m)` of a score, 0 for a masked one.
#[cube]
pub fn weight(s: f32, m: f32) -> f32 {
    let mut p = 0.0f32;
    if s > f32::new(NEG_BIG) {
        p = f32::exp(s - m);
    }
    p
}
