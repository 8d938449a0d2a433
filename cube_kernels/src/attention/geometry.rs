//! The STA geometry as the kernels read it (the `sta` array of [`super::SparseMap`]): the tile
//! grid, where video and text blocks sit, and per head the window in tiles.

/// Sliding Tile Attention over one-block-per-tile maps, described without index lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaGeometry {
    /// Tiles per dimension `[n_t, n_h, n_w]` (tile-major block order).
    pub tiles: [usize; 3],
    /// Index of the first video block (the number of text blocks before the video).
    pub video_block0: usize,
    /// Index of the first text block.
    pub text_block0: usize,
    /// Number of text blocks (every video query visits all of them).
    pub text_blocks: usize,
    /// Window in tiles per head (or one shared), odd per dimension; larger than the grid means
    /// the whole dimension.
    pub windows: Vec<[usize; 3]>,
}

impl StaGeometry {
    /// The kernel's `u32` layout: `[n_t, n_h, n_w, video0, text0, text_blocks]`, then per head
    /// `[ext_t, ext_h, ext_w, half_t, half_h, half_w]` with `ext = min(k, n)`, `half = k / 2`.
    pub fn to_kernel_array(&self) -> Vec<u32> {
        let mut a: Vec<u32> = self.tiles.iter().map(|&n| n as u32).collect();
        a.extend([self.video_block0 as u32, self.text_block0 as u32, self.text_blocks as u32]);
        for w in &self.windows {
            a.extend((0..3).map(|d| w[d].min(self.tiles[d]) as u32));
            a.extend((0..3).map(|d| (w[d] / 2) as u32));
        }
        a
    }
}
