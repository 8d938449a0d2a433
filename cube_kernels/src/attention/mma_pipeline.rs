//! The K/V pipeline of the MMA forward kernels: the visited key blocks run as one sequence of
//! [`MMA_TILE_K`]-key tiles (blocks are never empty), each copied by `cp.async` into one of two
//! shared stages, so step (e, tile) computes while step (e, tile + 1) or (e + 1, 0) loads; a
//! per-key bias (without partial blocks) is staged next to its tile a step ahead. Stage `i % 2`
//! is complete when its barrier's phase `(i / 2) % 2` is.

use cubecl::prelude::barrier::Barrier;
use cubecl::prelude::*;

use super::common::{MapConfig, SparseMap, Visits, input_row, key_block, mask_offset};
use super::mma::{MMA_TILE_K, PAD, copy_rows, tile_row};

/// Where the pipeline is: the entry and tile being loaded, that entry's key range and mask word
/// (partial maps), the steps taken, and this unit's bias value of the loaded tile until staged.
#[derive(CubeType)]
pub(super) struct KvPipeline {
    pub e: usize,
    pub tile: usize,
    pub k_start: usize,
    pub k_end: usize,
    pub mask_word: u32,
    pub step: usize,
    pub pending_bias: f32,
}

/// What one step computes on: its first key, its block's range and mask word, the stage that
/// holds it, and whether another step follows.
#[derive(CubeType)]
pub(super) struct KvStep {
    pub kt: usize,
    pub block_start: usize,
    pub block_end: usize,
    pub block_mask: u32,
    pub stage: usize,
    pub has_next: bool,
}

/// Copies keys and values `start..` (rows clamped before `end`) into stage `stage`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn copy_kv<F: Float>(
    k: &Array<F>,
    v: &Array<F>,
    sk: &mut SharedMemory<F>,
    sv: &mut SharedMemory<F>,
    stage: usize,
    map: &SparseMap,
    base: usize,
    start: usize,
    end: usize,
    #[comptime] head_dim: usize,
    #[comptime] value_dim: usize,
    #[comptime] threads: usize,
    #[comptime] gathered: bool,
) {
    let ks = head_dim + PAD;
    let vs = value_dim + PAD;
    copy_rows::<F>(
        k,
        sk,
        stage * (MMA_TILE_K * ks),
        map,
        base,
        start,
        end,
        MMA_TILE_K,
        head_dim,
        ks,
        threads,
        gathered,
    );
    copy_rows::<F>(
        v,
        sv,
        stage * (MMA_TILE_K * vs),
        map,
        base,
        start,
        end,
        MMA_TILE_K,
        value_dim,
        vs,
        threads,
        gathered,
    );
}

/// Starts the pipeline: the first tile's copies into stage 0 (and its bias, as bias / scale).
// `collapsible_if`: the outer `if` is a comptime branch (a code path).
#[cube]
#[allow(clippy::too_many_arguments, clippy::collapsible_if)]
pub(super) fn kv_start<F: Float>(
    k: &Array<F>,
    v: &Array<F>,
    bias: &Array<F>,
    map: &SparseMap,
    vis: &Visits,
    sk: &mut SharedMemory<F>,
    sv: &mut SharedMemory<F>,
    sbias: &mut SharedMemory<f32>,
    bar0: &Barrier,
    base: usize,
    bias_base: usize,
    max_count: u32,
    inv_scale: f32,
    bias_unit: bool,
    #[comptime] head_dim: usize,
    #[comptime] value_dim: usize,
    #[comptime] threads: usize,
    #[comptime] config: MapConfig,
    #[comptime] stage_bias: bool,
) -> KvPipeline {
    let mut p = KvPipeline {
        e: 0usize,
        tile: 0usize,
        k_start: 0usize,
        k_end: 0usize,
        mask_word: 0xFFFF_FFFFu32, // a full block (u32::MAX)
        step: 0usize,
        pending_bias: 0.0f32,
    };
    if vis.count > 0 {
        let kb = key_block(map, vis, 0usize, max_count, config);
        p.k_start = map.k_starts[kb] as usize;
        p.k_end = map.k_starts[kb + 1] as usize;
        if comptime![config.partial] {
            p.mask_word = mask_offset(map, vis, 0usize, max_count);
        }
        copy_kv::<F>(
            k,
            v,
            sk,
            sv,
            0usize,
            map,
            base,
            p.k_start,
            p.k_end,
            head_dim,
            value_dim,
            threads,
            config.gathered,
        );
        bar0.commit_copy_async();
        bar0.arrive();
        if comptime![stage_bias] {
            if bias_unit {
                let key = tile_row(p.k_start, p.k_end, UNIT_POS as usize);
                sbias[UNIT_POS as usize] =
                    f32::cast_from(bias[bias_base + input_row(map, key, config.gathered)]) * inv_scale;
            }
        }
    }
    p
}

/// One step: waits until the cube is done with the other stage, issues the next tile's copies
/// (and bias load) into it, and waits for this step's stage.
#[cube]
#[allow(clippy::too_many_arguments, clippy::collapsible_if)]
pub(super) fn kv_step<F: Float>(
    p: &mut KvPipeline,
    k: &Array<F>,
    v: &Array<F>,
    bias: &Array<F>,
    map: &SparseMap,
    vis: &Visits,
    sk: &mut SharedMemory<F>,
    sv: &mut SharedMemory<F>,
    bar0: &Barrier,
    bar1: &Barrier,
    base: usize,
    bias_base: usize,
    max_count: u32,
    bias_unit: bool,
    #[comptime] head_dim: usize,
    #[comptime] value_dim: usize,
    #[comptime] threads: usize,
    #[comptime] config: MapConfig,
    #[comptime] stage_bias: bool,
) -> KvStep {
    let kt = p.k_start + p.tile * MMA_TILE_K;
    let block_start = p.k_start;
    let block_end = p.k_end;
    let block_mask = p.mask_word;
    let stage = p.step % 2;
    // Everyone is done with the other stage (the previous step computed on it).
    sync_cube();
    // Next step, and its copies into the other stage.
    p.tile += 1;
    if p.k_start + p.tile * MMA_TILE_K >= p.k_end {
        p.e += 1;
        p.tile = 0;
        if p.e < vis.count {
            let kb = key_block(map, vis, p.e, max_count, config);
            p.k_start = map.k_starts[kb] as usize;
            p.k_end = map.k_starts[kb + 1] as usize;
            if comptime![config.partial] {
                p.mask_word = mask_offset(map, vis, p.e, max_count);
            }
        }
    }
    if p.e < vis.count {
        let next = p.k_start + p.tile * MMA_TILE_K;
        let other = 1 - stage;
        copy_kv::<F>(k, v, sk, sv, other, map, base, next, p.k_end, head_dim, value_dim, threads, config.gathered);
        if other == 0 {
            bar0.commit_copy_async();
            bar0.arrive();
        } else {
            bar1.commit_copy_async();
            bar1.arrive();
        }
        if comptime![stage_bias] {
            if bias_unit {
                let key = tile_row(next, p.k_end, UNIT_POS as usize);
                p.pending_bias = f32::cast_from(bias[bias_base + input_row(map, key, config.gathered)]);
            }
        }
    }
    let has_next = p.e < vis.count;
    let phase = ((p.step / 2) % 2) as u32;
    if stage == 0 {
        bar0.wait_parity(phase);
    } else {
        bar1.wait_parity(phase);
    }
    p.step += 1;
    KvStep { kt, block_start, block_end, block_mask, stage, has_next }
}

/// After a step's compute: the next tile's bias into the other stage (everyone finished reading
/// it last step, at this step's first barrier; the next step's barrier publishes it).
#[cube]
#[allow(clippy::collapsible_if)]
pub(super) fn kv_stage_bias(
    p: &KvPipeline,
    st: &KvStep,
    sbias: &mut SharedMemory<f32>,
    inv_scale: f32,
    bias_unit: bool,
    #[comptime] stage_bias: bool,
) {
    if comptime![stage_bias] {
        if st.has_next && bias_unit {
            sbias[(1 - st.stage) * MMA_TILE_K + UNIT_POS as usize] = p.pending_bias * inv_scale;
        }
    }
}
