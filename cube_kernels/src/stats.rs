//! Head statistics of Combined attention: the mass held by the largest entries of each row, the
//! per-frame masses of each sampled row and the cross-frame similarity energy.

use cubecl::prelude::*;
use cubecl::server::Handle;

use crate::array_arg;
use crate::merge::launch::{plan_planes, plan_shape};
use crate::merge::scan::cube_scan;
use crate::rank::{key_value, order_key, rth_largest_cached, rth_largest_key};

/// Units per cube (and the most frames [`cross_frame_energy`] takes).
pub const UNITS: usize = 256;
/// Frames [`frame_row_stats`] reduces at once (16 KB of shared memory at 256 units).
const FRAME_GROUP: usize = 8;

/// Sum of the `m` largest of row `CUBE_POS_X` of `x [rows, n]` (f32, contiguous) into
/// `out[row]`: the `m`-th largest found exactly ([`rth_largest_cached`] over the `cached` keys
/// each unit holds in registers where they cover the row, else [`rth_largest_key`] from global
/// memory), then the values above it plus as many copies of it as the count needs (ties counted
/// once each); `planes`: the counts' cube sums go through plane sums.
#[cube(launch)]
pub fn top_sum_rows(
    x: &Array<f32>,
    out: &mut Array<f32>,
    n: u32,
    m: u32,
    #[comptime] units: usize,
    #[comptime] cached: usize,
    #[comptime] planes: bool,
) {
    let row = CUBE_POS_X as usize;
    let u = UNIT_POS as usize;
    let len = n as usize;
    let base = row * len;
    let mut buf = SharedMemory::<u32>::new(units);
    let mut sums = SharedMemory::<f32>::new(units);
    // Keys past the row are 0: never counted (the bisection asks for keys >= 1).
    let mut keys = Array::<u32>::new(comptime![cached.max(1)]);
    #[unroll]
    for i in 0..cached {
        let s = i * units + u;
        let mut k = 0u32;
        if s < len {
            k = order_key(x[base + s]);
        }
        keys[i] = k;
    }
    if comptime![cached > 0] {
        let total = top_sum_cached(&keys, m, &mut buf, &mut sums, cached, planes);
        if u == 0 {
            out[row] = total;
        }
    } else {
        let key = rth_largest_key(x, base, len, m, &mut buf);
        // Each unit's values above the threshold, in row order.
        let mut above = 0u32;
        let mut sum = 0.0f32;
        let mut s = u;
        while s < len {
            let v = x[base + s];
            if order_key(v) > key {
                above += 1;
                sum += v;
            }
            s += units;
        }
        let total = top_sum_total(key, above, sum, m, &mut buf, &mut sums, planes);
        if u == 0 {
            out[row] = total;
        }
    }
}

/// The sum of the `m` largest values given the `m`-th largest's key and each unit's count and sum
/// of the values above it: the sums plus as many copies of it as the count needs (ties counted
/// once each). Every unit gets the sum.
#[cube]
#[allow(clippy::too_many_arguments)]
fn top_sum_total(
    key: u32,
    above: u32,
    sum: f32,
    m: u32,
    buf: &mut SharedMemory<u32>,
    sums: &mut SharedMemory<f32>,
    #[comptime] planes: bool,
) -> f32 {
    let ties = m - cube_scan(above, buf, planes).total;
    cube_sum_f32(sum, sums) + f32::cast_from(ties) * key_value(key)
}

/// Sum of the `m` largest of the values whose [`order_key`]s the units hold in `keys` (`cached`
/// a unit, 0 past the row): the `m`-th largest found exactly, then [`top_sum_total`]. Every unit
/// gets the sum.
#[cube]
fn top_sum_cached(
    keys: &Array<u32>,
    m: u32,
    buf: &mut SharedMemory<u32>,
    sums: &mut SharedMemory<f32>,
    #[comptime] cached: usize,
    #[comptime] planes: bool,
) -> f32 {
    let key = rth_largest_cached(keys, m, buf, cached, planes);
    let mut above = 0u32;
    let mut sum = 0.0f32;
    #[unroll]
    for i in 0..cached {
        if keys[i] > key {
            above += 1;
            sum += key_value(keys[i]);
        }
    }
    top_sum_total(key, above, sum, m, buf, sums, planes)
}

/// [`top_sum_rows`] over the probabilities of frame 0's sampled rows of Combined's scores
/// `x [P, t * samples, n]`, from [`frame_row_stats`]' maximum and sum of each row
/// (`stats [P, t * samples, width]`): cube `c` takes row `(c / samples) * rows_per_head +
/// c % samples`, its probabilities `exp(x - max) / Z` (a NaN one counts as 0), and writes the
/// sum of their `m` largest to `out[c]`. No probability tensor; the row is held in registers
/// (`cached > 0`).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn top_mass_rows<F: Float>(
    x: &Array<F>,
    stats: &Array<f32>,
    out: &mut Array<f32>,
    n: u32,
    m: u32,
    samples: u32,
    rows_per_head: u32,
    width: u32,
    #[comptime] units: usize,
    #[comptime] cached: usize,
    #[comptime] planes: bool,
) {
    let c = CUBE_POS_X as usize;
    let u = UNIT_POS as usize;
    let len = n as usize;
    let s_count = samples as usize;
    let row = (c / s_count) * rows_per_head as usize + c % s_count;
    let base = row * len;
    let at = row * width as usize + width as usize;
    let (top, inv) = (stats[at - 2], 1.0f32 / stats[at - 1]);
    let mut buf = SharedMemory::<u32>::new(units);
    let mut sums = SharedMemory::<f32>::new(units);
    let mut keys = Array::<u32>::new(cached);
    #[unroll]
    for i in 0..cached {
        let s = i * units + u;
        let mut k = 0u32;
        if s < len {
            let mut p = f32::exp(f32::cast_from(x[base + s]) - top) * inv;
            if p.is_nan() {
                p = 0.0;
            }
            k = order_key(p);
        }
        keys[i] = k;
    }
    let total = top_sum_cached(&keys, m, &mut buf, &mut sums, cached, planes);
    if u == 0 {
        out[c] = total;
    }
}

/// Launches [`top_sum_rows`] over `rows` rows of `n` contiguous f32 values; `1 <= m <= n`,
/// `rows <= 65,535` (checked by the caller). Returns `[rows]` f32 sums.
pub fn launch_top_sum<R: Runtime>(client: &ComputeClient<R>, x: Handle, rows: usize, n: usize, m: usize) -> Handle {
    let out = client.empty(rows * size_of::<f32>());
    let (units, cached) = plan_shape(client, n);
    top_sum_rows::launch::<R>(
        client,
        CubeCount::Static(rows as u32, 1, 1),
        CubeDim::new_1d(units as u32),
        array_arg(&x, rows * n),
        array_arg(&out, rows),
        n as u32,
        m as u32,
        units,
        cached,
        plan_planes(client, units),
    );
    out
}

/// Launches [`top_mass_rows`] over the first `samples` rows of each of `heads` heads of
/// `rows_per_head` rows of `geometry.n` scores (`x`, element `F`), with [`frame_row_stats`]'
/// output `stats` of those rows; `1 <= m <= n`, `heads * samples <= 65,535` (checked by the
/// caller). Returns `[heads * samples]` f32 sums, or `None` where a cube's registers cannot hold
/// a row (the caller then takes the softmax and [`launch_top_sum`]).
#[allow(clippy::too_many_arguments)]
pub fn launch_top_mass<R: Runtime, F: Float + CubeElement>(
    client: &ComputeClient<R>,
    [x, stats]: [&Handle; 2],
    heads: usize,
    samples: usize,
    rows_per_head: usize,
    geometry: FrameRows,
    m: usize,
) -> Option<Handle> {
    let (n, width) = (geometry.n, geometry.width());
    let (units, cached) = plan_shape(client, n);
    if cached == 0 {
        return None;
    }
    let (cubes, rows) = (heads * samples, heads * rows_per_head);
    let out = client.empty(cubes * size_of::<f32>());
    top_mass_rows::launch::<F, R>(
        client,
        CubeCount::Static(cubes as u32, 1, 1),
        CubeDim::new_1d(units as u32),
        array_arg(x, rows * n),
        array_arg(stats, rows * width),
        array_arg(&out, cubes),
        n as u32,
        m as u32,
        samples as u32,
        rows_per_head as u32,
        width as u32,
        units,
        cached,
        plan_planes(client, units),
    );
    Some(out)
}

/// Where the frames and the text lie in a row of `n` scores (sequence positions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRows {
    /// Scores per row (text + video).
    pub n: usize,
    /// Position of frame 0's first token.
    pub video_start: usize,
    /// Frames `t`, and tokens per frame.
    pub frames: usize,
    pub frame_len: usize,
    /// The text's first position and length (0: no text).
    pub text_start: usize,
    pub text_len: usize,
}

impl FrameRows {
    /// Values [`frame_row_stats`] writes per row: `t` frame masses, the text mass, `t` squared
    /// norms, the row's maximum and its sum of `exp(x - max)`.
    pub fn width(&self) -> usize {
        2 * self.frames + 3
    }
}

/// Sum of `value` over the cube (every unit gets it); `buf` holds `CUBE_DIM` values.
#[cube]
fn cube_sum_f32(value: f32, buf: &mut SharedMemory<f32>) -> f32 {
    let u = UNIT_POS as usize;
    sync_cube();
    buf[u] = value;
    sync_cube();
    let mut half = CUBE_DIM as usize / 2;
    while half > 0 {
        if u < half {
            buf[u] += buf[u + half];
        }
        sync_cube();
        half /= 2;
    }
    buf[0]
}

/// Maximum of `value` over the cube (every unit gets it).
#[cube]
fn cube_max_f32(value: f32, buf: &mut SharedMemory<f32>) -> f32 {
    let u = UNIT_POS as usize;
    sync_cube();
    buf[u] = value;
    sync_cube();
    let mut half = CUBE_DIM as usize / 2;
    while half > 0 {
        if u < half {
            buf[u] = f32::max(buf[u], buf[u + half]);
        }
        sync_cube();
        half /= 2;
    }
    buf[0]
}

/// Row `CUBE_POS_X` of scores `x [rows, n]`: with `p = softmax(row)` and `e = exp(row - max)`,
/// writes `out[row * (2t + 3) ..]` = the mass `m_i = sum p` of each frame `i`, the text's mass,
/// `w_i = sum (p / max(m_i, 1e-30))^2` over frame `i`, the maximum, and `Z = sum e`. One read of
/// the row for the maximum, one for the sums.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn frame_row_stats<F: Float>(
    x: &Array<F>,
    out: &mut Array<f32>,
    n: u32,
    video_start: u32,
    frames: u32,
    frame_len: u32,
    text_start: u32,
    text_len: u32,
    #[comptime] units: usize,
) {
    let row = CUBE_POS_X as usize;
    let u = UNIT_POS as usize;
    let len = n as usize;
    let base = row * len;
    let t = frames as usize;
    let hw = frame_len as usize;
    let width = 2 * t + 3;
    let mut buf = SharedMemory::<f32>::new(units);
    let mut top = f32::new(-3.0e38);
    let mut s = u;
    while s < len {
        top = f32::max(top, f32::cast_from(x[base + s]));
        s += units;
    }
    let top = cube_max_f32(top, &mut buf);
    // Text first: Z needs every part before the masses are written.
    let mut part = 0.0f32;
    let mut s = u;
    while s < text_len as usize {
        part += f32::exp(f32::cast_from(x[base + text_start as usize + s]) - top);
        s += units;
    }
    let text = cube_sum_f32(part, &mut buf);
    let mut z = text;
    // Frames a group at a time: each unit's partial sums of every frame of the group go to
    // shared memory and one tree reduces them all (two reductions a frame cost ~9 barriers each).
    let mut sums = SharedMemory::<f32>::new(2 * FRAME_GROUP * units);
    let mut g0 = 0usize;
    while g0 < t {
        #[unroll]
        for gi in 0..FRAME_GROUP {
            let i = g0 + gi;
            let mut sum = 0.0f32;
            let mut sq = 0.0f32;
            if i < t {
                let start = base + video_start as usize + i * hw;
                let mut s = u;
                while s < hw {
                    let e = f32::exp(f32::cast_from(x[start + s]) - top);
                    sum += e;
                    sq += e * e;
                    s += units;
                }
            }
            sums[(2 * gi) * units + u] = sum;
            sums[(2 * gi + 1) * units + u] = sq;
        }
        sync_cube();
        let mut half = CUBE_DIM as usize / 2;
        while half > 0 {
            if u < half {
                #[unroll]
                for v in 0..2 * FRAME_GROUP {
                    sums[v * units + u] += sums[v * units + u + half];
                }
            }
            sync_cube();
            half /= 2;
        }
        #[unroll]
        for gi in 0..FRAME_GROUP {
            let i = g0 + gi;
            if i < t {
                z += sums[(2 * gi) * units];
                if u == 0 {
                    // Raw sums for now; normalised below once Z is known.
                    out[row * width + i] = sums[(2 * gi) * units];
                    out[row * width + t + 1 + i] = sums[(2 * gi + 1) * units];
                }
            }
        }
        // Everyone has read the totals before the next group overwrites them.
        sync_cube();
        g0 += FRAME_GROUP;
    }
    if u == 0 {
        // z >= 1 (the maximum's own term). w = (sqrt(sq) / z / kept)^2, one factor at a time:
        // no square of a tiny mass underflows to 0 / 0.
        let inv = 1.0f32 / z;
        for i in 0..t {
            let mass = out[row * width + i] * inv;
            let kept = f32::max(mass, f32::new(1e-30));
            let r = f32::sqrt(out[row * width + t + 1 + i]) * inv / kept;
            out[row * width + i] = mass;
            out[row * width + t + 1 + i] = r * r;
        }
        out[row * width + t] = text * inv;
        out[row * width + 2 * t + 1] = top;
        out[row * width + 2 * t + 2] = z;
    }
}

/// Cube `(head, a, i)` (`CUBE_POS_X = (head * samples + a) * t + i`): the squared norm over
/// frame `i`'s positions of `y = sum_j c_j p_j / max(m_ij, 1e-30)`, where `p_j` is the softmax of
/// sampled row `a` of query frame `j` (row `head * t * samples + j * samples + a`), `m_ij` its
/// mass on frame `i`, and `1 / c_j` the norm over the samples of query frame `j`'s rows so
/// normalised within frame `i` (from [`frame_row_stats`]' `w`). Into `out[cube]`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn cross_frame_energy<F: Float>(
    x: &Array<F>,
    stats: &Array<f32>,
    out: &mut Array<f32>,
    n: u32,
    video_start: u32,
    frames: u32,
    frame_len: u32,
    samples: u32,
    #[comptime] units: usize,
) {
    let cube = CUBE_POS_X as usize;
    let u = UNIT_POS as usize;
    let t = frames as usize;
    let s_count = samples as usize;
    let hw = frame_len as usize;
    let i = cube % t;
    let a = (cube / t) % s_count;
    let head = cube / (t * s_count);
    let width = 2 * t + 3;
    let mut buf = SharedMemory::<f32>::new(units);
    // Per query frame j (t <= units): `1 / (Z max(m_ij, 1e-30))` and `1 / norm`, each at most
    // 1e30, applied one at a time so that every partial product stays within 1 (a single
    // product of the two could overflow, then meet a zero), and the row's maximum.
    let mut scales = SharedMemory::<f32>::new(units);
    let mut norms = SharedMemory::<f32>::new(units);
    let mut tops = SharedMemory::<f32>::new(units);
    if u < t {
        let first = head * t * s_count + u * s_count;
        let mut norm2 = 0.0f32;
        for b in 0..s_count {
            norm2 += stats[(first + b) * width + t + 1 + i];
        }
        norms[u] = 1.0f32 / f32::max(f32::sqrt(norm2), f32::new(1e-30));
        let row = (first + a) * width;
        scales[u] = 1.0f32 / stats[row + 2 * t + 2] / f32::max(stats[row + i], f32::new(1e-30));
        tops[u] = stats[row + 2 * t + 1];
    }
    sync_cube();
    let mut energy = 0.0f32;
    let mut s = u;
    while s < hw {
        let mut y = 0.0f32;
        for j in 0..t {
            let row = head * t * s_count + j * s_count + a;
            let at = row * n as usize + video_start as usize + i * hw + s;
            y += f32::exp(f32::cast_from(x[at]) - tops[j]) * scales[j] * norms[j];
        }
        energy += y * y;
        s += units;
    }
    let total = cube_sum_f32(energy, &mut buf);
    if u == 0 {
        out[cube] = total;
    }
}

/// Launches [`frame_row_stats`] over `rows` rows of scores of element `F` (contiguous,
/// `rows <= 65,535`, checked by the caller). Returns `[rows, geometry.width()]` f32.
pub fn launch_frame_row_stats<R: Runtime, F: Float + CubeElement>(
    client: &ComputeClient<R>,
    x: &Handle,
    rows: usize,
    geometry: FrameRows,
) -> Handle {
    let g = geometry;
    let out = client.empty(rows * g.width() * size_of::<f32>());
    frame_row_stats::launch::<F, R>(
        client,
        CubeCount::Static(rows as u32, 1, 1),
        CubeDim::new_1d(UNITS as u32),
        array_arg(x, rows * g.n),
        array_arg(&out, rows * g.width()),
        g.n as u32,
        g.video_start as u32,
        g.frames as u32,
        g.frame_len as u32,
        g.text_start as u32,
        g.text_len as u32,
        UNITS,
    );
    out
}

/// Launches [`cross_frame_energy`] for `heads` heads of `t * samples` rows each: `x` the scores,
/// `row_stats` [`frame_row_stats`]'s output. Returns `[heads, samples, t]` f32
/// (`heads * samples * t <= 65,535`, `t <= 256`, checked by the caller).
pub fn launch_cross_frame_energy<R: Runtime, F: Float + CubeElement>(
    client: &ComputeClient<R>,
    [x, row_stats]: [&Handle; 2],
    heads: usize,
    samples: usize,
    geometry: FrameRows,
) -> Handle {
    let g = geometry;
    let t = g.frames;
    let rows = heads * t * samples;
    let cubes = heads * samples * t;
    let out = client.empty(cubes * size_of::<f32>());
    cross_frame_energy::launch::<F, R>(
        client,
        CubeCount::Static(cubes as u32, 1, 1),
        CubeDim::new_1d(UNITS as u32),
        array_arg(x, rows * g.n),
        array_arg(row_stats, rows * g.width()),
        array_arg(&out, cubes),
        g.n as u32,
        g.video_start as u32,
        t as u32,
        g.frame_len as u32,
        samples as u32,
        UNITS,
    );
    out
}
