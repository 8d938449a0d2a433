//! Block masses from the engine's chunked one-hot attention (the dynamic estimate's last step).
//!
//! One engine call over the sampled tokens gave, per batch-head `bh` and chunk `t` of
//! `per_chunk` key blocks, each sampled row's softmax mass in the chunk's blocks (normalised over the
//! chunk's keys) and the chunk's LSE. The row's LSE over every chunk rescales each chunk to the
//! whole row (`exp(lse_t - lse_row)`), and a query block's mass in a key block sums its rows.

use cubecl::prelude::*;
use cubecl::server::Handle;

use crate::array_arg;

/// Units per cube of [`row_lse`].
const LSE_UNITS: usize = 256;

/// The LSE over every chunk of each sampled row: `out[bh * m + a]` from `lse [bh, chunks, m]`,
/// `max + ln(sum exp(lse_t - max))`. A row with every chunk `-inf` (or a NaN) gets NaN: its
/// masses are undefined, and the selection counts them as 0.
#[cube(launch)]
pub fn row_lse(lse: &Array<f32>, out: &mut Array<f32>, rows: u32, m: u32, chunks: u32) {
    let r = ABSOLUTE_POS;
    if r < rows as usize {
        let (bh, a) = (r / m as usize, r % m as usize);
        let base = bh * chunks as usize * m as usize + a;
        // From the first chunk (there is at least one): CUDA has no `-inf` literal.
        let mut top = lse[base];
        for t in 1..chunks as usize {
            top = f32::max(top, lse[base + t * m as usize]);
        }
        let mut sum = f32::new(0.0);
        for t in 0..chunks as usize {
            // `-inf - -inf` is NaN: a row with no finite chunk stays undefined.
            sum += f32::exp(lse[base + t * m as usize] - top);
        }
        out[r] = top + f32::ln(sum);
    }
}

/// Query blocks per cube of [`chunk_masses`].
const MASS_QUERY_BLOCKS: usize = 4;

/// Chunk `CUBE_POS_Z`'s columns of `masses [bh, nqb, nkb]` (f32): cube `(qb / 4, bh, t)` of
/// `(width, 4)` units; unit `(j, y)` takes query block `qb = CUBE_POS_X * 4 + y` and, for `j <
/// per_chunk`, writes key block `t * per_chunk + j` (when below `nkb`): the sum over the query
/// block's `samples` rows `a` of `w_a * rows[bh, t, qb * samples + a, j]`, `w_a = exp(lse[bh, t,
/// qb * samples + a] - lse_row[bh, qb * samples + a])`. A row whose chunk keys are all masked
/// (`w_a = 0`) adds nothing, whatever its output. `rows [bh, chunks, nqb * samples, width]` in
/// the engine's dtype (`per_chunk <= width` columns used), `lse [bh, chunks, nqb * samples]`,
/// `lse_row [bh, nqb * samples]` (f32). Each unit computes its rows' weights itself, so every
/// load is issued before the first result is needed (no shared memory, no sync).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn chunk_masses<F: Float>(
    rows: &Array<F>,
    lse: &Array<f32>,
    lse_row: &Array<f32>,
    masses: &mut Array<f32>,
    nqb: u32,
    nkb: u32,
    per_chunk: u32,
    #[comptime] samples: usize,
    #[comptime] width: usize,
) {
    let qb = (CUBE_POS_X * CUBE_DIM_Y + UNIT_POS_Y) as usize;
    let bh = CUBE_POS_Y as usize;
    let t = CUBE_POS_Z as usize;
    let chunks = CUBE_COUNT_Z as usize;
    let j = UNIT_POS_X as usize;
    let m = nqb as usize * samples;
    let a0 = qb * samples;
    let chunk_row0 = (bh * chunks + t) * m + a0;
    let col = t * per_chunk as usize + j;
    if qb < nqb as usize && j < per_chunk as usize && col < nkb as usize {
        let mut sum = f32::new(0.0);
        #[unroll(samples <= 16)]
        for i in 0..samples {
            let wa = f32::exp(lse[chunk_row0 + i] - lse_row[bh * m + a0 + i]);
            let x = f32::cast_from(rows[(chunk_row0 + i) * width + j]);
            // NaN (no finite row) is not 0: it carries into the mass, as documented.
            if wa != f32::new(0.0) {
                sum += wa * x;
            }
        }
        masses[(bh * nqb as usize + qb) * nkb as usize + col] = sum;
    }
}

/// The shapes of the block masses' inputs: `bh` batch-heads, `chunks` chunks of `per_chunk`
/// key blocks (`nkb` in all), `nqb` query blocks of `samples` sampled rows; the engine's rows
/// are `width >= per_chunk` wide (its value dim).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkGeometry {
    pub bh: usize,
    pub chunks: usize,
    pub per_chunk: usize,
    pub width: usize,
    pub nqb: usize,
    pub samples: usize,
    pub nkb: usize,
}

impl ChunkGeometry {
    /// Sampled rows per batch-head.
    pub fn rows(&self) -> usize {
        self.nqb * self.samples
    }

    /// Whether [`launch_chunk_masses`] applies: the chunks cover the key blocks, the grid takes
    /// `(nqb, bh, chunks)` and every offset fits 32 bits.
    pub fn fits(&self) -> bool {
        let &Self { bh, chunks, per_chunk, width, nqb, samples, nkb } = self;
        let m = self.rows();
        (1..=65_535).contains(&nqb)
            && (1..=65_535).contains(&bh)
            && (1..=65_535).contains(&chunks)
            && (1..=1024 / MASS_QUERY_BLOCKS).contains(&width)
            && (1..=width).contains(&per_chunk)
            && samples >= 1
            && chunks * per_chunk >= nkb
            && (bh * m).div_ceil(LSE_UNITS) <= 65_535
            && bh * chunks * m * width < u32::MAX as usize
            && bh * nqb * nkb < u32::MAX as usize
    }
}

/// The masses `[bh, nqb, nkb]` (f32) from the engine's `rows [bh, chunks, nqb * samples,
/// width]` and `lse [bh, chunks, nqb * samples]` (f32), contiguous: [`row_lse`], then
/// [`chunk_masses`]. The caller checked [`ChunkGeometry::fits`].
pub fn launch_chunk_masses<R: Runtime, F: Float + CubeElement>(
    client: &ComputeClient<R>,
    rows: &Handle,
    lse: &Handle,
    g: &ChunkGeometry,
) -> Handle {
    let &ChunkGeometry { bh, chunks, per_chunk, width, nqb, samples, nkb } = g;
    let m = g.rows();
    let lse_row = client.empty(bh * m * size_of::<f32>());
    let masses = client.empty(bh * nqb * nkb * size_of::<f32>());
    row_lse::launch::<R>(
        client,
        CubeCount::Static((bh * m).div_ceil(LSE_UNITS) as u32, 1, 1),
        CubeDim::new_1d(LSE_UNITS as u32),
        array_arg(lse, bh * chunks * m),
        array_arg(&lse_row, bh * m),
        (bh * m) as u32,
        m as u32,
        chunks as u32,
    );
    chunk_masses::launch::<F, R>(
        client,
        CubeCount::Static(nqb.div_ceil(MASS_QUERY_BLOCKS) as u32, bh as u32, chunks as u32),
        CubeDim::new_2d(width as u32, MASS_QUERY_BLOCKS as u32),
        array_arg(rows, bh * chunks * m * width),
        array_arg(lse, bh * chunks * m),
        array_arg(&lse_row, bh * m),
        array_arg(&masses, bh * nqb * nkb),
        nqb as u32,
        nkb as u32,
        per_chunk as u32,
        samples,
        width,
    );
    masses
}
