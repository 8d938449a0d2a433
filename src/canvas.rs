//! Canvas, tiles, text placement and token orders (spec sections 0-1).
//!
//! A video latent after patchify is a canvas of `T x H x W` tokens. Images are canvases with `T = 1`
//! and 1D sequences are `1 x 1 x N`. Text tokens sit before or after the video block of the sequence.

use serde::{Deserialize, Serialize};

use crate::error::{DIM_NAMES, DitAttentionError, Result};

/// A canvas of `t x h x w` tokens, flattened row-major ("natural order").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Canvas {
    /// Frames.
    pub t: usize,
    /// Rows.
    pub h: usize,
    /// Columns.
    pub w: usize,
}

impl Canvas {
    /// A 3D canvas `t x h x w`; every dimension must be at least 1.
    pub fn new(t: usize, h: usize, w: usize) -> Result<Self> {
        check_nonzero("canvas", [t, h, w])?;
        // Kernels index tokens with u32; keep room for text tokens too.
        match t.checked_mul(h).and_then(|x| x.checked_mul(w)) {
            Some(n) if n < u32::MAX as usize / 2 => Ok(Self { t, h, w }),
            _ => Err(DitAttentionError::Invalid(format!(
                "canvas {t} x {h} x {w} has too many tokens (at most {} are supported)",
                u32::MAX / 2
            ))),
        }
    }

    /// A 2D canvas (an image): `1 x h x w`.
    pub fn image(h: usize, w: usize) -> Result<Self> {
        Self::new(1, h, w)
    }

    /// A 1D sequence: `1 x 1 x n`.
    pub fn sequence(n: usize) -> Result<Self> {
        Self::new(1, 1, n)
    }

    /// From 1, 2 or 3 values: `[n]`, `[h, w]` or `[t, h, w]`.
    pub fn from_slice(dims: &[usize]) -> Result<Self> {
        let d = pad_dims("canvas", dims, 1)?;
        Self::new(d[0], d[1], d[2])
    }

    /// `[t, h, w]`.
    pub fn dims(&self) -> [usize; 3] {
        [self.t, self.h, self.w]
    }

    /// Number of video tokens.
    pub fn len(&self) -> usize {
        self.t * self.h * self.w
    }

    /// Never true: a canvas has at least one token.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Coordinates of the token at natural-order index `i`.
    pub fn coords(&self, i: usize) -> [usize; 3] {
        let hw = self.h * self.w;
        [i / hw, (i % hw) / self.w, i % self.w]
    }

    /// Natural-order index of the token at `c`.
    pub fn index(&self, c: [usize; 3]) -> usize {
        (c[0] * self.h + c[1]) * self.w + c[2]
    }
}

/// A tile of `t x h x w` tokens (HunyuanVideo STA: 6 x 8 x 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TileShape {
    /// Frames per tile.
    pub t: usize,
    /// Rows per tile.
    pub h: usize,
    /// Columns per tile.
    pub w: usize,
}

impl TileShape {
    /// A tile; every dimension must be at least 1.
    pub fn new(t: usize, h: usize, w: usize) -> Result<Self> {
        check_nonzero("tile", [t, h, w])?;
        Ok(Self { t, h, w })
    }

    /// From 1, 2 or 3 values, aligned to the last dimensions like [`Canvas::from_slice`].
    pub fn from_slice(dims: &[usize]) -> Result<Self> {
        let d = pad_dims("tile", dims, 1)?;
        Self::new(d[0], d[1], d[2])
    }

    /// `[t, h, w]`.
    pub fn dims(&self) -> [usize; 3] {
        [self.t, self.h, self.w]
    }

    /// Tokens in a full tile.
    pub fn volume(&self) -> usize {
        self.t * self.h * self.w
    }
}

/// Where the text tokens sit in the joint sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TextPlacement {
    /// Text first, then video (CogVideoX).
    Before,
    /// Video first, then text (HunyuanVideo).
    #[default]
    After,
}

/// Text tokens of the joint sequence: a runtime length (0 = none) and a placement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct TextSpec {
    /// Number of text tokens.
    pub len: usize,
    /// Before or after the video.
    pub placement: TextPlacement,
}

impl TextSpec {
    /// No text tokens.
    pub fn none() -> Self {
        Self::default()
    }
    /// `len` text tokens before the video.
    pub fn before(len: usize) -> Self {
        Self { len, placement: TextPlacement::Before }
    }
    /// `len` text tokens after the video.
    pub fn after(len: usize) -> Self {
        Self { len, placement: TextPlacement::After }
    }
}

/// Order of the video tokens in the sequence. Text keeps its place in both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TokenOrder {
    /// Row-major over `(t, h, w)`.
    #[default]
    Natural,
    /// Row-major over tiles, and row-major inside each tile (spec section 1).
    TileMajor,
}

/// One token of the joint sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Token {
    /// The `i`-th text token.
    Text(usize),
    /// A video token at canvas coordinates `[t, h, w]`.
    Video([usize; 3]),
}

/// A canvas covered by tiles, edge tiles possibly partial: the geometry of tile-major order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tiling {
    canvas: Canvas,
    tile: TileShape,
    counts: [usize; 3],
}

impl Tiling {
    /// Tiles over a canvas. Edge tiles may be partial (spec section 1), and a tile longer than
    /// the canvas in some dimension is one partial tile there.
    pub fn new(canvas: Canvas, tile: TileShape) -> Result<Self> {
        let (c, t) = (canvas.dims(), tile.dims());
        let counts = [0, 1, 2].map(|d| c[d].div_ceil(t[d]));
        Ok(Self { canvas, tile, counts })
    }

    /// The canvas.
    pub fn canvas(&self) -> Canvas {
        self.canvas
    }

    /// The (full) tile shape.
    pub fn tile(&self) -> TileShape {
        self.tile
    }

    /// Tiles per dimension, `n_d = ceil(L_d / tile_d)`.
    pub fn counts(&self) -> [usize; 3] {
        self.counts
    }

    /// Number of tiles.
    pub fn num_tiles(&self) -> usize {
        self.counts.iter().product()
    }

    /// Extent of tile number `i` along dimension `d` (smaller at a ragged edge).
    ///
    /// # Panics
    /// If `i` is not a tile index of dimension `d`.
    pub fn extent(&self, d: usize, i: usize) -> usize {
        assert!(
            i < self.counts[d],
            "tile index {i} out of range: dimension {} has {} tiles",
            DIM_NAMES[d],
            self.counts[d]
        );
        let (l, t) = (self.canvas.dims()[d], self.tile.dims()[d]);
        t.min(l - i * t)
    }

    /// The canvas box `(origin, extent)` of tile `tc = [a, b, c]`.
    pub fn tile_box(&self, tc: [usize; 3]) -> ([usize; 3], [usize; 3]) {
        let t = self.tile.dims();
        ([0, 1, 2].map(|d| tc[d] * t[d]), [0, 1, 2].map(|d| self.extent(d, tc[d])))
    }

    /// Tile coordinates of tile number `i` (tiles are numbered row-major).
    pub fn tile_coords(&self, i: usize) -> [usize; 3] {
        let [_, nh, nw] = self.counts;
        [i / (nh * nw), (i / nw) % nh, i % nw]
    }

    /// Tile-major position of the first token of tile `tc`.
    ///
    /// Closed form, partial tiles included: the slabs of tiles before `tc` along `t`, then along
    /// `h` inside its slab, then along `w` inside its row of tiles.
    pub fn tile_offset(&self, tc: [usize; 3]) -> usize {
        let Canvas { h, w, .. } = self.canvas;
        let t = self.tile.dims();
        let et = self.extent(0, tc[0]);
        let eh = self.extent(1, tc[1]);
        tc[0] * t[0] * h * w + et * (tc[1] * t[1] * w + eh * tc[2] * t[2])
    }

    /// Tile-major position (within the video block) of the token at canvas coordinates `c`.
    pub fn tile_major_index(&self, c: [usize; 3]) -> usize {
        let t = self.tile.dims();
        let tc = [0, 1, 2].map(|d| c[d] / t[d]);
        let local = [0, 1, 2].map(|d| c[d] % t[d]);
        let eh = self.extent(1, tc[1]);
        let ew = self.extent(2, tc[2]);
        self.tile_offset(tc) + (local[0] * eh + local[1]) * ew + local[2]
    }

    /// Canvas coordinates of the token at tile-major position `p` (within the video block).
    pub fn coords_of_tile_major(&self, p: usize) -> [usize; 3] {
        let Canvas { h, w, .. } = self.canvas;
        let t = self.tile.dims();
        let a = (p / (t[0] * h * w)).min(self.counts[0] - 1);
        let et = self.extent(0, a);
        let r = p - a * t[0] * h * w;
        let b = (r / (et * t[1] * w)).min(self.counts[1] - 1);
        let eh = self.extent(1, b);
        let r = r - et * b * t[1] * w;
        let c = (r / (et * eh * t[2])).min(self.counts[2] - 1);
        let ew = self.extent(2, c);
        let r = r - et * eh * c * t[2];
        [a * t[0] + r / (eh * ew), b * t[1] + (r / ew) % eh, c * t[2] + r % ew]
    }
}

/// A joint text + video sequence: canvas, tiling and text. The geometry every mask and every
/// permutation is defined on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VideoLayout {
    tiling: Tiling,
    text: TextSpec,
}

impl VideoLayout {
    /// A layout; see [`Tiling::new`] for the tile rules.
    pub fn new(canvas: Canvas, tile: TileShape, text: TextSpec) -> Result<Self> {
        Ok(Self { tiling: Tiling::new(canvas, tile)?, text })
    }

    /// A layout whose tiles are single tokens (no tiling needed, e.g. natural-order patterns).
    pub fn untiled(canvas: Canvas, text: TextSpec) -> Self {
        let tiling = Tiling::new(canvas, TileShape { t: 1, h: 1, w: 1 }).expect("1x1x1 tiles fit any canvas");
        Self { tiling, text }
    }

    /// The canvas.
    pub fn canvas(&self) -> Canvas {
        self.tiling.canvas
    }

    /// The tiling.
    pub fn tiling(&self) -> &Tiling {
        &self.tiling
    }

    /// The text tokens.
    pub fn text(&self) -> TextSpec {
        self.text
    }

    /// Video tokens.
    pub fn video_len(&self) -> usize {
        self.tiling.canvas.len()
    }

    /// Video plus text tokens.
    pub fn seq_len(&self) -> usize {
        self.video_len() + self.text.len
    }

    /// Sequence positions of the video block.
    pub fn video_range(&self) -> std::ops::Range<usize> {
        let start = self.video_start();
        start..start + self.video_len()
    }

    /// Sequence positions of the text block.
    pub fn text_range(&self) -> std::ops::Range<usize> {
        match self.text.placement {
            TextPlacement::Before => 0..self.text.len,
            TextPlacement::After => self.video_len()..self.seq_len(),
        }
    }

    fn video_start(&self) -> usize {
        match self.text.placement {
            TextPlacement::Before => self.text.len,
            TextPlacement::After => 0,
        }
    }

    /// Checks that a tensor's sequence length matches this layout.
    pub fn check_seq_len(&self, got: usize) -> Result<()> {
        if got != self.seq_len() {
            return Err(DitAttentionError::SequenceLength {
                got,
                expected: self.seq_len(),
                video: self.video_len(),
                text: self.text.len,
                canvas: self.canvas().dims(),
            });
        }
        Ok(())
    }

    /// The token at sequence position `pos` when the video is in `order`.
    pub fn token_at(&self, pos: usize, order: TokenOrder) -> Token {
        assert!(pos < self.seq_len(), "position {pos} outside a sequence of {} tokens", self.seq_len());
        let v = self.video_range();
        if !v.contains(&pos) {
            let t = self.text_range();
            return Token::Text(pos - t.start);
        }
        let p = pos - v.start;
        Token::Video(match order {
            TokenOrder::Natural => self.canvas().coords(p),
            TokenOrder::TileMajor => self.tiling.coords_of_tile_major(p),
        })
    }

    /// The sequence position of `token` when the video is in `order`.
    pub fn position_of(&self, token: Token, order: TokenOrder) -> usize {
        match token {
            Token::Text(i) => self.text_range().start + i,
            Token::Video(c) => {
                self.video_start()
                    + match order {
                        TokenOrder::Natural => self.canvas().index(c),
                        TokenOrder::TileMajor => self.tiling.tile_major_index(c),
                    }
            }
        }
    }
}

pub(crate) fn check_nonzero(what: &'static str, dims: [usize; 3]) -> Result<()> {
    match dims.iter().position(|&x| x == 0) {
        Some(d) => Err(DitAttentionError::ZeroDimension { what, dim: DIM_NAMES[d], dims }),
        None => Ok(()),
    }
}

/// Aligns 1-3 values to the last dimensions (`[n]` -> `[fill, fill, n]`), as the command line
/// writes canvases, tiles and windows of images (`H,W`) and sequences (`N`).
pub fn pad_dims(what: &str, dims: &[usize], fill: usize) -> Result<[usize; 3]> {
    match dims {
        [n] => Ok([fill, fill, *n]),
        [h, w] => Ok([fill, *h, *w]),
        [t, h, w] => Ok([*t, *h, *w]),
        _ => Err(DitAttentionError::Invalid(format!(
            "{what} needs 1, 2 or 3 values (w / h,w / t,h,w), got {} values {dims:?}",
            dims.len()
        ))),
    }
}
