//! Host side of the block selection.

use cubecl::ir::features::Plane;
use cubecl::prelude::*;
use cubecl::server::Handle;

use crate::array_arg as arr;

use super::select::{LANES, block_select};

/// Rows (planes of 32 lanes) per cube where the runtime has planes of 32.
const PLANE_ROWS: usize = 8;

/// Most key blocks a lane holds in registers (one compiled kernel per count).
const MAX_PER_LANE: usize = 64;

/// One selection launch over `bh` batch-heads.
#[derive(Debug, Clone, Copy)]
pub struct SelectJob {
    /// Batch x heads.
    pub bh: usize,
    /// Query blocks.
    pub nqb: usize,
    /// Key blocks.
    pub nkb: usize,
    /// Mass fraction to keep, in `(0, 1]`.
    pub tau: f32,
    /// Fewest key blocks kept per query block (before the sinks).
    pub k_min: usize,
    /// Most key blocks kept per query block (before the sinks).
    pub k_max: usize,
    /// Leading query and key blocks kept whole.
    pub sinks: usize,
}

/// The selection's device buffers.
#[derive(Debug)]
pub struct SelectOutput {
    /// `[bh * nqb]` kept key blocks per query block (the backend's int type).
    pub counts: Handle,
    /// `[bh * nqb, nkb]` kept key blocks, ascending, padded with `nkb`.
    pub indices: Handle,
}

/// Key blocks per lane: `nkb / 32` rounded up (the sums' grouping, see [`block_select`]).
pub fn blocks_per_lane(nkb: usize) -> usize {
    nkb.div_ceil(LANES).max(1)
}

/// The low bits of a rank key that hold the key block's index (see [`block_select`]):
/// `2P - 1`, `P` = `nkb` rounded up to a power of two.
pub fn index_mask(nkb: usize) -> u32 {
    (2 * nkb.next_power_of_two() - 1) as u32
}

/// Whether one row of `nkb` key blocks fits the lanes' registers (at most 2,048 key blocks).
pub fn select_fits(nkb: usize) -> bool {
    blocks_per_lane(nkb) <= MAX_PER_LANE
}

/// Launches [`block_select`] on contiguous f32 `masses [bh, nqb, nkb]`. The caller checked
/// [`select_fits`], the grid limits (`nqb`, `bh <= 65,535`) and `nkb >= 1`.
pub fn launch_select<R: Runtime, I: Int + CubeElement>(
    client: &ComputeClient<R>,
    masses: Handle,
    job: SelectJob,
) -> SelectOutput {
    let rows = job.bh * job.nqb;
    let out = SelectOutput {
        counts: client.empty(rows * size_of::<I>()),
        indices: client.empty(rows * job.nkb * size_of::<I>()),
    };
    let planes = select_planes(client);
    // Without planes a cube is one row, its butterflies through shared memory.
    let per_cube = if planes { PLANE_ROWS } else { 1 };
    block_select::launch::<I, R>(
        client,
        CubeCount::Static(job.nqb.div_ceil(per_cube) as u32, job.bh as u32, 1),
        CubeDim::new_2d(LANES as u32, per_cube as u32),
        arr(&masses, rows * job.nkb),
        arr(&out.counts, rows),
        arr(&out.indices, rows * job.nkb),
        job.nqb as u32,
        job.nkb as u32,
        index_mask(job.nkb),
        job.tau,
        job.k_min as u32,
        job.k_max as u32,
        job.sinks as u32,
        blocks_per_lane(job.nkb),
        planes,
    );
    out
}

/// Whether a row runs as one plane of a cube of several (its butterflies by plane shuffles):
/// plane operations and planes of exactly 32.
fn select_planes<R: Runtime>(client: &ComputeClient<R>) -> bool {
    let hw = &client.properties().hardware;
    client.features().plane.contains(Plane::Ops) && hw.plane_size_min == 32 && hw.plane_size_max == 32
}
