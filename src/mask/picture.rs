//! Drawing a block map the way papers draw attention maps: rows are query blocks, columns key
//! blocks; dense blocks dark, mixed blocks orange, empty blocks white. Maps larger than the
//! picture are downsampled by averaging the colours of the blocks each pixel covers, so a thin
//! band stays visible as a lighter shade instead of vanishing.

use std::io::BufWriter;
use std::path::Path;

use super::block_map::{BlockKind, BlockMap};
use crate::error::{DitAttentionError, Result};

const DENSE: [f64; 3] = [23.0, 47.0, 107.0];
const MIXED: [f64; 3] = [240.0, 140.0, 30.0];
const EMPTY: [f64; 3] = [255.0, 255.0, 255.0];

/// An RGB picture, row-major, 3 bytes a pixel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Picture {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `width * height * 3` bytes.
    pub rgb: Vec<u8>,
}

impl Picture {
    /// Writes the picture as a PNG file.
    pub fn write_png(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let io =
            |e: &dyn std::fmt::Display| DitAttentionError::Invalid(format!("cannot write {}: {e}", path.display()));
        let file = std::fs::File::create(path).map_err(|e| io(&e))?;
        let mut enc = png::Encoder::new(BufWriter::new(file), self.width as u32, self.height as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().map_err(|e| io(&e))?;
        w.write_image_data(&self.rgb).map_err(|e| io(&e))?;
        w.finish().map_err(|e| io(&e))
    }

    /// The pixel at `(x, y)`.
    pub fn pixel(&self, x: usize, y: usize) -> [u8; 3] {
        let i = (y * self.width + x) * 3;
        [self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]]
    }
}

/// Draws the map of `head` in a square of at most `max_side` pixels (small maps are scaled up to
/// about `max_side` so each block is a visible square).
pub fn draw_block_map(map: &BlockMap, head: usize, max_side: usize) -> Result<Picture> {
    if head >= map.heads() {
        return Err(DitAttentionError::Invalid(format!("head {head} but the block map has {} head(s)", map.heads())));
    }
    let n = map.num_blocks();
    let max_side = max_side.max(1);
    // Blocks per pixel (downsampling) or pixels per block (upsampling).
    let (per_px, px_per) = if n > max_side { (n.div_ceil(max_side), 1) } else { (1, (max_side / n).max(1)) };
    let cells = n.div_ceil(per_px);
    let side = cells * px_per;
    let mut acc = vec![[0.0f64; 3]; cells * cells];
    for qb in 0..n {
        let mut row = vec![EMPTY; n];
        for (kb, kind) in map.row(head, qb) {
            row[kb] = if kind == BlockKind::Full { DENSE } else { MIXED };
        }
        for (kb, c) in row.iter().enumerate() {
            let cell = &mut acc[(qb / per_px) * cells + kb / per_px];
            for ch in 0..3 {
                cell[ch] += c[ch];
            }
        }
    }
    let mut rgb = vec![0u8; side * side * 3];
    for y in 0..side {
        for x in 0..side {
            let (cy, cx) = (y / px_per, x / px_per);
            let covered = (per_px.min(n - cy * per_px) * per_px.min(n - cx * per_px)) as f64;
            for ch in 0..3 {
                rgb[(y * side + x) * 3 + ch] = (acc[cy * cells + cx][ch] / covered).round() as u8;
            }
        }
    }
    Ok(Picture { width: side, height: side, rgb })
}
