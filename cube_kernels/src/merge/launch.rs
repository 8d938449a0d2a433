//! Host side of the token-merging kernels.

use cubecl::calculate_cube_count_elemwise;
use cubecl::ir::features::Plane;
use cubecl::prelude::*;
use cubecl::server::Handle;

use crate::array_arg as arr;

use super::gather::{gather_rows, segment_sum};
use super::matching::{merge_plan, row_argmax};
use super::metric::{metric_unit_rows, padded};
use super::similarity::{best_match_mma, best_match_portable};
use crate::attention::mma::PAD;
use crate::attention::{KernelElem, match_row_tiles, match_warps, mma_available};

/// Units per cube of the per-group plan kernel (one cube per group) where its sources fit the
/// register cache: its stable counting sort costs every unit a pass over the chunk, so fewer
/// units do less work in all.
const PLAN_UNITS: usize = 256;
/// Units per cube of the plan kernel for longer rows (up to the device's limit).
const PLAN_UNITS_LONG: usize = 1024;
/// Most keys a unit of the plan kernel holds in registers during the top-`r` bisection.
const PLAN_CACHED: usize = 64;
/// Units per cube of the element-wise kernels.
const ELEM_UNITS: u32 = 256;

/// The merge layout's host tables, shared by every group (see [`super::merge_plan`]).
#[derive(Debug, Clone, Copy)]
pub struct MatchTables<'a> {
    /// Token of each source.
    pub src_token: &'a [u32],
    /// Token of each destination.
    pub dst_token: &'a [u32],
    /// Slot of each text or destination token, `u32::MAX` for a source (length `n`).
    pub fixed_slot: &'a [u32],
    /// Token of each text or destination slot, `u32::MAX` for a source slot (length `n_kept`).
    pub fixed_kept: &'a [u32],
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
    /// Destinations.
    pub fn dsts(&self) -> usize {
        self.dst_token.len()
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

/// Units per cube of the plan kernel (and of the top sums, [`crate::stats::top_sum_rows`]) for
/// rows of `sources`, and how many keys each unit caches
/// in registers (a power of two; 0: none, the bisection reads them from global memory): [`PLAN_UNITS`]
/// when that many units cache the row, else up to [`PLAN_UNITS_LONG`] (the largest power of two
/// the device allows).
pub(crate) fn plan_shape<R: Runtime>(client: &ComputeClient<R>, sources: usize) -> (usize, usize) {
    let max = client.properties().hardware.max_units_per_cube as usize;
    let fit = |cap: usize| {
        let mut units = cap;
        while units > max && units > 1 {
            units /= 2;
        }
        units
    };
    let mut units = fit(PLAN_UNITS);
    if sources > units * PLAN_CACHED {
        units = fit(PLAN_UNITS_LONG);
    }
    let per_unit = sources.div_ceil(units).max(1).next_power_of_two();
    (units, if per_unit <= PLAN_CACHED { per_unit } else { 0 })
}

/// The device's shared memory per cube (bytes).
fn max_shared<R: Runtime>(client: &ComputeClient<R>) -> usize {
    client.properties().hardware.max_shared_memory_size
}

/// Whether the plan kernel's scans of `units` units can go through plane sums: plane operations,
/// one plane size, and whole planes.
pub(crate) fn plan_planes<R: Runtime>(client: &ComputeClient<R>, units: usize) -> bool {
    let hw = &client.properties().hardware;
    client.features().plane.contains(Plane::Ops)
        && hw.plane_size_min == hw.plane_size_max
        && hw.plane_size_max > 0
        && units.is_multiple_of(hw.plane_size_max as usize)
}

/// Destination counters of the plan kernel: a power of two (one compiled kernel per bucket).
fn counter_slots(dsts: usize, units: usize) -> usize {
    dsts.max(units).next_power_of_two()
}

/// Whether the plan kernel's shared memory (one counter per destination) fits the device.
pub fn match_fits<R: Runtime>(client: &ComputeClient<R>, sources: usize, dsts: usize) -> bool {
    let (units, _) = plan_shape(client, sources);
    let bytes = (counter_slots(dsts, units) + 2 * units) * size_of::<u32>();
    bytes <= max_shared(client)
}

/// Row argmax, then the plan kernel (one cube per group). The caller checked [`match_fits`],
/// the grid limit (`groups <= 65,535`) and that every count fits in `u32`.
pub fn launch_match<R: Runtime, F: Float + CubeElement, I: Int + CubeElement>(
    client: &ComputeClient<R>,
    job: MatchLaunch<'_>,
) -> MatchOutput {
    let t = job.tables;
    let (g, s, d) = (job.groups, t.sources(), t.dsts());
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
    launch_plan::<R, I>(client, &best, &best_idx, &upload_u32(client, t.src_token), g, t)
}

/// `v` on the device (one dummy entry when empty: empty buffers are not launchable).
fn upload_u32<R: Runtime>(client: &ComputeClient<R>, v: &[u32]) -> Handle {
    client.create_from_slice(u32::as_bytes(if v.is_empty() { &[0u32] } else { v }))
}

/// How the fused matching ([`launch_match_metric`]) computes its scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricMatchPath {
    /// One unit per source, f32 arithmetic (any runtime).
    Portable,
    /// `mma.sync` on f16/bf16 metrics, f32 scores (CUDA).
    Mma,
}

/// Shared memory the tensor-core matching allows its two destination stages. Stages of 128
/// rows (78 KB at 144 channels) measured 6% slower than 64 on the H100.
const MMA_MATCH_SHARED: usize = 40 * 1024;
/// Largest metric width (channels) whose A fragments the tensor-core matching keeps in registers.
const MMA_MATCH_CHANNELS: usize = 272;
/// Shared memory of the portable matching's destination tile (f32): lavapipe offers 32 KiB.
const PORTABLE_MATCH_SHARED: usize = 16 * 1024;

/// Destinations per stage of the tensor-core matching at `channels` (a multiple of 16): the
/// largest of 64, 32, 16 whose two stages fit [`MMA_MATCH_SHARED`] and the device.
fn mma_match_tile(channels: usize, elem_bytes: usize, max_shared: usize) -> Option<usize> {
    [64, 32, 16].into_iter().find(|&t| 2 * t * (channels + PAD) * elem_bytes <= MMA_MATCH_SHARED.min(max_shared))
}

/// Destinations per shared-memory tile of the portable matching: the largest power of two up to
/// 16 whose f32 tile fits [`PORTABLE_MATCH_SHARED`].
fn portable_match_tile(channels: usize) -> Option<usize> {
    [16, 8, 4, 2, 1].into_iter().find(|&t| t * channels * size_of::<f32>() <= PORTABLE_MATCH_SHARED)
}

/// The fused matching's path for a unit metric of `elem` with `channels` (a multiple of 16):
/// tensor cores where the runtime has `mma.sync`, `ldmatrix` and `cp.async` for `elem` and the
/// fragments fit; the portable kernel otherwise; `None` when not even its tile fits.
pub fn metric_match_path<R: Runtime>(
    client: &ComputeClient<R>,
    elem: KernelElem,
    channels: usize,
) -> Option<MetricMatchPath> {
    if !channels.is_multiple_of(16) || channels == 0 {
        return None;
    }
    let elem_bytes = elem.size();
    if elem != KernelElem::F32
        && channels <= MMA_MATCH_CHANNELS
        && mma_match_tile(channels, elem_bytes, max_shared(client)).is_some()
        && mma_available(client, elem)
    {
        return Some(MetricMatchPath::Mma);
    }
    portable_match_tile(channels).map(|_| MetricMatchPath::Portable)
}

/// One fused matching: the unit metric `[groups, n, channels]` (contiguous, rows normalised,
/// `channels` a multiple of 16) and the layout's tables.
#[derive(Debug)]
pub struct MetricMatch<'a> {
    /// The unit metric.
    pub unit: Handle,
    /// Groups (batch x metric heads).
    pub groups: usize,
    /// Channels per row (a multiple of 16).
    pub channels: usize,
    /// The layout's tables.
    pub tables: MatchTables<'a>,
}

/// Each source's best destination straight from the unit metric (no score matrix; see
/// [`super::best_match_mma`]), then the plan kernel. `path` comes from [`metric_match_path`];
/// the caller checked [`match_fits`], the grid limit and that every count fits in `u32`.
pub fn launch_match_metric<R: Runtime, F: Float + CubeElement, I: Int + CubeElement>(
    client: &ComputeClient<R>,
    job: MetricMatch<'_>,
    path: MetricMatchPath,
) -> MatchOutput {
    let t = job.tables;
    let (g, s, d, c) = (job.groups, t.sources(), t.dsts(), job.channels);
    let rows = g * s;
    let best = client.empty(rows.max(1) * size_of::<f32>());
    let best_idx = client.empty(rows.max(1) * size_of::<I>());
    let src_token = upload_u32(client, t.src_token);
    if rows > 0 && d > 0 {
        let dst_token = upload_u32(client, t.dst_token);
        let unit_len = g * t.n() * c;
        match path {
            MetricMatchPath::Portable => {
                let units = 64;
                let tile = portable_match_tile(c).expect("checked by metric_match_path");
                best_match_portable::launch::<F, I, R>(
                    client,
                    CubeCount::Static(s.div_ceil(units) as u32, g as u32, 1),
                    CubeDim::new_1d(units as u32),
                    arr(&job.unit, unit_len),
                    arr(&src_token, s),
                    arr(&dst_token, d),
                    arr(&best, rows),
                    arr(&best_idx, rows),
                    t.n() as u32,
                    s as u32,
                    d as u32,
                    c,
                    tile,
                    units,
                );
            }
            MetricMatchPath::Mma => {
                let warps = match_warps(s);
                let m_tiles = match_row_tiles();
                let tile = mma_match_tile(c, size_of::<F>(), max_shared(client)).expect("checked by metric_match_path");
                // SAFETY: every buffer length is its handle's element count; the kernel reads
                // tokens below `n` (the layout's tables), rows clamped to the last source and
                // destination, and shared memory inside its stages.
                unsafe {
                    best_match_mma::launch_unchecked::<F, I, R>(
                        client,
                        CubeCount::Static(s.div_ceil(16 * m_tiles * warps) as u32, g as u32, 1),
                        CubeDim::new_2d(32, warps as u32),
                        arr(&job.unit, unit_len),
                        arr(&src_token, s),
                        arr(&dst_token, d),
                        arr(&best, rows),
                        arr(&best_idx, rows),
                        t.n() as u32,
                        s as u32,
                        d as u32,
                        c,
                        tile,
                        warps,
                        m_tiles,
                    );
                }
            }
        }
    }
    launch_plan::<R, I>(client, &best, &best_idx, &src_token, g, t)
}

/// The plan kernel over each source's best score and destination (`[groups, sources]` each);
/// `src_token` holds the tables' source tokens on the device.
fn launch_plan<R: Runtime, I: Int + CubeElement>(
    client: &ComputeClient<R>,
    best: &Handle,
    best_idx: &Handle,
    src_token: &Handle,
    g: usize,
    t: MatchTables<'_>,
) -> MatchOutput {
    let (s, d) = (t.sources(), t.dsts());
    let rows = g * s;
    let (fixed_slot, fixed_kept) = (upload_u32(client, t.fixed_slot), upload_u32(client, t.fixed_kept));
    let out = MatchOutput {
        slot_of_token: client.empty(g * t.n() * size_of::<I>()),
        kept_token: client.empty(g * t.n_kept() * size_of::<I>()),
        member_offsets: client.empty(g * (d + 1) * size_of::<I>()),
        members: client.empty(g * t.r_stride() * size_of::<I>()),
    };
    let rank = client.empty(rows.max(1) * size_of::<u32>());
    let (units, cached) = plan_shape(client, s);
    merge_plan::launch::<I, R>(
        client,
        CubeCount::Static(g as u32, 1, 1),
        CubeDim::new_1d(units as u32),
        arr(best, rows),
        arr(best_idx, rows),
        arr(src_token, s),
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
        units,
        counter_slots(d, units),
        cached,
        plan_planes(client, units),
    );
    out
}

/// Units per cube of the unit-metric kernel.
const METRIC_UNITS: usize = 256;
/// Shared memory the unit-metric kernel allows its rows (f32): lavapipe offers 32 KiB.
const METRIC_SHARED: usize = 20 * 1024;

/// Rows per cube of the unit-metric kernel for rows of `ca + cb` inputs: the largest power of
/// two up to 64 whose f32 copy (rows at their padded strides) fits [`METRIC_SHARED`]; `None`
/// when not even one row does.
pub fn unit_metric_tile(ca: usize, cb: usize) -> Option<usize> {
    let row = padded(ca) + if cb > 0 { padded(cb) } else { 0 };
    [64, 32, 16, 8, 4, 2, 1].into_iter().find(|&t| t * row * size_of::<f32>() <= METRIC_SHARED)
}

/// The unit metric `[rows, width]` from `a [rows, ca]` and, when given, `b [rows, cb]` (both
/// contiguous): rows `concat(a, ||a||, b, ||b||)` or `a`, normalised, zero-padded to `width`
/// (at least the row's length). The caller checked [`unit_metric_tile`] and that `rows *
/// width` fits in `u32`.
pub fn launch_unit_metric<R: Runtime, F: Float + CubeElement>(
    client: &ComputeClient<R>,
    a: &Handle,
    b: Option<&Handle>,
    rows: usize,
    [ca, cb]: [usize; 2],
    width: usize,
) -> Handle {
    let total = rows * width;
    let out = client.empty(total.max(1) * size_of::<F>());
    if total == 0 {
        return out;
    }
    let with_b = b.is_some();
    let cb = if with_b { cb } else { 0 };
    let b = b.unwrap_or(a);
    let b_len = if with_b { rows * cb } else { rows * ca };
    let tile = unit_metric_tile(ca, cb).expect("checked by the caller");
    let cubes = rows.div_ceil(tile);
    let grid_x = cubes.min(u16::MAX as usize);
    metric_unit_rows::launch::<F, R>(
        client,
        CubeCount::Static(grid_x as u32, cubes.div_ceil(grid_x) as u32, 1),
        CubeDim::new_1d(METRIC_UNITS as u32),
        arr(a, rows * ca),
        arr(b, b_len),
        arr(&out, total),
        rows as u32,
        ca,
        cb,
        width,
        with_b,
        tile,
        METRIC_UNITS,
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
        arr(&plan.member_offsets, groups * (tables.dsts() + 1)),
        arr(&plan.members, groups * tables.r_stride()),
        arr(&out, total),
        total as u32,
        reps as u32,
        n as u32,
        n_kept as u32,
        channels as u32,
        tables.dsts() as u32,
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
