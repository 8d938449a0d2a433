//! The two masks of smart attention (spec section 7) as one band rule read in two layouts.
//!
//! The video of a canvas `T x H x W` is cut into `T` groups of `H * W` consecutive positions of
//! the head's layout: frames in natural order (spatial heads), and runs of `H * W` tokens of the
//! token-major order `(h, w, t)` (temporal heads), i.e. about `H * W / T` spatial positions with
//! all their frames. A video query in group `g` sees the keys of groups `g - width ..= g + width`,
//! and of group 0 when the sink is on (frame 0 for spatial heads; the first run of the
//! token-major order for temporal heads: the same mask read in the other layout, as Sparse
//! VideoGen applies it). Text rows and columns are full. Both classes therefore keep the same
//! number of pairs, and in their own layout both are bands of whole blocks.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::canvas::{Canvas, TextSpec, TileShape, TokenOrder, VideoLayout};
use crate::error::{DitAttentionError, Result};
use crate::mask::{BlockKind, BlockLayout, BlockMap, BlockPartition, Segment};
use crate::permutation::TokenPermutation;
use crate::plan::KernelPlan;

/// How a head attends: within nearby frames, or across frames at nearby spatial positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeadClass {
    /// Frames `f - width ..= f + width` (natural order).
    Spatial,
    /// The same band in the token-major layout `(h, w, t)`.
    Temporal,
}

/// The band of a smart-attention config: a width in groups, or a target density.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BandSpec {
    /// Groups (frames) on each side of the query's own; below the frame count.
    Width(usize),
    /// The widest band whose density (fraction of video pairs kept) is at most this value, in
    /// `(0, 1]`; width 0 when even that is denser.
    Density(f64),
}

/// A band resolved against a canvas: width, sink, and the geometry of both layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Band {
    /// Video frames `T` (= groups).
    pub frames: usize,
    /// Tokens per group, `H * W`.
    pub group: usize,
    /// Groups on each side.
    pub width: usize,
    /// Group 0 is always visible.
    pub sink: bool,
    /// Canvas `[t, h, w]`.
    pub canvas: [usize; 3],
}

impl Band {
    /// Resolves `spec` for `canvas`; errors name the values.
    pub fn new(canvas: Canvas, spec: BandSpec, sink: bool) -> Result<Self> {
        let dims = canvas.dims();
        let frames = dims[0];
        let mut band = Self { frames, group: dims[1] * dims[2], width: 0, sink, canvas: dims };
        match spec {
            BandSpec::Width(width) => {
                if width >= frames {
                    return Err(DitAttentionError::Invalid(format!(
                        "smart attention band width {width} (frames on each side) must be smaller than the {frames} frames of canvas {dims:?}"
                    )));
                }
                band.width = width;
            }
            BandSpec::Density(s) => {
                if !(s > 0.0 && s <= 1.0) {
                    return Err(DitAttentionError::Invalid(format!(
                        "smart attention target density {s} must lie in (0, 1]"
                    )));
                }
                band.width = (1..frames).take_while(|&w| Band { width: w, ..band }.density() <= s).last().unwrap_or(0);
            }
        }
        Ok(band)
    }

    /// Is video group `k` visible from video group `q`?
    pub fn sees(&self, q: usize, k: usize) -> bool {
        q.abs_diff(k) <= self.width || (self.sink && k == 0)
    }

    /// Fraction of video query-key pairs kept (text excluded), the same for both classes.
    pub fn density(&self) -> f64 {
        let t = self.frames;
        let kept: usize = (0..t).map(|q| (0..t).filter(|&k| self.sees(q, k)).count()).sum();
        kept as f64 / (t * t) as f64
    }

    /// The group of a video token `(t, h, w)` in the layout of `class`.
    pub fn group_of(&self, class: HeadClass, [t, h, w]: [usize; 3]) -> usize {
        let [frames, _, width] = self.canvas;
        match class {
            HeadClass::Spatial => t,
            HeadClass::Temporal => ((h * width + w) * frames + t) / self.group,
        }
    }

    /// The layout whose tile-major order is the class's order: tiles of one frame (natural
    /// order) or of one spatial position over all frames (token-major order).
    fn layout(&self, class: HeadClass, text: TextSpec) -> Result<VideoLayout> {
        let [t, h, w] = self.canvas;
        let tile = match class {
            HeadClass::Spatial => TileShape::new(1, h, w)?,
            HeadClass::Temporal => TileShape::new(t, 1, 1)?,
        };
        VideoLayout::new(Canvas::new(t, h, w)?, tile, text)
    }

    /// The kernel plan of `class`: blocks of one group each, every visited block full; for
    /// temporal heads the kernels gather the inputs into token-major order as they load them
    /// and scatter the output back (the exact permutation, never materialised).
    pub fn plan(&self, class: HeadClass, text: TextSpec) -> Result<KernelPlan> {
        let layout = self.layout(class, text)?;
        let blocks = BlockLayout::new(&layout, TokenOrder::TileMajor, BlockPartition::Uniform(self.group))?;
        let n = blocks.len();
        let video: Vec<usize> = (0..n).filter(|&b| blocks.segment(b) == Segment::Video).collect();
        debug_assert_eq!(video.len(), self.frames, "a group is H * W tokens, the video T * H * W");
        let rows: Vec<Vec<(u32, BlockKind)>> = (0..n)
            .map(|qb| match video.iter().position(|&b| b == qb) {
                // Text queries see every key.
                None => (0..n as u32).map(|kb| (kb, BlockKind::Full)).collect(),
                Some(g) => (0..n)
                    .filter(|&kb| match video.iter().position(|&b| b == kb) {
                        None => true,
                        Some(gk) => self.sees(g, gk),
                    })
                    .map(|kb| (kb as u32, BlockKind::Full))
                    .collect(),
            })
            .collect();
        let map = Arc::new(BlockMap::from_rows(blocks, 1, rows, None)?);
        let plan = KernelPlan::from_map(map, 1.0);
        Ok(match class {
            HeadClass::Spatial => plan,
            HeadClass::Temporal => plan.with_gather(Arc::new(TokenPermutation::to_tile_major(&layout)))?,
        })
    }
}
