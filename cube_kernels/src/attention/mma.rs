//! The register-level tensor-core forward (cubecl's manual MMA: PTX `mma.sync` m16n8k16, f16 or
//! bf16 inputs, f32 accumulation), FlashAttention-2 style. A cube is `warps` planes; each
//! plane owns 16 query rows, its Q fragments, its output accumulators and its softmax statistics
//! in registers. Per tile of [`MMA_TILE_K`] keys the cube loads K and V into shared memory once
//! for all its rows; `S = Q K^T`, the online softmax and `O += P V` then run in registers: the
//! score accumulators of two adjacent 8-key chunks are exactly the A operand of the next MMA
//! (the PTX fragment layouts line up), and a row's max and sum need only the four lanes that
//! hold it (two butterfly shuffles).
//!
//! Fragment layout of m16n8k16 with 16-bit inputs, lane `g * 4 + t`: A register `r` holds row
//! `g + 8 (r % 2)`, columns `2t + 8 (r / 2) + {0, 1}`; B register `r` holds column `g`, rows
//! `2t + 8r + {0, 1}`; accumulator vector `r` holds row `g + 8r`, columns `2t + {0, 1}`.

use cubecl::cmma::MmaDefinition;
use cubecl::prelude::*;

use super::common::{MapConfig, SparseMap, finish_score, input_row, key_block, load_rows, mask_offset, visits, weight};
use super::portable::NEG_BIG;

/// Keys per shared-memory tile; the Q tile is staged through the K buffer, 64 rows at a time.
pub const MMA_TILE_K: usize = 64;
/// Shared-memory row padding (elements): rows 16 bytes apart in the bank pattern, so the eight
/// rows a fragment load touches hit different banks.
const PAD: usize = 8;

type Pair<E> = Vector<E, Const<2>>;

/// Forward pass over a block map with register-level MMA. Same contract as
/// [`super::block_sparse_forward_portable`]; `head_dim` and `value_dim` are multiples of 16 (up
/// to 128). The cube is `(32, warps)` units (`warps` a multiple of 4), `16 * warps` query rows;
/// the grid `(nqb * chunks_per_block, bh)` with `chunks_per_block = ceil(largest query block /
/// (16 * warps))`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn block_sparse_forward_mma<F: Float>(
    q: &Array<F>,
    k: &Array<F>,
    v: &Array<F>,
    bias: &Array<F>,
    map: SparseMap,
    out: &mut Array<F>,
    lse: &mut Array<f32>,
    q_len: u32,
    k_len: u32,
    heads: u32,
    map_heads: u32,
    max_count: u32,
    chunks_per_block: u32,
    bias_b_stride: u32,
    bias_h_stride: u32,
    scale: f32,
    empty_lse: f32,
    #[comptime] head_dim: usize,
    #[comptime] value_dim: usize,
    #[comptime] has_bias: bool,
    #[comptime] config: MapConfig,
    #[comptime] warps: usize,
) {
    let nq = q_len as usize;
    let nk = k_len as usize;
    let bh = CUBE_POS_Y as usize;
    let h = bh % heads as usize;
    let b = bh / heads as usize;
    let qb = (CUBE_POS_X / chunks_per_block) as usize;
    let chunk = (CUBE_POS_X % chunks_per_block) as usize;
    let lane = UNIT_POS_X as usize;
    let warp = UNIT_POS_Y as usize;
    let g = lane / 4;
    let t = lane % 4;
    let q_start = map.q_starts[qb] as usize;
    let q_end = map.q_starts[qb + 1] as usize;
    let row0 = q_start + chunk * warps * 16;
    let bias_base = b * bias_b_stride as usize + h * bias_h_stride as usize;
    let ks = head_dim + PAD;
    let vs = value_dim + PAD;
    let threads = warps * 32;

    // This lane's two rows (g and g + 8 of the plane's 16), block-local for the in-block mask
    // (0 for rows past the block: their results are never written).
    let row_a = row0 + warp * 16 + g;
    let row_b = row_a + 8;
    let mut local_a = 0usize;
    if row_a < q_end {
        local_a = row_a - q_start;
    }
    let mut local_b = 0usize;
    if row_b < q_end {
        local_b = row_b - q_start;
    }

    let mut sk = SharedMemory::<F>::new(MMA_TILE_K * (head_dim + PAD));
    let mut sv = SharedMemory::<F>::new(MMA_TILE_K * (value_dim + PAD));
    let def = MmaDefinition::<F, F, f32>::new(16usize, 8usize, 16usize);

    // Q fragments, staged through the K buffer 64 rows (four planes) at a time.
    let mut qf = Array::<Pair<F>>::new(head_dim / 16 * 4);
    for pass in 0..warps / 4 {
        if pass > 0 {
            sync_cube();
        }
        let first = row0 + pass * MMA_TILE_K;
        load_rows::<F>(q, &mut sk, &map, bh * nq, first, q_end, MMA_TILE_K, head_dim, ks, threads, config.gathered);
        sync_cube();
        if warp / 4 == pass {
            #[unroll]
            for kk in 0..head_dim / 16 {
                #[unroll]
                for r in 0..4usize {
                    let at = ((warp % 4) * 16 + g + (r % 2) * 8) * ks + kk * 16 + t * 2 + (r / 2) * 8;
                    let mut x = Pair::<F>::empty();
                    x[0usize] = sk[at];
                    x[1usize] = sk[at + 1];
                    qf[kk * 4 + r] = x;
                }
            }
        }
    }

    let mut o = Array::<Pair<f32>>::new(value_dim / 8 * 2);
    #[unroll]
    for i in 0..value_dim / 8 * 2 {
        let mut z = Pair::<f32>::empty();
        z[0usize] = 0.0f32;
        z[1usize] = 0.0f32;
        o[i] = z;
    }
    let mut m_a = f32::new(NEG_BIG);
    let mut m_b = f32::new(NEG_BIG);
    // Per-lane partial row sums (the quad's partials are added at the end).
    let mut l_a = 0.0f32;
    let mut l_b = 0.0f32;
    let mut s = Array::<Pair<f32>>::new(MMA_TILE_K / 8 * 2);

    let vis = visits(&map, qb, h, map_heads, config);
    for e in 0..vis.count {
        let kb = key_block(&map, &vis, e, max_count, config);
        let k_start = map.k_starts[kb] as usize;
        let k_end = map.k_starts[kb + 1] as usize;
        let mut mask_word = 0xFFFF_FFFFu32; // a full block (u32::MAX)
        if comptime![config.partial] {
            mask_word = mask_offset(&map, &vis, e, max_count);
        }
        let n_tiles = (k_end - k_start).div_ceil(MMA_TILE_K);
        for tile in 0..n_tiles {
            let kt = k_start + tile * MMA_TILE_K;
            // Everyone is done with the previous tile (and, the first time, with the Q staging).
            sync_cube();
            load_rows::<F>(k, &mut sk, &map, bh * nk, kt, k_end, MMA_TILE_K, head_dim, ks, threads, config.gathered);
            load_rows::<F>(v, &mut sv, &map, bh * nk, kt, k_end, MMA_TILE_K, value_dim, vs, threads, config.gathered);
            sync_cube();

            // S = Q K^T, 8 keys per MMA column chunk.
            #[unroll]
            for j in 0..MMA_TILE_K / 8 {
                let mut c = Array::<Pair<f32>>::new(2usize);
                let mut z = Pair::<f32>::empty();
                z[0usize] = 0.0f32;
                z[1usize] = 0.0f32;
                c[0usize] = z;
                c[1usize] = z;
                #[unroll]
                for kk in 0..head_dim / 16 {
                    let mut a = Array::<Pair<F>>::new(4usize);
                    #[unroll]
                    for r in 0..4usize {
                        a[r] = qf[kk * 4 + r];
                    }
                    let mut bf = Array::<Pair<F>>::new(2usize);
                    #[unroll]
                    for r in 0..2usize {
                        let at = (j * 8 + g) * ks + kk * 16 + t * 2 + r * 8;
                        let mut x = Pair::<F>::empty();
                        x[0usize] = sk[at];
                        x[1usize] = sk[at + 1];
                        bf[r] = x;
                    }
                    let d = def.execute(&a, &bf, &c);
                    c[0usize] = d[0usize];
                    c[1usize] = d[1usize];
                }
                s[j * 2] = c[0usize];
                s[j * 2 + 1] = c[1usize];
            }

            // Scale, bias, masks; the tile's row maxima over the quad.
            let mut tmax_a = f32::new(NEG_BIG);
            let mut tmax_b = f32::new(NEG_BIG);
            #[unroll]
            for j in 0..MMA_TILE_K / 8 {
                #[unroll]
                for r in 0..2usize {
                    let mut x = s[j * 2 + r];
                    let mut local = local_a;
                    if comptime![r == 1] {
                        local = local_b;
                    }
                    #[unroll]
                    for el in 0..2usize {
                        let key = kt + j * 8 + t * 2 + el;
                        let mut val = f32::new(NEG_BIG);
                        if key < k_end {
                            val = finish_score::<F>(
                                x[el] * scale,
                                bias,
                                &map,
                                bias_base,
                                key,
                                mask_word,
                                local,
                                key - k_start,
                                k_end - k_start,
                                has_bias,
                                config,
                            );
                        }
                        x[el] = val;
                        if comptime![r == 0] {
                            tmax_a = f32::max(tmax_a, val);
                        } else {
                            tmax_b = f32::max(tmax_b, val);
                        }
                    }
                    s[j * 2 + r] = x;
                }
            }
            tmax_a = f32::max(tmax_a, plane_shuffle_xor(tmax_a, 1u32));
            tmax_a = f32::max(tmax_a, plane_shuffle_xor(tmax_a, 2u32));
            tmax_b = f32::max(tmax_b, plane_shuffle_xor(tmax_b, 1u32));
            tmax_b = f32::max(tmax_b, plane_shuffle_xor(tmax_b, 2u32));
            let new_a = f32::max(m_a, tmax_a);
            let new_b = f32::max(m_b, tmax_b);
            let corr_a = f32::exp(m_a - new_a);
            let corr_b = f32::exp(m_b - new_b);
            m_a = new_a;
            m_b = new_b;
            l_a *= corr_a;
            l_b *= corr_b;
            #[unroll]
            for jn in 0..value_dim / 8 {
                let mut xa = o[jn * 2];
                xa[0usize] *= corr_a;
                xa[1usize] *= corr_a;
                o[jn * 2] = xa;
                let mut xb = o[jn * 2 + 1];
                xb[0usize] *= corr_b;
                xb[1usize] *= corr_b;
                o[jn * 2 + 1] = xb;
            }

            // P = exp(S - m), in place; row sums.
            #[unroll]
            for j in 0..MMA_TILE_K / 8 {
                let mut xa = s[j * 2];
                xa[0usize] = weight(xa[0usize], m_a);
                xa[1usize] = weight(xa[1usize], m_a);
                l_a += xa[0usize] + xa[1usize];
                s[j * 2] = xa;
                let mut xb = s[j * 2 + 1];
                xb[0usize] = weight(xb[0usize], m_b);
                xb[1usize] = weight(xb[1usize], m_b);
                l_b += xb[0usize] + xb[1usize];
                s[j * 2 + 1] = xb;
            }

            // O += P V: the P chunks of keys 16kk..16kk+16 are the A operand as they lie.
            #[unroll]
            for kk in 0..MMA_TILE_K / 16 {
                let mut a = Array::<Pair<F>>::new(4usize);
                a[0usize] = Pair::<F>::cast_from(s[kk * 4]);
                a[1usize] = Pair::<F>::cast_from(s[kk * 4 + 1]);
                a[2usize] = Pair::<F>::cast_from(s[kk * 4 + 2]);
                a[3usize] = Pair::<F>::cast_from(s[kk * 4 + 3]);
                #[unroll]
                for jn in 0..value_dim / 8 {
                    let mut bf = Array::<Pair<F>>::new(2usize);
                    #[unroll]
                    for r in 0..2usize {
                        let at = (kk * 16 + t * 2 + r * 8) * vs + jn * 8 + g;
                        let mut x = Pair::<F>::empty();
                        x[0usize] = sv[at];
                        x[1usize] = sv[at + vs];
                        bf[r] = x;
                    }
                    let mut c = Array::<Pair<f32>>::new(2usize);
                    c[0usize] = o[jn * 2];
                    c[1usize] = o[jn * 2 + 1];
                    let d = def.execute(&a, &bf, &c);
                    o[jn * 2] = d[0usize];
                    o[jn * 2 + 1] = d[1usize];
                }
            }
        }
    }

    // Row sums over the quad, then the output rows this lane holds.
    l_a += plane_shuffle_xor(l_a, 1u32);
    l_a += plane_shuffle_xor(l_a, 2u32);
    l_b += plane_shuffle_xor(l_b, 1u32);
    l_b += plane_shuffle_xor(l_b, 2u32);
    #[unroll]
    for r in 0..2usize {
        let mut row = row_a;
        let mut l = l_a;
        let mut m = m_a;
        if comptime![r == 1] {
            row = row_b;
            l = l_b;
            m = m_b;
        }
        if row < q_end {
            let pos = bh * nq + input_row(&map, row, config.gathered);
            let mut inv = 0.0f32;
            if l > 0.0 {
                inv = 1.0f32 / l;
            }
            #[unroll]
            for jn in 0..value_dim / 8 {
                let x = o[jn * 2 + r];
                out[pos * value_dim + jn * 8 + t * 2] = F::cast_from(x[0usize] * inv);
                out[pos * value_dim + jn * 8 + t * 2 + 1] = F::cast_from(x[1usize] * inv);
            }
            if t == 0 {
                let mut row_lse = empty_lse;
                if l > 0.0 {
                    row_lse = m + f32::ln(l);
                }
                lse[pos] = row_lse;
            }
        }
    }
}
