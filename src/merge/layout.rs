//! Which tokens may merge (spec section 5, steps 1 and 6): destinations, sources, and the slots
//! of the merged sequence. Plain Rust, built once per (canvas, window, seed, r).

use serde::{Deserialize, Serialize};

use crate::canvas::{Canvas, TextPlacement, TextSpec};
use crate::error::{DIM_NAMES, DitAttentionError, Result};
use crate::rng::SplitMix;

/// "No value" in the kernel tables.
pub(crate) const NONE: u32 = u32::MAX;

/// How many video tokens merge: a count, or a ratio of the video tokens (rounded down).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MergeAmount {
    /// Exactly this many sources merge.
    Count(usize),
    /// `floor(ratio * video tokens)` sources merge; `0 <= ratio < 1`.
    Ratio(f64),
}

impl MergeAmount {
    /// The count for a canvas with `video` tokens of which `sources` may merge.
    pub fn resolve(self, video: usize, sources: usize) -> Result<usize> {
        let r = match self {
            MergeAmount::Count(r) => r,
            MergeAmount::Ratio(x) => {
                if !(0.0..1.0).contains(&x) || !x.is_finite() {
                    return Err(DitAttentionError::Invalid(format!(
                        "merge ratio {x} must lie in [0, 1) (a share of the {video} video tokens)"
                    )));
                }
                (x * video as f64).floor() as usize
            }
        };
        if r > sources {
            return Err(DitAttentionError::Invalid(format!(
                "cannot merge {r} tokens: only {sources} of the {video} video tokens are sources (frame 0 and one token per window are destinations)"
            )));
        }
        Ok(r)
    }
}

/// The destination set of a canvas: every token of frame 0, plus one token per `window` box of
/// the later frames (boxes start at frame 1, row 0, column 0; edge boxes may be partial).
///
/// With a seed, each box's destination is drawn uniformly from its tokens by a splitmix64
/// stream; without one it is the box's first token (lowest `t`, then `h`, then `w`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destinations {
    /// Video-local indices (natural order) of the destinations, ascending.
    pub dst: Vec<u32>,
    /// Video-local indices of the sources, ascending.
    pub src: Vec<u32>,
}

impl Destinations {
    /// Checks the window against the canvas and draws the destinations.
    pub fn new(canvas: Canvas, window: [usize; 3], seed: Option<u64>) -> Result<Self> {
        let dims = canvas.dims();
        for d in 0..3 {
            if window[d] == 0 {
                return Err(DitAttentionError::ZeroDimension { what: "merge window", dim: DIM_NAMES[d], dims: window });
            }
            if window[d] > dims[d] {
                return Err(DitAttentionError::LargerThanCanvas {
                    what: "merge window",
                    dim: DIM_NAMES[d],
                    value: window[d],
                    len: dims[d],
                    canvas: dims,
                });
            }
        }
        let [t, h, w] = dims;
        let mut is_dst = vec![false; canvas.len()];
        is_dst[..h * w].iter_mut().for_each(|x| *x = true);
        let mut rng = seed.map(SplitMix::new);
        for t0 in (1..t).step_by(window[0]) {
            for h0 in (0..h).step_by(window[1]) {
                for w0 in (0..w).step_by(window[2]) {
                    let ext = [window[0].min(t - t0), window[1].min(h - h0), window[2].min(w - w0)];
                    let pick = rng.as_mut().map_or(0, |r| r.below(ext[0] * ext[1] * ext[2]));
                    let (dt, rest) = (pick / (ext[1] * ext[2]), pick % (ext[1] * ext[2]));
                    let c = [t0 + dt, h0 + rest / ext[2], w0 + rest % ext[2]];
                    is_dst[canvas.index(c)] = true;
                }
            }
        }
        let (mut dst, mut src) = (Vec::new(), Vec::new());
        for (i, &d) in is_dst.iter().enumerate() {
            if d { dst.push(i as u32) } else { src.push(i as u32) }
        }
        Ok(Self { dst, src })
    }
}

/// The merged sequence of a layout: text where it was, then (in the video's place) the
/// destinations in token order, then the unmerged sources in token order. Host tables the
/// kernels and the references read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeLayout {
    /// Tokens of the full sequence.
    pub n: usize,
    /// Merged sources.
    pub r: usize,
    /// Text tokens and their place.
    pub text: TextSpec,
    /// Sequence index of each destination, ascending.
    pub dst_token: Vec<u32>,
    /// Sequence index of each source, ascending.
    pub src_token: Vec<u32>,
    /// Slot of each text or destination token; [`NONE`] for a source.
    pub fixed_slot: Vec<u32>,
    /// Token of each text or destination slot; [`NONE`] for an unmerged-source slot.
    pub fixed_kept: Vec<u32>,
}

impl MergeLayout {
    /// The layout of `destinations` in a sequence with `text`, merging `r` sources.
    pub fn new(destinations: &Destinations, text: TextSpec, r: usize) -> Result<Self> {
        let video = destinations.dst.len() + destinations.src.len();
        if r > destinations.src.len() {
            return Err(DitAttentionError::Invalid(format!(
                "cannot merge {r} tokens: only {} of the {video} video tokens are sources",
                destinations.src.len()
            )));
        }
        let n = video + text.len;
        let offset = if text.placement == TextPlacement::Before { text.len } else { 0 };
        let dst_token: Vec<u32> = destinations.dst.iter().map(|&i| i + offset as u32).collect();
        let src_token: Vec<u32> = destinations.src.iter().map(|&i| i + offset as u32).collect();
        let n_kept = n - r;
        let mut fixed_slot = vec![NONE; n];
        let mut fixed_kept = vec![NONE; n_kept];
        let text_slots = match text.placement {
            TextPlacement::Before => 0..text.len,
            TextPlacement::After => n_kept - text.len..n_kept,
        };
        let text_tokens = match text.placement {
            TextPlacement::Before => 0..text.len,
            TextPlacement::After => video..n,
        };
        for (slot, tok) in text_slots.zip(text_tokens) {
            fixed_slot[tok] = slot as u32;
            fixed_kept[slot] = tok as u32;
        }
        for (j, &tok) in dst_token.iter().enumerate() {
            fixed_slot[tok as usize] = (offset + j) as u32;
            fixed_kept[offset + j] = tok;
        }
        Ok(Self { n, r, text, dst_token, src_token, fixed_slot, fixed_kept })
    }

    /// Slots of the merged sequence.
    pub fn n_kept(&self) -> usize {
        self.n - self.r
    }

    /// Slot of the first destination.
    pub fn dst_slot0(&self) -> usize {
        if self.text.placement == TextPlacement::Before { self.text.len } else { 0 }
    }

    /// Slot of the first unmerged source.
    pub fn src_slot0(&self) -> usize {
        self.dst_slot0() + self.dst_token.len()
    }

    /// The kernel's view of these tables.
    pub fn tables(&self) -> dit_attention_kernels::merge::MatchTables<'_> {
        dit_attention_kernels::merge::MatchTables {
            src_token: &self.src_token,
            dst_token: &self.dst_token,
            fixed_slot: &self.fixed_slot,
            fixed_kept: &self.fixed_kept,
            dst_slot0: self.dst_slot0(),
            src_slot0: self.src_slot0(),
            r: self.r,
        }
    }
}
