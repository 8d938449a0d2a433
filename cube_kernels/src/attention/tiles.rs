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
    mma_shape(1, planes_override("DIT_ATTENTION_MMA_ROWS", &[16, 32]), None).0
}

/// Planes per cube of the MMA forward for query blocks of at most `max_block` rows, with the
/// overrides `DIT_ATTENTION_MMA_ROWS` and `DIT_ATTENTION_MMA_WARPS` (see [`mma_shape`]).
pub fn mma_warps(max_block: usize) -> usize {
    let rows = planes_override("DIT_ATTENTION_MMA_ROWS", &[16, 32]);
    mma_shape(max_block, rows, std::env::var("DIT_ATTENTION_MMA_WARPS").ok().and_then(|w| w.parse().ok())).1
}

/// `(rows a plane, planes a cube)` of the MMA forward for query blocks of at most `max_block`
/// rows, given the tuning overrides (`None`, or a value outside what the CUDA tests have run,
/// takes the default). With 16 rows a plane (the default; planes a multiple of 4): 8 planes when
/// query blocks fill 128 rows (each K/V tile then serves twice the rows), 4 otherwise; 12 planes
/// (384 threads, 168 registers each: the forward fits them without spilling at head dim 128)
/// measured no better on the H100: STA within 2% either way, dense 22% slower. With 32 rows: 4
/// planes (a cube of 128 rows, as the 16-row default) when blocks fill 128 rows, 2 otherwise; 6
/// planes make 192 rows, half an STA tile of 6x8x8, so its K/V tiles are read twice per tile
/// instead of three times.
pub fn mma_shape(max_block: usize, rows: Option<usize>, planes: Option<usize>) -> (usize, usize) {
    let pick = |allowed: &[usize], default: usize| planes.filter(|p| allowed.contains(p)).unwrap_or(default);
    match rows {
        Some(32) => (32, pick(&[2, 4, 6], if max_block >= 128 { 4 } else { 2 })),
        _ => (16, pick(&[4, 8, 12], default_planes(max_block))),
    }
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

    #[test]
    fn mma_shapes_follow_the_blocks_and_take_only_tested_overrides() {
        // Defaults: 16 rows, 8 planes for blocks of 128 rows or more, 4 below.
        assert_eq!(mma_shape(384, None, None), (16, 8));
        assert_eq!(mma_shape(128, None, None), (16, 8));
        assert_eq!(mma_shape(64, None, None), (16, 4));
        // The wide kernel: a cube of 128 rows where blocks fill it, 64 below.
        assert_eq!(mma_shape(128, Some(32), None), (32, 4));
        assert_eq!(mma_shape(127, Some(32), None), (32, 2));
        // Overrides the CUDA tests ran are taken, others fall back to the default.
        assert_eq!(mma_shape(384, None, Some(12)), (16, 12));
        assert_eq!(mma_shape(384, Some(32), Some(6)), (32, 6));
        assert_eq!(mma_shape(384, Some(32), Some(8)), (32, 4));
        assert_eq!(mma_shape(384, None, Some(6)), (16, 8));
        assert_eq!(mma_shape(384, Some(24), Some(4)), (16, 4));
        for block in [1, 63, 64, 128, 384, 1000] {
            for rows in [None, Some(16), Some(32)] {
                for planes in [None, Some(2), Some(4), Some(6), Some(8), Some(12)] {
                    let (r, p) = mma_shape(block, rows, planes);
                    // Every shape is one the kernels take: 16 rows in multiples of 4 planes, 32
                    // rows in 2, 4 or 6; at most 384 threads.
                    assert!((r == 16 && p % 4 == 0) || (r == 32 && [2, 4, 6].contains(&p)), "{r} {p}");
                    assert!(32 * p <= 384);
                }
            }
        }
    }
}
