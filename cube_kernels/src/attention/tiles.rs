//! Tile sizes, chosen by one pure function.

/// Shared memory the portable path allows itself: lavapipe offers 32 KiB; half leaves room for
/// the compiler and keeps two cubes resident on GPUs.
pub const PORTABLE_SHARED_BYTES: usize = 16 * 1024;

/// Tile sizes of the portable kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortableTiles {
    /// Query rows per cube (one unit each).
    pub rows_per_cube: usize,
    /// Keys per shared-memory tile.
    pub tile_k: usize,
}

/// Tiles for head dims `head_dim` / `value_dim` with elements of `elem_bytes`: the largest key
/// tile (a power of two, at most 32) whose K and V tiles fit [`PORTABLE_SHARED_BYTES`].
pub fn portable_tiles(head_dim: usize, value_dim: usize, elem_bytes: usize) -> PortableTiles {
    let per_key = (head_dim + value_dim) * elem_bytes;
    let mut tile_k = 32;
    while tile_k > 1 && tile_k * per_key > PORTABLE_SHARED_BYTES {
        tile_k /= 2;
    }
    PortableTiles { rows_per_cube: 64, tile_k }
}

/// A tuning override of a planes-per-cube choice: `var` set to one of `allowed` (the counts the
/// CUDA tests have run).
fn planes_override(var: &str, allowed: &[usize]) -> Option<usize> {
    let w = std::env::var(var).ok()?.parse::<usize>().ok()?;
    allowed.contains(&w).then_some(w)
}

/// The default of every MMA kernel: 8 planes for blocks of 128 rows or more, 4 otherwise.
fn default_planes(max_block: usize) -> usize {
    if max_block >= 128 { 8 } else { 4 }
}

/// Query rows per plane of the MMA forward: 16, or 32 with `DIT_ATTENTION_MMA_ROWS=32` (the wide
/// kernel, two MMA row tiles a plane). The wide kernel stays opt-in until an H100 run has passed
/// the CUDA tests with it and timed it against the 16-row kernel.
pub fn mma_rows() -> usize {
    planes_override("DIT_ATTENTION_MMA_ROWS", &[16, 32]).unwrap_or(16)
}

/// Planes per cube of the MMA forward. With 16 rows a plane (a multiple of 4): 8 when query
/// blocks fill 128 rows (each K/V tile then serves twice the rows), 4 otherwise; 12 planes (384
/// threads, 168 registers each: the forward fits them without spilling at head dim 128) measured
/// no better on the H100: STA within 2% either way, dense 22% slower. With 32 rows a plane: 4
/// (a cube of 128 rows, as the 16-row default) when blocks fill 128 rows, 2 otherwise.
/// `DIT_ATTENTION_MMA_WARPS=4|8|12` (16 rows) or `=2|4|6` (32 rows; 6 planes make 192 rows, half
/// an STA tile of 6x8x8, so K/V tiles are read twice per tile instead of three times) overrides
/// it, for tuning runs.
pub fn mma_warps(max_block: usize) -> usize {
    if mma_rows() == 32 {
        let default = if max_block >= 128 { 4 } else { 2 };
        return planes_override("DIT_ATTENTION_MMA_WARPS", &[2, 4, 6]).unwrap_or(default);
    }
    planes_override("DIT_ATTENTION_MMA_WARPS", &[4, 8, 12]).unwrap_or_else(|| default_planes(max_block))
}

/// Planes per cube of the MMA backward's dQ kernel: 8 for query blocks of 128 rows or more, 4
/// otherwise (12 planes spill a little and were 4% slower in a first H100 run).
/// `DIT_ATTENTION_DQ_WARPS=4|8` overrides it, for tuning runs.
pub fn dq_warps(max_block: usize) -> usize {
    planes_override("DIT_ATTENTION_DQ_WARPS", &[4, 8]).unwrap_or_else(|| default_planes(max_block))
}

/// Planes per cube of the MMA backward's dK/dV kernel (16 key rows each; every Q/dO tile it
/// loads serves all of them): 8 for key blocks of 128 rows or more, 4 otherwise (12 planes
/// would spill some 700 bytes a thread). `DIT_ATTENTION_DKV_WARPS=4|8` overrides it, for tuning runs.
pub fn dkv_warps(max_block: usize) -> usize {
    planes_override("DIT_ATTENTION_DKV_WARPS", &[4, 8]).unwrap_or_else(|| default_planes(max_block))
}

/// Planes per cube of the tensor-core token matching (16 source rows each; every destination
/// tile it stages serves all of them): 8 for 128 sources or more, 4 otherwise.
/// `DIT_ATTENTION_MATCH_WARPS=4|8|16` overrides it, for tuning runs.
pub fn match_warps(sources: usize) -> usize {
    planes_override("DIT_ATTENTION_MATCH_WARPS", &[4, 8, 16]).unwrap_or_else(|| default_planes(sources))
}

/// Tiles of 16 source rows per plane of the tensor-core token matching: 2 (each destination
/// fragment it loads from shared memory feeds two MMAs), or 1 with
/// `DIT_ATTENTION_MATCH_ROWS=16` (`=32` is the default), for tuning runs.
pub fn match_row_tiles() -> usize {
    planes_override("DIT_ATTENTION_MATCH_ROWS", &[16, 32]).map_or(2, |rows| rows / 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_fit_the_shared_memory_budget() {
        for (d, dv, e) in [(64, 64, 4), (128, 128, 4), (128, 128, 2), (256, 256, 4), (8, 3, 4)] {
            let t = portable_tiles(d, dv, e);
            assert!(t.tile_k * (d + dv) * e <= PORTABLE_SHARED_BYTES, "{d} {dv} {e}: {t:?}");
            assert!(t.tile_k.is_power_of_two() && t.tile_k <= 32);
            // The largest such tile: doubling it would not fit (unless already at 32).
            assert!(t.tile_k == 32 || 2 * t.tile_k * (d + dv) * e > PORTABLE_SHARED_BYTES);
        }
        assert_eq!(portable_tiles(128, 128, 4).tile_k, 16);
        assert_eq!(portable_tiles(64, 64, 4).tile_k, 32);
    }
}
