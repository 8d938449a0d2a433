//! The portable forward kernel on wgpu (lavapipe on a CPU-only machine) against brute-force f64
//! attention over the same block map. Tolerance: the kernel's error against f64 may be at most a
//! small multiple of a plain f32 implementation's error (never a magic epsilon).

use cubecl::prelude::*;
use cubecl::wgpu::{WgpuDevice, WgpuRuntime};
use dit_attention_kernels::attention::{BlockMapArrays, ForwardProblem, KeyBlocks, forward_portable};
use proptest::prelude::*;

#[derive(Debug)]
struct Case {
    batch: usize,
    heads: usize,
    n: usize,
    d: usize,
    dv: usize,
    starts: Vec<u32>,
    map_heads: usize,
    rows: Vec<Vec<u32>>,
    bias: bool,
    seed: u64,
}

fn case() -> impl Strategy<Value = Case> {
    (
        (1usize..=2, 1usize..=3, 1usize..=150),
        (prop::sample::select(vec![4usize, 16, 64, 128]), prop::sample::select(vec![3usize, 0])),
        (any::<bool>(), any::<bool>(), any::<u64>()),
    )
        .prop_flat_map(|(shape, dims, flags)| {
            // Ragged blocks of 1..=80 tokens (some longer than a cube's 64 rows).
            let cuts = prop::collection::vec(1usize..=80, 1..=shape.2.min(12));
            (Just((shape, dims, flags)), cuts)
        })
        .prop_map(|(((batch, heads, n), (d, dv), (per_head, bias, seed)), cuts)| {
            // Value dim: the head dim, or a small odd one (0 stands for "same as d").
            let dv = if dv == 0 { d } else { dv };
            let mut starts = vec![0u32];
            let mut pos = 0;
            for c in cuts {
                if pos >= n {
                    break;
                }
                pos = (pos + c).min(n);
                starts.push(pos as u32);
            }
            if pos < n {
                starts.push(n as u32);
            }
            let nb = starts.len() - 1;
            let map_heads = if per_head { heads } else { 1 };
            let mut rng = SplitMix(seed);
            // Random rows: each key block kept with probability 1/2 (empty rows happen).
            let rows = (0..map_heads * nb)
                .map(|_| (0..nb as u32).filter(|_| rng.next().is_multiple_of(2)).collect())
                .collect();
            Case { batch, heads, n, d, dv, starts, map_heads, rows, bias, seed }
        })
}

struct SplitMix(u64);
impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn normal(&mut self) -> f64 {
        let u = ((self.next() >> 11) as f64 / (1u64 << 53) as f64).max(1e-300);
        let v = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// Attention over the block map, in f64 (`wide`, the oracle) or in plain f32 (the low-precision
/// yardstick). Returns (output, lse).
fn reference(c: &Case, q: &[f32], k: &[f32], v: &[f32], bias: &[f32], scale: f32, wide: bool) -> (Vec<f64>, Vec<f64>) {
    let (n, d, dv) = (c.n, c.d, c.dv);
    let nb = c.starts.len() - 1;
    let mut out = vec![0.0; c.batch * c.heads * n * dv];
    let mut lse = vec![f64::NEG_INFINITY; c.batch * c.heads * n];
    let block_of = |p: usize| c.starts.partition_point(|&s| s as usize <= p) - 1;
    for bh in 0..c.batch * c.heads {
        let h = bh % c.heads;
        for i in 0..n {
            let row = &c.rows[if c.map_heads == 1 { 0 } else { h } * nb + block_of(i)];
            let keys: Vec<usize> =
                row.iter().flat_map(|&kb| c.starts[kb as usize] as usize..c.starts[kb as usize + 1] as usize).collect();
            if keys.is_empty() {
                continue;
            }
            let s: Vec<f64> = keys
                .iter()
                .map(|&j| {
                    let b = if bias.is_empty() { 0.0 } else { bias[bh * n + j] };
                    if wide {
                        (0..d).map(|x| q[(bh * n + i) * d + x] as f64 * k[(bh * n + j) * d + x] as f64).sum::<f64>()
                            * scale as f64
                            + b as f64
                    } else {
                        ((0..d).map(|x| q[(bh * n + i) * d + x] * k[(bh * n + j) * d + x]).sum::<f32>() * scale + b)
                            as f64
                    }
                })
                .collect();
            let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            if wide {
                let p: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = p.iter().sum();
                lse[bh * n + i] = m + z.ln();
                for x in 0..dv {
                    out[(bh * n + i) * dv + x] =
                        keys.iter().zip(&p).map(|(&j, pj)| pj * v[(bh * n + j) * dv + x] as f64).sum::<f64>() / z;
                }
            } else {
                let p: Vec<f32> = s.iter().map(|x| ((*x - m) as f32).exp()).collect();
                let z: f32 = p.iter().sum();
                lse[bh * n + i] = (m as f32 + z.ln()) as f64;
                for x in 0..dv {
                    out[(bh * n + i) * dv + x] =
                        (keys.iter().zip(&p).map(|(&j, pj)| pj * v[(bh * n + j) * dv + x]).sum::<f32>() / z) as f64;
                }
            }
        }
    }
    (out, lse)
}

fn max_abs_err(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).filter(|(x, y)| x.is_finite() || y.is_finite()).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..Default::default() })]

    #[test]
    fn portable_kernel_equals_the_block_map_reference(c in case()) {
        let client = WgpuRuntime::client(&WgpuDevice::default());
        let mut rng = SplitMix(c.seed);
        let bh = c.batch * c.heads;
        let mut randn = |len: usize| (0..len).map(|_| rng.normal() as f32).collect::<Vec<f32>>();
        let q = randn(bh * c.n * c.d);
        let k = randn(bh * c.n * c.d);
        let v = randn(bh * c.n * c.dv);
        let bias = if c.bias { randn(bh * c.n) } else { Vec::new() };
        let scale = 1.0 / (c.d as f32).sqrt();

        let max_count = c.rows.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let counts: Vec<u32> = c.rows.iter().map(|r| r.len() as u32).collect();
        let mut indices = vec![0u32; c.rows.len() * max_count];
        for (r, row) in c.rows.iter().enumerate() {
            indices[r * max_count..r * max_count + row.len()].copy_from_slice(row);
        }
        let blocks = KeyBlocks::Arrays { counts: &counts, indices: &indices, max_count, masks: None };
        let map = BlockMapArrays { q_starts: &c.starts, k_starts: &c.starts, blocks, map_heads: c.map_heads, gather: None };
        let problem = ForwardProblem { batch: c.batch, heads: c.heads, q_len: c.n, k_len: c.n, head_dim: c.d, value_dim: c.dv, scale };
        let h = |x: &[f32]| client.create_from_slice(f32::as_bytes(x));
        let bias_arg = c.bias.then(|| (h(&bias), c.heads * c.n, c.n));
        let result = forward_portable::<WgpuRuntime, f32>(&client, h(&q), h(&k), h(&v), bias_arg, map, problem);
        let out: Vec<f64> = f32::from_bytes(&client.read_one_unchecked(result.out)).iter().map(|&x| x as f64).collect();
        let lse: Vec<f64> = f32::from_bytes(&client.read_one_unchecked(result.lse)).iter().map(|&x| x as f64).collect();

        let (want_o, want_l) = reference(&c, &q, &k, &v, &bias, scale, true);
        let (low_o, low_l) = reference(&c, &q, &k, &v, &bias, scale, false);
        prop_assert!(out.iter().all(|x| x.is_finite()), "non-finite output");
        for (i, l) in want_l.iter().enumerate() {
            prop_assert_eq!(l.is_finite(), lse[i].is_finite(), "row {} lse {} vs {}", i, lse[i], l);
            if !l.is_finite() {
                prop_assert_eq!(lse[i], f64::NEG_INFINITY);
                // A row with no key: exactly zero output.
                prop_assert!(out[i * c.dv..(i + 1) * c.dv].iter().all(|x| *x == 0.0));
            }
        }
        let bound_o = 8.0 * max_abs_err(&low_o, &want_o).max(f32::EPSILON as f64);
        let bound_l = 8.0 * max_abs_err(&low_l, &want_l).max(16.0 * f32::EPSILON as f64);
        let (eo, el) = (max_abs_err(&out, &want_o), max_abs_err(&lse, &want_l));
        prop_assert!(eo <= bound_o, "output error {} > bound {}", eo, bound_o);
        prop_assert!(el <= bound_l, "lse error {} > bound {}", el, bound_l);
    }
}
