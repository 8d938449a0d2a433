//! Host side of the block selection.

use cubecl::ir::features::Plane;
use cubecl::prelude::*;
use cubecl::server::Handle;

use crate::array_arg as arr;

use super::select::block_select;

/// Units per cube.
const UNITS: usize = 256;

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

/// Shared-memory slots for the masses of one row (the bitonic sort's length): a power of two, a
/// multiple of the units; one compiled kernel per size.
fn capacity(nkb: usize) -> usize {
    nkb.max(UNITS).next_power_of_two()
}

/// The low bits of a rank key that hold the key block's index (see [`block_select`]):
/// `2P - 1`, `P` = `nkb` rounded up to a power of two.
pub fn index_mask(nkb: usize) -> u32 {
    (2 * nkb.next_power_of_two() - 1) as u32
}

/// Whether one row of `nkb` key blocks fits the device's shared memory.
pub fn select_fits<R: Runtime>(client: &ComputeClient<R>, nkb: usize) -> bool {
    let bytes = 5 * capacity(nkb) * 4 + UNITS * 4;
    bytes <= client.properties().hardware.max_shared_memory_size
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
    block_select::launch::<I, R>(
        client,
        CubeCount::Static(job.nqb as u32, job.bh as u32, 1),
        CubeDim::new_1d(UNITS as u32),
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
        UNITS,
        capacity(job.nkb),
        select_planes(client),
    );
    out
}

/// Whether the kernel's scans go through plane sums and, where the cube holds two slots a unit
/// (`cap = 2 * UNITS`, 257 to 512 key blocks), the sort's rounds within 64 slots through plane
/// shuffles: plane operations and planes of 32.
fn select_planes<R: Runtime>(client: &ComputeClient<R>) -> bool {
    let hw = &client.properties().hardware;
    client.features().plane.contains(Plane::Ops) && hw.plane_size_min == 32 && hw.plane_size_max == 32
}
