//! Host side of the token-merging kernels.

use cubecl::calculate_cube_count_elemwise;
use cubecl::prelude::*;
use cubecl::server::Handle;

use crate::array_arg as arr;

use super::gather::{gather_rows, segment_sum};
use super::matching::{merge_plan, row_argmax};

/// Units per cube of the per-group plan kernel.
const PLAN_UNITS: usize = 256;
/// Units per cube of the element-wise kernels.
const ELEM_UNITS: u32 = 256;

/// The merge layout's host tables, shared by every group (see [`super::merge_plan`]).
#[derive(Debug, Clone, Copy)]
pub struct MatchTables<'a> {
    /// Token of each source.
    pub src_token: &'a [u32],
    /// Slot of each text or destination token, `u32::MAX` for a source (length `n`).
    pub fixed_slot: &'a [u32],
    /// Token of each text or destination slot, `u32::MAX` for a source slot (length `n_kept`).
    pub fixed_kept: &'a [u32],
    /// Destinations.
    pub dsts: usize,
    /// Slot of the first destination.
    pub dst_slot0: usize,
    /// Slot of the first unmerged source.
    pub src_slot0: usize,
    /// Merged sources per group.
    pub r: usize,
}

impl MatchTables<'_> {
    /// Tokens.
    pub fn n(&self) -> usize {
        self.fixed_slot.len()
    }
    /// Slots of the merged sequence.
    pub fn n_kept(&self) -> usize {
        self.fixed_kept.len()
    }
    /// Sources.
    pub fn sources(&self) -> usize {
        self.src_token.len()
    }
    /// Row stride of the member lists (one dummy entry when nothing merges).
    pub fn r_stride(&self) -> usize {
        self.r.max(1)
    }
}

/// One matching launch: `groups` score matrices `[sources, dsts]` of element type `F`.
#[derive(Debug)]
pub struct MatchLaunch<'a> {
    /// `[outer, inner, sources, dsts]` scores, strided as `strides` says (elements).
    pub scores: Handle,
    /// Strides of the four score dimensions.
    pub strides: [usize; 4],
    /// Groups = `outer * inner` (batch x heads, or batch for a shared metric).
    pub groups: usize,
    /// The inner group dimension (heads of the metric).
    pub inner: usize,
    /// The layout's tables.
    pub tables: MatchTables<'a>,
}

/// The merge plan's device tables (element type of the backend's ints).
#[derive(Debug)]
pub struct MatchOutput {
    /// `[groups, n]`.
    pub slot_of_token: Handle,
    /// `[groups, n_kept]`.
    pub kept_token: Handle,
    /// `[groups, dsts + 1]`.
    pub member_offsets: Handle,
    /// `[groups, max(r, 1)]`.
    pub members: Handle,
}

/// Destination counters of the plan kernel: a power of two (one compiled kernel per bucket).
fn counter_slots(dsts: usize) -> usize {
    dsts.max(PLAN_UNITS).next_power_of_two()
}

/// Whether the plan kernel's shared memory (one counter per destination) fits the device.
pub fn match_fits<R: Runtime>(client: &ComputeClient<R>, dsts: usize) -> bool {
    let bytes = (counter_slots(dsts) + 2 * PLAN_UNITS) * size_of::<u32>();
    bytes <= client.properties().hardware.max_shared_memory_size
}

/// Row argmax, then the plan kernel (one cube per group). The caller checked [`match_fits`],
/// the grid limit (`groups <= 65,535`) and that every count fits in `u32`.
pub fn launch_match<R: Runtime, F: Float + CubeElement, I: Int + CubeElement>(
    client: &ComputeClient<R>,
    job: MatchLaunch<'_>,
) -> MatchOutput {
    let t = job.tables;
    let (g, s, d) = (job.groups, t.sources(), t.dsts);
    let rows = g * s;
    let best = client.empty(rows.max(1) * size_of::<f32>());
    let best_idx = client.empty(rows.max(1) * size_of::<I>());
    let dim = CubeDim::new_1d(ELEM_UNITS);
    if rows > 0 {
        let st = job.strides;
        let dims = [g / job.inner, job.inner, s, d];
        let len = 1 + (0..4).map(|i| (dims[i] - 1) * st[i]).sum::<usize>();
        row_argmax::launch::<F, I, R>(
            client,
            calculate_cube_count_elemwise(client, rows, dim),
            dim,
            arr(&job.scores, len),
            arr(&best, rows),
            arr(&best_idx, rows),
            rows as u32,
            d as u32,
            s as u32,
            job.inner as u32,
            st[0] as u32,
            st[1] as u32,
            st[2] as u32,
            st[3] as u32,
        );
    }
    let upload = |v: &[u32]| client.create_from_slice(u32::as_bytes(if v.is_empty() { &[0u32] } else { v }));
    let (src_token, fixed_slot, fixed_kept) = (upload(t.src_token), upload(t.fixed_slot), upload(t.fixed_kept));
    let out = MatchOutput {
        slot_of_token: client.empty(g * t.n() * size_of::<I>()),
        kept_token: client.empty(g * t.n_kept() * size_of::<I>()),
        member_offsets: client.empty(g * (d + 1) * size_of::<I>()),
        members: client.empty(g * t.r_stride() * size_of::<I>()),
    };
    let rank = client.empty(rows.max(1) * size_of::<u32>());
    merge_plan::launch::<I, R>(
        client,
        CubeCount::Static(g as u32, 1, 1),
        CubeDim::new_1d(PLAN_UNITS as u32),
        arr(&best, rows),
        arr(&best_idx, rows),
        arr(&src_token, s),
        arr(&fixed_slot, t.n()),
        arr(&fixed_kept, t.n_kept()),
        arr(&out.slot_of_token, g * t.n()),
        arr(&out.kept_token, g * t.n_kept()),
        arr(&out.member_offsets, g * (d + 1)),
        arr(&out.members, g * t.r_stride()),
        arr(&rank, rows),
        s as u32,
        d as u32,
        t.n() as u32,
        t.n_kept() as u32,
        t.r as u32,
        t.r_stride() as u32,
        t.dst_slot0 as u32,
        t.src_slot0 as u32,
        PLAN_UNITS,
        counter_slots(d),
    );
    out
}

/// Shapes of a segment sum or a gather: `groups * reps` rows of `channels`.
#[derive(Debug, Clone, Copy)]
pub struct RowsShape {
    /// Plan groups.
    pub groups: usize,
    /// Rows per group sharing its plan.
    pub reps: usize,
    /// Tokens.
    pub n: usize,
    /// Merged slots.
    pub n_kept: usize,
    /// Channels per token.
    pub channels: usize,
}

/// Segment sums of `x [groups * reps, n, channels]` into `[groups * reps, n_kept, channels]`.
pub fn launch_segment_sum<R: Runtime, F: Float + CubeElement, I: Int + CubeElement>(
    client: &ComputeClient<R>,
    x: Handle,
    plan: &MatchOutput,
    tables: MatchTables<'_>,
    shape: RowsShape,
) -> Handle {
    let RowsShape { groups, reps, n, n_kept, channels } = shape;
    let total = groups * reps * n_kept * channels;
    let out = client.empty(total.max(1) * size_of::<F>());
    if total == 0 {
        return out;
    }
    let dim = CubeDim::new_1d(ELEM_UNITS);
    segment_sum::launch::<F, I, R>(
        client,
        calculate_cube_count_elemwise(client, total, dim),
        dim,
        arr(&x, groups * reps * n * channels),
        arr(&plan.kept_token, groups * n_kept),
        arr(&plan.member_offsets, groups * (tables.dsts + 1)),
        arr(&plan.members, groups * tables.r_stride()),
        arr(&out, total),
        total as u32,
        reps as u32,
        n as u32,
        n_kept as u32,
        channels as u32,
        tables.dsts as u32,
        tables.dst_slot0 as u32,
        tables.r_stride() as u32,
    );
    out
}

/// Unmerge: rows of `y [groups * reps, n_kept, channels]` gathered into `[groups * reps, n, channels]`.
pub fn launch_gather_rows<R: Runtime, F: Float + CubeElement, I: Int + CubeElement>(
    client: &ComputeClient<R>,
    y: Handle,
    slot_of_token: &Handle,
    shape: RowsShape,
) -> Handle {
    let RowsShape { groups, reps, n, n_kept, channels } = shape;
    let total = groups * reps * n * channels;
    let out = client.empty(total.max(1) * size_of::<F>());
    if total == 0 {
        return out;
    }
    let dim = CubeDim::new_1d(ELEM_UNITS);
    gather_rows::launch::<F, I, R>(
        client,
        calculate_cube_count_elemwise(client, total, dim),
        dim,
        arr(&y, groups * reps * n_kept * channels),
        arr(slot_of_token, groups * n),
        arr(&out, total),
        total as u32,
        reps as u32,
        n as u32,
        n_kept as u32,
        channels as u32,
    );
    out
}
