//! Cutting the sequence into blocks, and describing a block's tokens as a few canvas boxes.

use serde::{Deserialize, Serialize};

use crate::canvas::{TextPlacement, TokenOrder, VideoLayout};
use crate::error::{DitAttentionError, Result};

/// How the sequence is cut into (query and key) blocks.
///
/// Blocks never straddle the text / video boundary: each segment is cut on its own, so text blocks
/// stay whole and the video blocks of STA stay dense whatever the text length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BlockPartition {
    /// Blocks of this many tokens (the last block of each segment may be shorter).
    Uniform(usize),
    /// One block per tile (tile-major order only; ragged edge tiles give shorter blocks); text is
    /// cut into blocks of the full tile volume.
    PerTile,
}

/// What a block holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Segment {
    /// Text tokens.
    Text,
    /// Video tokens.
    Video,
}

/// A canvas box, `lo` inclusive, `hi` exclusive in each dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Box3 {
    /// First coordinate per dimension.
    pub lo: [usize; 3],
    /// One past the last coordinate per dimension.
    pub hi: [usize; 3],
}

impl Box3 {
    fn hull(&self, other: &Box3) -> Box3 {
        Box3 { lo: [0, 1, 2].map(|d| self.lo[d].min(other.lo[d])), hi: [0, 1, 2].map(|d| self.hi[d].max(other.hi[d])) }
    }
}

/// The blocks of one sequence: ranges of positions, their segment, and the canvas boxes of video blocks.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockLayout {
    layout: VideoLayout,
    order: TokenOrder,
    partition: BlockPartition,
    starts: Vec<usize>,
    segments: Vec<Segment>,
    boxes: Vec<Vec<Box3>>,
    hulls: Vec<Option<Box3>>,
}

impl BlockLayout {
    /// Cuts the sequence of `layout` (video in `order`) into blocks.
    pub fn new(layout: &VideoLayout, order: TokenOrder, partition: BlockPartition) -> Result<Self> {
        let tiling = layout.tiling();
        let text_block = match partition {
            BlockPartition::Uniform(0) => {
                return Err(DitAttentionError::Invalid("block size must be at least 1, got 0".into()));
            }
            BlockPartition::Uniform(b) => b,
            BlockPartition::PerTile if order != TokenOrder::TileMajor => {
                return Err(DitAttentionError::Invalid(
                    "one block per tile needs tile-major order; got natural order (use a uniform block size)".into(),
                ));
            }
            BlockPartition::PerTile => tiling.tile().volume(),
        };
        let mut video_cuts: Vec<usize> = match partition {
            BlockPartition::Uniform(b) => (0..layout.video_len()).step_by(b).collect(),
            BlockPartition::PerTile => {
                (0..tiling.num_tiles()).map(|i| tiling.tile_offset(tiling.tile_coords(i))).collect()
            }
        };
        video_cuts.push(layout.video_len());
        let text_len = layout.text().len;
        let mut text_cuts: Vec<usize> = (0..text_len).step_by(text_block).collect();
        text_cuts.push(text_len);

        let (mut starts, mut segments) = (Vec::new(), Vec::new());
        let mut push = |cuts: &[usize], base: usize, seg: Segment| {
            for &c in &cuts[..cuts.len() - 1] {
                starts.push(base + c);
                segments.push(seg);
            }
        };
        let video = layout.video_range();
        match layout.text().placement {
            TextPlacement::Before => {
                push(&text_cuts, 0, Segment::Text);
                push(&video_cuts, video.start, Segment::Video);
            }
            TextPlacement::After => {
                push(&video_cuts, 0, Segment::Video);
                push(&text_cuts, video.end, Segment::Text);
            }
        }
        starts.push(layout.seq_len());

        let mut this =
            Self { layout: *layout, order, partition, starts, segments, boxes: Vec::new(), hulls: Vec::new() };
        this.boxes = (0..this.len()).map(|i| this.compute_boxes(i)).collect();
        this.hulls = this.boxes.iter().map(|b| b.iter().copied().reduce(|a, c| a.hull(&c))).collect();
        Ok(this)
    }

    /// The layout cut.
    pub fn layout(&self) -> &VideoLayout {
        &self.layout
    }

    /// The video order of the sequence.
    pub fn order(&self) -> TokenOrder {
        self.order
    }

    /// The partition rule.
    pub fn partition(&self) -> BlockPartition {
        self.partition
    }

    /// Number of blocks.
    pub fn len(&self) -> usize {
        self.segments.len()
    }

    /// True when there are no blocks (never for a valid layout).
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// Positions of block `i`.
    pub fn range(&self, i: usize) -> std::ops::Range<usize> {
        self.starts[i]..self.starts[i + 1]
    }

    /// First position of every block, plus the sequence length at the end (`len() + 1` values).
    pub fn starts(&self) -> &[usize] {
        &self.starts
    }

    /// Text or video.
    pub fn segment(&self, i: usize) -> Segment {
        self.segments[i]
    }

    /// The canvas boxes whose union is video block `i` (empty for text blocks).
    pub fn boxes(&self, i: usize) -> &[Box3] {
        &self.boxes[i]
    }

    /// The smallest box holding video block `i`.
    pub(crate) fn hull(&self, i: usize) -> Option<&Box3> {
        self.hulls[i].as_ref()
    }

    /// Number of video blocks.
    pub fn video_blocks(&self) -> usize {
        self.segments.iter().filter(|s| **s == Segment::Video).count()
    }

    /// Appends the video blocks holding any token of the canvas box `region` (ascending, no
    /// repeats), without visiting blocks outside it: rows of the box in natural order, rows of
    /// tiles in tile-major order, are contiguous runs of positions.
    pub(crate) fn video_blocks_touching(&self, region: &Box3, out: &mut Vec<usize>) {
        let base = self.layout.video_range().start;
        let start = out.len();
        let mut run = |p0: usize, p1: usize| {
            // Positions [p0, p1) of the video block -> the blocks holding them.
            let (b0, b1) = (self.block_at(base + p0), self.block_at(base + p1 - 1));
            let from = match out.last() {
                Some(&last) if out.len() > start && last >= b0 => last + 1,
                _ => b0,
            };
            out.extend(from..=b1);
        };
        let (lo, hi) = (region.lo, region.hi);
        match self.order {
            TokenOrder::Natural => {
                let [_, h, w] = self.layout.canvas().dims();
                for t in lo[0]..hi[0] {
                    if lo[2] == 0 && hi[2] == w {
                        run((t * h + lo[1]) * w, (t * h + hi[1] - 1) * w + w);
                    } else {
                        for y in lo[1]..hi[1] {
                            run((t * h + y) * w + lo[2], (t * h + y) * w + hi[2]);
                        }
                    }
                }
            }
            TokenOrder::TileMajor => {
                let tiling = self.layout.tiling();
                let td = tiling.tile().dims();
                let (a0, a1) = (lo[0] / td[0], (hi[0] - 1) / td[0]);
                let (b0, b1) = (lo[1] / td[1], (hi[1] - 1) / td[1]);
                let (c0, c1) = (lo[2] / td[2], (hi[2] - 1) / td[2]);
                for a in a0..=a1 {
                    for b in b0..=b1 {
                        // Tiles c0..=c1 of one row of tiles are contiguous.
                        let last = tiling.tile_offset([a, b, c1]);
                        let vol = tiling.extent(0, a) * tiling.extent(1, b) * tiling.extent(2, c1);
                        run(tiling.tile_offset([a, b, c0]), last + vol);
                    }
                }
            }
        }
        out[start..].sort_unstable();
        let mut k = start;
        for i in start..out.len() {
            if i == start || out[i] != out[k - 1] {
                out[k] = out[i];
                k += 1;
            }
        }
        out.truncate(k);
    }

    /// The block holding sequence position `pos`.
    pub fn block_at(&self, pos: usize) -> usize {
        self.starts.partition_point(|&s| s <= pos) - 1
    }

    fn compute_boxes(&self, i: usize) -> Vec<Box3> {
        if self.segments[i] == Segment::Text {
            return Vec::new();
        }
        let base = self.layout.video_range().start;
        let (s, e) = (self.starts[i] - base, self.starts[i + 1] - base);
        let mut out = Vec::new();
        match self.order {
            TokenOrder::Natural => row_major_boxes([0; 3], self.layout.canvas().dims(), s, e, &mut out),
            TokenOrder::TileMajor => {
                let tiling = self.layout.tiling();
                let t = tiling.tile().dims();
                let first = tiling.coords_of_tile_major(s);
                let [_, nh, nw] = tiling.counts();
                let mut tile = (first[0] / t[0] * nh + first[1] / t[1]) * nw + first[2] / t[2];
                let mut pos = s;
                while pos < e {
                    let tc = tiling.tile_coords(tile);
                    let (origin, extent) = tiling.tile_box(tc);
                    let offset = tiling.tile_offset(tc);
                    let end = (offset + extent.iter().product::<usize>()).min(e);
                    row_major_boxes(origin, extent, pos - offset, end - offset, &mut out);
                    pos = end;
                    tile += 1;
                }
            }
        }
        out
    }
}

/// Boxes covering the positions `[s, e)` of a row-major walk over the box `origin + [0, extent)`.
fn row_major_boxes(origin: [usize; 3], extent: [usize; 3], s: usize, e: usize, out: &mut Vec<Box3>) {
    let at = |t0: usize, t1: usize, h0: usize, h1: usize, w0: usize, w1: usize| Box3 {
        lo: [origin[0] + t0, origin[1] + h0, origin[2] + w0],
        hi: [origin[0] + t1, origin[1] + h1, origin[2] + w1],
    };
    let [_, eh, ew] = extent;
    let plane = eh * ew;
    // Rows within one plane `t`: [r0, r1) positions of the plane.
    let plane_rows = |t: usize, r0: usize, r1: usize, out: &mut Vec<Box3>| {
        if r0 >= r1 {
            return;
        }
        let (h0, w0, h1, w1) = (r0 / ew, r0 % ew, r1 / ew, r1 % ew);
        if h0 == h1 {
            out.push(at(t, t + 1, h0, h0 + 1, w0, w1));
            return;
        }
        let mut h = h0;
        if w0 != 0 {
            out.push(at(t, t + 1, h0, h0 + 1, w0, ew));
            h += 1;
        }
        if h < h1 {
            out.push(at(t, t + 1, h, h1, 0, ew));
        }
        if w1 != 0 {
            out.push(at(t, t + 1, h1, h1 + 1, 0, w1));
        }
    };
    if s >= e {
        return;
    }
    let (t0, r0, t1, r1) = (s / plane, s % plane, e / plane, e % plane);
    if t0 == t1 {
        plane_rows(t0, r0, r1, out);
        return;
    }
    let mut t = t0;
    if r0 != 0 {
        plane_rows(t0, r0, plane, out);
        t += 1;
    }
    if t < t1 {
        out.push(at(t, t1, 0, eh, 0, ew));
    }
    if r1 != 0 {
        plane_rows(t1, 0, r1, out);
    }
}
