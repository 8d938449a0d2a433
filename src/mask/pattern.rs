//! The local attention patterns of spec sections 2-3, validated once against a layout.

use serde::{Deserialize, Serialize};

use super::axis::{AxisRule, Coverage, ball_coverage, ball_pair_count};
use super::blocks::Box3;
use crate::canvas::{Token, TokenOrder, VideoLayout};
use crate::error::{DIM_NAMES, DitAttentionError, Result};

/// A local attention pattern over the video tokens, as a user writes it.
///
/// In every pattern text is global: a video query attends to all text keys and a text query
/// attends to all keys (spec section 2; the same rule is applied to the comparison patterns).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "pattern", rename_all = "kebab-case")]
pub enum PatternSpec {
    /// Sliding Tile Attention: windows in **tiles** of the layout, odd per dimension; one window
    /// shared by all heads, or one per head. `k_d >= n_d` covers the whole dimension.
    Sta {
        /// `[kt, kh, kw]` per head (or a single shared one).
        windows: Vec<[usize; 3]>,
    },
    /// Neighbourhood attention: an odd window in **tokens**, at most the canvas per dimension.
    Natten {
        /// `[wt, wh, ww]` in tokens.
        window: [usize; 3],
    },
    /// Neighbourhood attention whose tokens are laid out tile-major (its blocks become mixed).
    TiledNatten {
        /// `[wt, wh, ww]` in tokens.
        window: [usize; 3],
    },
    /// Swin: non-overlapping windows in tokens, optionally shifted.
    Swin {
        /// `[wt, wh, ww]` in tokens.
        window: [usize; 3],
        /// Shift per dimension, smaller than the window.
        shift: [usize; 3],
    },
    /// CLEAR: a Euclidean ball of `radius` tokens (strict), truncated at the canvas border.
    Clear {
        /// Radius in tokens.
        radius: f64,
    },
}

impl PatternSpec {
    /// STA with one window shared by all heads.
    pub fn sta(window: [usize; 3]) -> Self {
        PatternSpec::Sta { windows: vec![window] }
    }

    /// The pattern's name as the command line spells it.
    pub fn name(&self) -> &'static str {
        match self {
            PatternSpec::Sta { .. } => "sta",
            PatternSpec::Natten { .. } => "natten",
            PatternSpec::TiledNatten { .. } => "tiled-natten",
            PatternSpec::Swin { .. } => "swin",
            PatternSpec::Clear { .. } => "clear",
        }
    }

    /// The order the pattern is meant for: tile-major for STA and tiled NATTEN, natural otherwise.
    pub fn default_order(&self) -> TokenOrder {
        match self {
            PatternSpec::Sta { .. } | PatternSpec::TiledNatten { .. } => TokenOrder::TileMajor,
            _ => TokenOrder::Natural,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Rule {
    /// Per head, one rule per dimension.
    Separable(Vec<[AxisRule; 3]>),
    /// Squared radius.
    Ball(f64),
}

/// A pattern validated against a layout: token predicate, box classification and exact counts.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionMask {
    layout: VideoLayout,
    spec: PatternSpec,
    rule: Rule,
}

impl AttentionMask {
    /// Validates `spec` against `layout`; errors name the offending values.
    pub fn new(layout: VideoLayout, spec: PatternSpec) -> Result<Self> {
        let dims = layout.canvas().dims();
        let rule = match &spec {
            PatternSpec::Sta { windows } => {
                if windows.is_empty() {
                    return Err(DitAttentionError::Invalid("STA needs at least one window, got none".into()));
                }
                let tiling = layout.tiling();
                let (n, tile) = (tiling.counts(), tiling.tile().dims());
                let rules = windows
                    .iter()
                    .map(|w| {
                        check_window("STA window (in tiles)", *w, true)?;
                        Ok([0, 1, 2].map(|d| AxisRule::Tiles { len: dims[d], tile: tile[d], n: n[d], k: w[d] }))
                    })
                    .collect::<Result<Vec<_>>>()?;
                Rule::Separable(rules)
            }
            PatternSpec::Natten { window } | PatternSpec::TiledNatten { window } => {
                check_window("neighbourhood window (in tokens)", *window, true)?;
                check_fits("neighbourhood window", *window, dims)?;
                Rule::Separable(vec![[0, 1, 2].map(|d| AxisRule::Natten { len: dims[d], w: window[d] })])
            }
            PatternSpec::Swin { window, shift } => {
                check_window("Swin window (in tokens)", *window, false)?;
                check_fits("Swin window", *window, dims)?;
                if let Some(d) = (0..3).find(|&d| shift[d] >= window[d]) {
                    return Err(DitAttentionError::Invalid(format!(
                        "Swin shift {} in dimension {} must be smaller than the window {} (shift {shift:?}, window {window:?})",
                        shift[d], DIM_NAMES[d], window[d]
                    )));
                }
                Rule::Separable(vec![[0, 1, 2].map(|d| AxisRule::Swin { len: dims[d], w: window[d], shift: shift[d] })])
            }
            PatternSpec::Clear { radius } => {
                if !(radius.is_finite() && *radius > 0.0) {
                    return Err(DitAttentionError::Invalid(format!(
                        "CLEAR radius must be a positive number, got {radius}"
                    )));
                }
                // Beyond the canvas diagonal every pair is in: cap there so no arithmetic overflows.
                let diag2: f64 = dims.iter().map(|&l| ((l - 1) * (l - 1)) as f64).sum();
                Rule::Ball((radius * radius).min(diag2 + 1.0))
            }
        };
        Ok(Self { layout, spec, rule })
    }

    /// The layout.
    pub fn layout(&self) -> &VideoLayout {
        &self.layout
    }

    /// The pattern as given.
    pub fn spec(&self) -> &PatternSpec {
        &self.spec
    }

    /// Number of distinct per-head patterns (1 = shared by all heads).
    pub fn heads(&self) -> usize {
        match &self.rule {
            Rule::Separable(r) => r.len(),
            Rule::Ball(_) => 1,
        }
    }

    /// Checks that a tensor with `heads` heads can use this mask (shared, or one pattern per head).
    pub fn check_heads(&self, heads: usize) -> Result<()> {
        if self.heads() != 1 && self.heads() != heads {
            return Err(DitAttentionError::Invalid(format!(
                "the mask has {} per-head windows but the tensor has {heads} heads",
                self.heads()
            )));
        }
        Ok(())
    }

    fn head_rule(&self, head: usize) -> Option<&[AxisRule; 3]> {
        match &self.rule {
            Rule::Separable(r) => Some(&r[if r.len() == 1 { 0 } else { head }]),
            Rule::Ball(_) => None,
        }
    }

    /// Is the video pair (query at canvas coordinates `q`, key at `k`) allowed for `head`?
    pub fn allows_video(&self, head: usize, q: [usize; 3], k: [usize; 3]) -> bool {
        match (&self.rule, self.head_rule(head)) {
            (_, Some(rules)) => (0..3).all(|d| rules[d].allows(q[d], k[d])),
            (Rule::Ball(r2), None) => {
                let d2: usize = (0..3).map(|d| q[d].abs_diff(k[d]).pow(2)).sum();
                (d2 as f64) < *r2
            }
            (Rule::Separable(_), None) => unreachable!("separable rules always have a head rule"),
        }
    }

    /// The token-level predicate on sequence positions (video in `order`), text included.
    pub fn allows(&self, head: usize, q: usize, k: usize, order: TokenOrder) -> bool {
        match (self.layout.token_at(q, order), self.layout.token_at(k, order)) {
            (Token::Video(a), Token::Video(b)) => self.allows_video(head, a, b),
            _ => true,
        }
    }

    /// Classifies the video pairs of a query box against a key box.
    pub(crate) fn coverage(&self, head: usize, q: &Box3, k: &Box3) -> Coverage {
        match (&self.rule, self.head_rule(head)) {
            (_, Some(rules)) => {
                let mut all_full = true;
                for (d, rule) in rules.iter().enumerate() {
                    match rule.coverage(q.lo[d], q.hi[d], k.lo[d], k.hi[d]) {
                        Coverage::Empty => return Coverage::Empty,
                        Coverage::Partial => all_full = false,
                        Coverage::Full => {}
                    }
                }
                if all_full { Coverage::Full } else { Coverage::Partial }
            }
            (Rule::Ball(r2), None) => ball_coverage(q, k, *r2),
            (Rule::Separable(_), None) => unreachable!("separable rules always have a head rule"),
        }
    }

    /// A box holding every key any query of box `q` may see (used to skip far key blocks).
    pub(crate) fn reach(&self, head: usize, q: &Box3) -> Box3 {
        let dims = self.layout.canvas().dims();
        match (&self.rule, self.head_rule(head)) {
            (_, Some(rules)) => {
                let r = [0, 1, 2].map(|d| rules[d].reach(q.lo[d], q.hi[d]));
                Box3 { lo: r.map(|x| x.0), hi: r.map(|x| x.1 + 1) }
            }
            (Rule::Ball(r2), None) => {
                let pad = r2.sqrt().ceil() as usize;
                Box3 {
                    lo: [0, 1, 2].map(|d| q.lo[d].saturating_sub(pad)),
                    hi: [0, 1, 2].map(|d| q.hi[d].saturating_add(pad).min(dims[d])),
                }
            }
            (Rule::Separable(_), None) => unreachable!("separable rules always have a head rule"),
        }
    }

    /// Exact number of allowed video query-key pairs of `head`.
    pub fn allowed_video_pairs(&self, head: usize) -> u64 {
        match (&self.rule, self.head_rule(head)) {
            (_, Some(rules)) => rules.iter().map(AxisRule::count_all).product(),
            (Rule::Ball(r2), None) => ball_pair_count(self.layout.canvas().dims(), *r2),
            (Rule::Separable(_), None) => unreachable!("separable rules always have a head rule"),
        }
    }

    /// Sparsity of `head`: 1 - allowed video pairs / all video pairs (text excluded, spec section 2).
    pub fn sparsity(&self, head: usize) -> f64 {
        let n = self.layout.video_len() as f64;
        1.0 - self.allowed_video_pairs(head) as f64 / (n * n)
    }

    /// True when every video pair is allowed for every head (the fast path: dense attention).
    pub fn covers_everything(&self) -> bool {
        let n = self.layout.video_len() as u64;
        (0..self.heads()).all(|h| self.allowed_video_pairs(h) == n * n)
    }
}

fn check_window(what: &'static str, w: [usize; 3], odd: bool) -> Result<()> {
    crate::canvas::check_nonzero(what, w)?;
    if odd && let Some(d) = (0..3).find(|&d| w[d].is_multiple_of(2)) {
        return Err(DitAttentionError::EvenWindow { what, dim: DIM_NAMES[d], value: w[d], window: w });
    }
    Ok(())
}

fn check_fits(what: &'static str, w: [usize; 3], dims: [usize; 3]) -> Result<()> {
    match (0..3).find(|&d| w[d] > dims[d]) {
        Some(d) => Err(DitAttentionError::LargerThanCanvas {
            what,
            dim: DIM_NAMES[d],
            value: w[d],
            len: dims[d],
            canvas: dims,
        }),
        None => Ok(()),
    }
}
