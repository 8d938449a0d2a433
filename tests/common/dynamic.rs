//! Dynamic block-sparse attention (spec section 8) written straight from the spec in plain f64
//! Rust: blocks cut per segment, block masses from the sampled tokens' softmax, the selection
//! rule, and attention over the kept blocks. Independent of the crate's block layout, selection
//! and kernels (only the sampled positions are taken from the module, and checked).
#![allow(dead_code)]

use burn::tensor::{Tensor, TensorData};
use dit_attention::dynamic::{DynamicSparseAttentionConfig, ThresholdSchedule, Thresholds};
use dit_attention::{Canvas, SparseAttentionBackend, TextPlacement, TextSpec};
use proptest::prelude::*;

use super::merge::fopts;
use super::{SeedRng, brute_attention};

/// One random dynamic-attention problem.
#[derive(Debug, Clone)]
pub struct DynamicCase {
    pub canvas: Canvas,
    pub text: TextSpec,
    pub block: usize,
    pub samples: usize,
    pub sinks: usize,
    pub thresholds: Thresholds,
    pub seed: u64,
    pub batch: usize,
    pub heads: usize,
    pub dims: (usize, usize),
    /// A random per-key bias `[b or 1, h or 1, n]`: `Some([per batch, per head])`.
    pub bias: Option<[bool; 2]>,
    /// Scale of q and k (larger: peakier attention, sparser selections).
    pub sharpness: f64,
    pub data_seed: u64,
}

pub fn dynamic_case() -> impl Strategy<Value = DynamicCase> {
    let text = prop_oneof![
        Just(TextSpec::none()),
        (1usize..=6).prop_map(TextSpec::before),
        (1usize..=6).prop_map(TextSpec::after)
    ];
    let thresholds = (0.2f64..1.0, 0.0f64..=1.0, 0.0f64..=1.0).prop_map(|(tau, a, b)| Thresholds {
        tau,
        min_ratio: a.min(b) * 0.6,
        max_ratio: a.max(b).max(0.05),
    });
    let shape = ((1usize..=4, 1usize..=4, 1usize..=5), text, 2usize..=8);
    let selection = (thresholds, 0usize..=2, any::<u64>());
    let data = (1usize..=2, 1usize..=3, any::<Option<[bool; 2]>>(), prop_oneof![Just(1.0), Just(3.0)], any::<u64>());
    (shape, selection, data, 2usize..=8, 2usize..=6)
        .prop_flat_map(|(shape, selection, data, d, dv)| {
            let block = shape.2;
            (Just((shape, selection, data, d, dv)), 1..=block)
        })
        .prop_map(|((((t, h, w), text, block), (thresholds, sinks, seed), data, d, dv), samples)| {
            let (batch, heads, bias, sharpness, data_seed) = data;
            DynamicCase {
                canvas: Canvas::new(t, h, w).unwrap(),
                text,
                block,
                samples,
                sinks,
                thresholds,
                seed,
                batch,
                heads,
                dims: (d, dv),
                bias,
                sharpness,
                data_seed,
            }
        })
}

/// Random q, k, v (and bias) of a case, with their values (the bias expanded to `[b, h, n]`).
pub struct DynamicInputs<B: SparseAttentionBackend> {
    pub q: Tensor<B, 4>,
    pub k: Tensor<B, 4>,
    pub v: Tensor<B, 4>,
    pub bias: Option<Tensor<B, 3>>,
    pub values: [Vec<f64>; 4],
}

impl DynamicCase {
    pub fn n(&self) -> usize {
        self.canvas.len() + self.text.len
    }

    pub fn config(&self) -> DynamicSparseAttentionConfig {
        DynamicSparseAttentionConfig::new(self.canvas.dims())
            .with_text(self.text)
            .with_block(self.block)
            .with_samples(self.samples)
            .with_sink_blocks(self.sinks)
            .with_schedule(ThresholdSchedule::Constant(self.thresholds))
            .with_seed(self.seed)
    }

    pub fn inputs<B: SparseAttentionBackend>(&self, device: &B::Device) -> DynamicInputs<B> {
        let mut rng = SeedRng::new(self.data_seed);
        let (d, dv) = self.dims;
        let (b, h, n) = (self.batch, self.heads, self.n());
        let mut make = |c: usize, gain: f64| {
            let v: Vec<f64> = rng.normals(b * h * n * c).into_iter().map(|x| x * gain).collect();
            (Tensor::<B, 4>::from_data(TensorData::new(v.clone(), [b, h, n, c]), fopts::<B>(device)), v)
        };
        let (q, qv) = make(d, self.sharpness);
        let (k, kv) = make(d, self.sharpness);
        let (v, vv) = make(dv, 1.0);
        // The bias in its broadcast shape; the brute force gets it expanded to `[b, h, n]`.
        let (bias, bv) = super::random_bias::<B>(&mut rng, [b, h, n], self.bias, device);
        DynamicInputs { q, k, v, bias, values: [qv, kv, vv, bv] }
    }

    /// Block boundaries: text and video each cut into runs of `block` tokens, in sequence order.
    pub fn block_ranges(&self) -> Vec<std::ops::Range<usize>> {
        let cut = |start: usize, len: usize| {
            (0..len).step_by(self.block).map(move |s| start + s..start + (s + self.block).min(len)).collect::<Vec<_>>()
        };
        let (video, text) = (self.canvas.len(), self.text.len);
        match self.text.placement {
            TextPlacement::Before => [cut(0, text), cut(text, video)].concat(),
            TextPlacement::After => [cut(0, video), cut(video, text)].concat(),
        }
    }

    /// `k_min`, `k_max` for `nkb` key blocks: `ceil(ratio * nkb)`, at least 1, `k_max >= k_min`.
    pub fn budget(&self, nkb: usize) -> (usize, usize) {
        let count = |r: f64| (((r * nkb as f64) - 1e-9).ceil() as usize).clamp(1, nkb);
        let k_min = count(self.thresholds.min_ratio);
        (k_min, count(self.thresholds.max_ratio).max(k_min))
    }
}

/// The contract's rank key of key block `j` among `masses` (non-negative, not NaN): the mass's
/// bits with the low `1 + log2(P)` cleared (`P` the block count rounded up to a power of two),
/// then `mask - j` in them, so the lower index wins where the rounded masses agree.
pub fn rank_key(masses: &[f32], j: usize) -> u32 {
    let p = masses.len().next_power_of_two();
    let low_bits = 1 + p.trailing_zeros();
    let mask = (1u32 << low_bits) - 1;
    ((masses[j].to_bits() >> low_bits) << low_bits) | (mask - j as u32)
}

/// The contract's f32 sum of a row's values (zeros outside a set): 32 lanes, lane `l` adding
/// values `l * c ..= l * c + c - 1` (`c = ceil(n / 32)`) in order from 0, then butterfly rounds
/// pairing lanes `l` and `l ^ w` for `w` = 16, 8, 4, 2, 1.
pub fn lane_tree_sum(values: &[f32]) -> f32 {
    let c = values.len().div_ceil(32).max(1);
    let mut lanes: Vec<f32> = (0..32)
        .map(|l| {
            let mut s = 0.0f32;
            for i in 0..c {
                if let Some(&x) = values.get(l * c + i) {
                    s += x;
                }
            }
            s
        })
        .collect();
    let mut w = 16;
    while w > 0 {
        lanes = (0..32).map(|l| lanes[l] + lanes[l ^ w]).collect();
        w /= 2;
    }
    lanes[0]
}

/// The spec's selection on one row of masses (f32, ranked by [`rank_key`], set masses summed as
/// the contract fixes by [`lane_tree_sum`]).
pub fn brute_select(masses: &[f32], tau: f32, k_min: usize, k_max: usize, sinks: usize, qb: usize) -> Vec<usize> {
    let n = masses.len();
    let masses: Vec<f32> = masses.iter().map(|&m| if m > 0.0 { m } else { 0.0 }).collect();
    let key = |j: usize| rank_key(&masses, j);
    let mut ranked: Vec<usize> = (0..n).collect();
    // Insertion sort by rank key, descending: independent of the crate's sort.
    for i in 1..n {
        let mut j = i;
        while j > 0 && key(ranked[j]) > key(ranked[j - 1]) {
            ranked.swap(j - 1, j);
            j -= 1;
        }
    }
    let top = |c: usize| -> f32 {
        let member: Vec<f32> = (0..n).map(|j| if ranked[..c].contains(&j) { masses[j] } else { 0.0 }).collect();
        lane_tree_sum(&member)
    };
    let target = tau * lane_tree_sum(&masses);
    // k: the fewest top ranks reaching the target (every rank where none does), at least 1.
    let k = (0..=n).find(|&c| top(c) >= target).unwrap_or(n).clamp(1, n);
    let k = if qb < sinks { n } else { k.max(k_min).min(k_max) };
    (0..n).filter(|&j| ranked[..k].contains(&j) || j < sinks).collect()
}

/// The brute force of one call: masses `[bh][qb][kb]`, kept blocks per (bh, qb), output and LSE.
pub struct BruteDynamic {
    pub masses: Vec<f64>,
    pub kept: Vec<Vec<usize>>,
    pub output: Vec<f64>,
    pub lse: Vec<f64>,
}

/// Masses per (bh, qb, kb) from the sampled `positions` (`samples` per block, block order).
pub fn brute_masses(case: &DynamicCase, values: &[Vec<f64>; 4], positions: &[usize], scale: f64) -> Vec<f64> {
    let (bh_n, n, d, s) = (case.batch * case.heads, case.n(), case.dims.0, case.samples);
    let nb = positions.len() / s;
    let mut masses = vec![0.0; bh_n * nb * nb];
    for bh in 0..bh_n {
        let dot = |i: usize, j: usize| -> f64 {
            let q = &values[0][(bh * n + i) * d..(bh * n + i + 1) * d];
            let k = &values[1][(bh * n + j) * d..(bh * n + j + 1) * d];
            q.iter().zip(k).map(|(a, b)| a * b).sum::<f64>() * scale
                + if values[3].is_empty() { 0.0 } else { values[3][bh * n + j] }
        };
        for qb in 0..nb {
            for a in 0..s {
                let i = positions[qb * s + a];
                let sc: Vec<f64> = positions.iter().map(|&j| dot(i, j)).collect();
                let m = sc.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = sc.iter().map(|x| (x - m).exp()).sum();
                for (c, x) in sc.iter().enumerate() {
                    masses[(bh * nb + qb) * nb + c / s] += (x - m).exp() / z;
                }
            }
        }
    }
    masses
}

/// Output and LSE `[b, h, n, dv]`, `[b, h, n]` of attention over `kept[bh * nb + qb]`.
pub fn brute_kept_attention(
    case: &DynamicCase,
    values: &[Vec<f64>; 4],
    kept: &[Vec<usize>],
    scale: f64,
) -> (Vec<f64>, Vec<f64>) {
    let (bh_n, n, (d, dv)) = (case.batch * case.heads, case.n(), case.dims);
    let ranges = case.block_ranges();
    let nb = ranges.len();
    let block_of: Vec<usize> = (0..n).map(|p| ranges.iter().position(|r| r.contains(&p)).unwrap()).collect();
    let (mut out, mut lse) = (vec![], vec![]);
    for bh in 0..bh_n {
        let mut keeps = vec![false; nb * nb];
        for qb in 0..nb {
            for &kb in &kept[bh * nb + qb] {
                keeps[qb * nb + kb] = true;
            }
        }
        let part = |v: &Vec<f64>, c: usize| v[bh * n * c..(bh + 1) * n * c].to_vec();
        let bias = if values[3].is_empty() { vec![] } else { part(&values[3], 1) };
        let (o, l) = brute_attention(
            &part(&values[0], d),
            &part(&values[1], d),
            &part(&values[2], dv),
            &bias,
            [1, 1, n, n, d, dv],
            scale,
            |_, i, j| keeps[block_of[i] * nb + block_of[j]],
        );
        out.extend(o);
        lse.extend(l);
    }
    (out, lse)
}

pub fn brute_dynamic(case: &DynamicCase, values: &[Vec<f64>; 4], positions: &[usize], scale: f64) -> BruteDynamic {
    let masses = brute_masses(case, values, positions, scale);
    let nb = case.block_ranges().len();
    let (k_min, k_max) = case.budget(nb);
    let kept: Vec<Vec<usize>> = masses
        .chunks(nb)
        .enumerate()
        .map(|(r, row)| {
            let row: Vec<f32> = row.iter().map(|&m| m as f32).collect();
            brute_select(&row, case.thresholds.tau as f32, k_min, k_max, case.sinks, r % nb)
        })
        .collect();
    let (output, lse) = brute_kept_attention(case, values, &kept, scale);
    BruteDynamic { masses, kept, output, lse }
}

/// The kept blocks per row from a selection's counts and padded indices.
pub fn kept_rows(counts: &[usize], indices: &[usize], nkb: usize) -> Vec<Vec<usize>> {
    counts.iter().enumerate().map(|(r, &c)| indices[r * nkb..r * nkb + c].to_vec()).collect()
}

/// Dynamic attention on a kernel backend (fused and unfused, `Autodiff`, half precision where
/// given) against the brute force: masses, the selection replayed on the kernel's own masses,
/// and the output over the blocks it kept. `$half`: the half dtypes the device runs; `$mass_tol`:
/// the masses' error in f32 (the attention engine over the sampled tokens, bf16 P V on CUDA).
#[macro_export]
macro_rules! gpu_dynamic_suite {
    ($fused:ty, $cube:ty, $device:expr, $half:expr, $mass_tol:expr) => {
        mod dynamic_kernels {
            #[allow(unused_imports)]
            use super::*;
            use burn::backend::Autodiff;
            use burn::tensor::{DType, Tensor, TensorData};
            use dit_attention::dynamic::{DynamicSparseAttention, ThresholdSchedule, Thresholds, select_blocks};
            use dit_attention::{BlockKind, BlockMap, Canvas, SparseAttentionBackend, TextSpec};
            #[allow(unused_imports)]
            use proptest::prelude::*;

            use super::common::dynamic::{DynamicCase, brute_kept_attention, brute_masses, dynamic_case, kept_rows};
            use super::common::merge::{fopts, ints};
            use super::common::{B64, cases, rel_err, values};

            type Fused = $fused;
            type Cube = $cube;

            fn gpu_of<B: SparseAttentionBackend>() -> B::Device {
                // Both backends of the suite share the runtime's default device.
                Default::default()
            }

            fn cpu() -> burn::backend::ndarray::NdArrayDevice {
                Default::default()
            }

            /// The module on `B` (inputs cast to `dtype`): every mass written and close to the
            /// brute force's, the kept blocks exactly the rule replayed on those masses, the
            /// padding past each count, and the output of attention over the kept blocks. Returns
            /// the kept blocks per row.
            fn check<B: SparseAttentionBackend>(
                case: &DynamicCase,
                dtype: Option<DType>,
                tol: f64,
            ) -> Result<Vec<Vec<usize>>, TestCaseError> {
                let module = case.config().init().unwrap();
                let x = case.inputs::<B>(&gpu_of::<B>());
                let cast = |t: Tensor<B, 4>| match dtype {
                    Some(d) => t.cast(d),
                    None => t,
                };
                let positions = module.sampled_positions(None);
                let scale = 1.0 / (case.dims.0 as f64).sqrt();
                let out = module.forward_at(cast(x.q), cast(x.k), cast(x.v), x.bias, None).unwrap();
                let sel = out.selection.clone().expect("a sparse call");
                let nb = module.blocks().len();
                let masses: Vec<f32> = sel.masses.into_data().iter::<f32>().collect();
                prop_assert!(masses.iter().all(|m| m.is_finite() && *m >= 0.0), "every mass written");
                let want = brute_masses(case, &x.values, &positions, scale);
                let got: Vec<f64> = masses.iter().map(|&m| m as f64).collect();
                let mass_tol = if dtype.is_some() { 5e-2 } else { $mass_tol };
                prop_assert!(rel_err(&got, &want) < mass_tol, "masses {}", rel_err(&got, &want));
                let (counts, indices) = (ints(sel.counts), ints(sel.indices));
                let kept = kept_rows(&counts, &indices, nb);
                let t = module.config().schedule.at(0);
                let budget = module.budget(t);
                for (r, row) in masses.chunks(nb).enumerate() {
                    let replay: Vec<usize> =
                        select_blocks(row, t.tau as f32, budget, r % nb).iter().map(|&j| j as usize).collect();
                    prop_assert_eq!(&kept[r], &replay, "row {}", r);
                    prop_assert!(indices[r * nb + counts[r]..(r + 1) * nb].iter().all(|&j| j == nb), "padding");
                }
                let (want, want_lse) = brute_kept_attention(case, &x.values, &kept, scale);
                let (got, got_lse) = (values(out.output), values(out.lse));
                prop_assert!(rel_err(&got, &want) < tol, "output error {}", rel_err(&got, &want));
                prop_assert!(rel_err(&got_lse, &want_lse) < tol, "lse error {}", rel_err(&got_lse, &want_lse));
                Ok(kept)
            }

            /// Random cases with one block cut and head size: every new shape compiles kernels
            /// (slow on lavapipe).
            fn gpu_case() -> impl Strategy<Value = DynamicCase> {
                dynamic_case().prop_map(|mut c| {
                    c.dims = (8, 4);
                    c.block = 4;
                    c.samples = 2;
                    c
                })
            }

            proptest! {
                #![proptest_config(cases(3))]

                #[test]
                fn fused_dynamic_attention_matches_the_brute_force(case in gpu_case()) {
                    check::<Fused>(&case, None, 2e-4)?;
                }

                #[test]
                fn unfused_dynamic_attention_matches_the_brute_force(case in gpu_case()) {
                    check::<Cube>(&case, None, 2e-4)?;
                }
            }

            /// A selection passed back in is checked on the device: a good one runs, one with
            /// blocks out of range, repeated blocks or too many blocks is refused.
            #[test]
            fn foreign_selections_are_checked() {
                use proptest::strategy::ValueTree;
                let mut runner = proptest::test_runner::TestRunner::deterministic();
                let case = gpu_case().new_tree(&mut runner).unwrap().current();
                let module = case.config().init().unwrap();
                let x = case.inputs::<Fused>(&gpu_of::<Fused>());
                let (_, sel) = module.select(&x.q, &x.k, &x.v, x.bias.as_ref(), None).unwrap();
                let sel = sel.expect("a sparse call");
                let run = |s: &dit_attention::glue::BlockSelection<Fused>| {
                    module.forward_selected(x.q.clone(), x.k.clone(), x.v.clone(), x.bias.clone(), s)
                };
                assert!(run(&sel).is_ok());
                let nkb = sel.indices.dims()[1] as i64;
                let bad = [
                    dit_attention::glue::BlockSelection { indices: sel.indices.clone().add_scalar(nkb), ..sel.clone() },
                    dit_attention::glue::BlockSelection {
                        counts: sel.counts.clone().clamp_min(2),
                        indices: sel.indices.clone().zeros_like(),
                        ..sel.clone()
                    },
                    dit_attention::glue::BlockSelection { counts: sel.counts.clone().add_scalar(nkb), ..sel.clone() },
                ];
                for (i, s) in bad.iter().enumerate() {
                    let err = run(s).err().map(|e| e.to_string()).unwrap_or_default();
                    assert!(err.contains("block selection row"), "case {i}: {err}");
                }
            }

            /// Half precision: the kept blocks replay the rule on the kernel's masses, the output
            /// is attention over them within half-precision error.
            #[test]
            fn half_precision_dynamic_attention() {
                let halves: Vec<DType> = $half;
                let mut runner = proptest::test_runner::TestRunner::new(cases(4));
                for dtype in halves {
                    runner.run(&gpu_case(), |case| check::<Fused>(&case, Some(dtype), 3e-2).map(|_| ())).unwrap();
                }
            }

            /// The spec's block size (64) and a model's head size, in half precision where the
            /// runtime has it (the MMA forward's whole 64-key tiles on CUDA), f32 otherwise: an
            /// odd block count, a ragged text block, adjacent query blocks keeping different key
            /// blocks; within the precision's error of the brute force.
            #[test]
            fn spec_block_size_in_half_precision() {
                let case = DynamicCase {
                    canvas: Canvas::new(3, 8, 8).unwrap(),
                    text: TextSpec::before(70),
                    block: 64,
                    samples: 8,
                    sinks: 0,
                    thresholds: Thresholds { tau: 0.5, min_ratio: 0.2, max_ratio: 0.8 },
                    seed: 5,
                    batch: 1,
                    heads: 2,
                    dims: (64, 64),
                    bias: None,
                    sharpness: 1.0,
                    data_seed: 21,
                };
                let halves: Vec<DType> = $half;
                let dtypes: Vec<Option<DType>> =
                    if halves.is_empty() { vec![None] } else { halves.into_iter().map(Some).collect() };
                let nb = case.block_ranges().len();
                assert_eq!(nb % 2, 1, "{nb} blocks");
                for dtype in dtypes {
                    let kept = check::<Fused>(&case, dtype, if dtype.is_some() { 3e-2 } else { 2e-4 }).unwrap();
                    let differ = kept.chunks(nb).any(|head| head.chunks(2).any(|p| p.len() == 2 && p[0] != p[1]));
                    assert!(differ, "adjacent query blocks keep the same blocks: {kept:?}");
                }
            }

            /// More key blocks than a cube has units (strided loops and several sort slots per unit
            /// in the selection kernel), text before the video, and `Autodiff` key gradients
            /// against the f64 reference backend over the same kept blocks.
            #[test]
            fn many_blocks_and_gradients() {
                let case = DynamicCase {
                    canvas: Canvas::new(8, 8, 9).unwrap(),
                    text: TextSpec::before(6),
                    block: 2,
                    samples: 2,
                    sinks: 2,
                    thresholds: Thresholds { tau: 0.6, min_ratio: 0.05, max_ratio: 0.5 },
                    seed: 3,
                    batch: 1,
                    heads: 2,
                    dims: (8, 4),
                    bias: None,
                    // Moderate scores: the f32 backward composite of a near one-hot softmax cancels
                    // (dO v^T - rowsum(dO O)) and its error then depends on the matmul kernel
                    // autotune picks (2.4% was seen on lavapipe with 3x sharper inputs).
                    sharpness: 1.0,
                    data_seed: 12,
                };
                check::<Fused>(&case, None, 2e-4).unwrap();

                let module = case.config().init().unwrap();
                let (b, h, n, d, dv) = (case.batch, case.heads, case.n(), case.dims.0, case.dims.1);
                let x = case.inputs::<B64>(&cpu());
                fn key_grad<B: SparseAttentionBackend>(
                    m: &DynamicSparseAttention,
                    x: &[Vec<f64>; 4],
                    shape: [usize; 5],
                    device: &B::Device,
                ) -> (Vec<f64>, Vec<usize>, Vec<usize>) {
                    let [b, h, n, d, dv] = shape;
                    let t = |v: &[f64], c| {
                        Tensor::<Autodiff<B>, 4>::from_data(
                            TensorData::new(v.to_vec(), [b, h, n, c]),
                            fopts::<Autodiff<B>>(device),
                        )
                    };
                    let k = t(&x[1], d).require_grad();
                    let out = m.forward_at(t(&x[0], d), k.clone(), t(&x[2], dv), None, None).unwrap();
                    let sel = out.selection.clone().unwrap();
                    let grads = out.output.powi_scalar(2).sum().backward();
                    (values(k.grad(&grads).expect("keys have a gradient")), ints(sel.counts), ints(sel.indices))
                }
                let (got, counts, indices) =
                    key_grad::<Fused>(&module, &x.values, [b, h, n, d, dv], &gpu_of::<Fused>());
                let nb = module.blocks().len();
                assert!(nb > 256, "{nb} key blocks");
                let kept = kept_rows(&counts, &indices, nb);
                // The reference: block-map attention over the same kept blocks, on Autodiff<f64>.
                let rows = kept.iter().map(|r| r.iter().map(|&j| (j as u32, BlockKind::Full)).collect()).collect();
                let map = BlockMap::from_rows(module.blocks().clone(), b * h, rows, None).unwrap();
                let t = |v: &[f64], c| {
                    Tensor::<Autodiff<B64>, 4>::from_data(
                        TensorData::new(v.to_vec(), [1, b * h, n, c]),
                        fopts::<Autodiff<B64>>(&cpu()),
                    )
                };
                let k = t(&x.values[1], d).require_grad();
                let out = dit_attention::block_sparse_attention(
                    t(&x.values[0], d),
                    k.clone(),
                    t(&x.values[2], dv),
                    &map,
                    None,
                    Default::default(),
                )
                .unwrap();
                let grads = out.output.powi_scalar(2).sum().backward();
                let want = values(k.grad(&grads).unwrap());
                // burn's matmuls run in TF32 on CUDA.
                assert!(rel_err(&got, &want) < 1e-2, "key gradient error {}", rel_err(&got, &want));
                let sched = ThresholdSchedule::Constant(case.thresholds);
                assert_eq!(module.config().schedule, sched);
            }
        }
    };
}
