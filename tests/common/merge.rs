//! Token-merging checks on any backend against a brute-force matching written from spec
//! section 5 in plain f64 Rust (independent of the crate's matching code).
#![allow(dead_code)]

use std::sync::Arc;

use burn::tensor::{DType, Int, Tensor, TensorCreationOptions, TensorData};
use dit_attention::merge::{Destinations, MergeLayout, MergePlan, MergeWeighting};
use dit_attention::{Canvas, SparseAttentionBackend, TextPlacement, TextSpec};
use proptest::prelude::*;

use super::{SeedRng, values};

/// One random merging problem.
#[derive(Debug, Clone)]
pub struct MergeCase {
    pub canvas: Canvas,
    pub window: [usize; 3],
    pub seed: Option<u64>,
    pub text: TextSpec,
    pub batch: usize,
    pub heads: usize,
    pub channels: usize,
    /// Metric rows from a few unit axis vectors: cosines are exactly 0 or 1 in any precision, so
    /// ties abound (and are decided the same way everywhere).
    pub ties: bool,
    /// Share of the sources that merge.
    pub r_share: f64,
    pub data_seed: u64,
}

pub fn merge_case() -> impl Strategy<Value = MergeCase> {
    let canvas = (1usize..=5, 1usize..=5, 1usize..=6);
    let text = prop_oneof![
        Just(TextSpec::none()),
        (1usize..=4).prop_map(TextSpec::before),
        (1usize..=4).prop_map(TextSpec::after)
    ];
    (canvas, text, any::<Option<u64>>(), 1usize..=2, 1usize..=2, 2usize..=6, any::<bool>(), 0.0f64..=1.0, any::<u64>())
        .prop_flat_map(|(c, text, seed, batch, heads, channels, ties, r_share, data_seed)| {
            let window = (1..=c.0, 1..=c.1, 1..=c.2);
            (Just((c, text, seed, batch, heads, channels, ties, r_share, data_seed)), window)
        })
        .prop_map(|((c, text, seed, batch, heads, channels, ties, r_share, data_seed), w)| MergeCase {
            canvas: Canvas::new(c.0, c.1, c.2).unwrap(),
            window: [w.0, w.1, w.2],
            seed,
            text,
            batch,
            heads,
            channels,
            ties,
            r_share,
            data_seed,
        })
}

impl MergeCase {
    pub fn destinations(&self) -> Destinations {
        Destinations::new(self.canvas, self.window, self.seed).unwrap()
    }

    pub fn layout(&self) -> Arc<MergeLayout> {
        let d = self.destinations();
        let r = ((d.src.len() as f64) * self.r_share).round() as usize;
        Arc::new(MergeLayout::new(&d, self.text, r).unwrap())
    }

    pub fn n(&self) -> usize {
        self.canvas.len() + self.text.len
    }

    /// `[batch, heads, n, channels]`, never all zeros.
    pub fn metric(&self) -> Vec<f64> {
        let mut rng = SeedRng::new(self.data_seed);
        let rows = self.batch * self.heads * self.n();
        if !self.ties {
            return rng.normals(rows * self.channels);
        }
        // Unit axis vectors: their normalisation is exact even where a device divides or takes
        // square roots approximately (CUDA), so every cosine is exactly 0 or 1.
        let axes = self.channels.min(3);
        let mut v = vec![0.0; rows * self.channels];
        for row in 0..rows {
            let axis = (rng.next_u64() % axes as u64) as usize;
            v[row * self.channels + axis] = 1.0;
        }
        v
    }
}

/// Brute force: per group, the token every token merges into (itself when kept).
pub fn brute_representatives(
    metric: &[f64],
    groups: usize,
    n: usize,
    c: usize,
    layout: &MergeLayout,
) -> Vec<Vec<usize>> {
    (0..groups)
        .map(|g| {
            let row = |t: usize| {
                let x = &metric[(g * n + t) * c..(g * n + t + 1) * c];
                let norm = x.iter().map(|a| a * a).sum::<f64>().sqrt().max(1e-6);
                x.iter().map(|a| a / norm).collect::<Vec<f64>>()
            };
            let best: Vec<(f64, usize)> = layout
                .src_token
                .iter()
                .map(|&s| {
                    let a = row(s as usize);
                    let mut best = (f64::NEG_INFINITY, 0);
                    for (j, &d) in layout.dst_token.iter().enumerate() {
                        let score: f64 = a.iter().zip(row(d as usize)).map(|(x, y)| x * y).sum();
                        if score > best.0 {
                            best = (score, j);
                        }
                    }
                    best
                })
                .collect();
            let mut order: Vec<usize> = (0..best.len()).collect();
            order.sort_by(|&a, &b| best[b].0.partial_cmp(&best[a].0).unwrap().then(a.cmp(&b)));
            let mut rep: Vec<usize> = (0..n).collect();
            for &s in &order[..layout.r] {
                rep[layout.src_token[s] as usize] = layout.dst_token[best[s].1] as usize;
            }
            rep
        })
        .collect()
}

/// Creation options in `B`'s float type on `device`.
pub fn fopts<B: SparseAttentionBackend>(device: &B::Device) -> TensorCreationOptions<B> {
    TensorCreationOptions::float().with_device(device.clone())
}

pub fn ints<B: SparseAttentionBackend, const D: usize>(t: Tensor<B, D, Int>) -> Vec<usize> {
    t.into_data().iter::<i64>().map(|x| x as usize).collect()
}

/// The plan on backend `B` against the brute force: every source in its best destination,
/// exactly `r` merged, text and destinations kept, sizes, and `unmerge(merge(x))` = each
/// token's group mean (within `tol`, relative to the values' scale).
pub fn check_plan<B: SparseAttentionBackend>(
    case: &MergeCase,
    device: &B::Device,
    tol: f64,
) -> Result<(), TestCaseError> {
    check_plan_in::<B>(case, device, None, tol)
}

/// [`check_plan`] with the metric and data cast to `dtype` (exact decisions need a tie-heavy
/// case in half precision).
pub fn check_plan_in<B: SparseAttentionBackend>(
    case: &MergeCase,
    device: &B::Device,
    dtype: Option<DType>,
    tol: f64,
) -> Result<(), TestCaseError> {
    let cast = |t: Tensor<B, 4>| match dtype {
        Some(d) => t.cast(d),
        None => t,
    };
    let layout = case.layout();
    let (b, h, n, c) = (case.batch, case.heads, case.n(), case.channels);
    let metric_v = case.metric();
    let metric = cast(Tensor::<B, 4>::from_data(TensorData::new(metric_v.clone(), [b, h, n, c]), fopts::<B>(device)));
    let plan = MergePlan::new(metric, layout.clone(), MergeWeighting::Mean, None).unwrap();
    let reps = brute_representatives(&metric_v, b * h, n, c, &layout);
    let slots = ints(plan.slot_of_token());
    let kept = ints(plan.kept_token());
    let sizes = values(plan.sizes());
    let n_kept = layout.n_kept();
    prop_assert_eq!(plan.merged_len(), n - layout.r);
    for g in 0..b * h {
        let rep = &reps[g];
        let mut seen = vec![false; n];
        for slot in 0..n_kept {
            let t = kept[g * n_kept + slot];
            prop_assert!(t < n && !seen[t], "slot {} keeps token {} twice or out of range", slot, t);
            seen[t] = true;
            prop_assert_eq!(rep[t], t, "slot {} keeps a merged token {}", slot, t);
            let count = rep.iter().filter(|&&x| x == t).count();
            prop_assert_eq!(sizes[g * n_kept + slot], count as f64, "size of slot {}", slot);
        }
        for t in 0..n {
            let s = slots[g * n + t];
            prop_assert!(s < n_kept);
            prop_assert_eq!(kept[g * n_kept + s], rep[t], "group {} token {} (r = {})", g, t, layout.r);
        }
        let text = match case.text.placement {
            TextPlacement::Before => 0..case.text.len,
            TextPlacement::After => case.canvas.len()..n,
        };
        for t in text {
            prop_assert_eq!(rep[t], t, "text token {} merged", t);
        }
        prop_assert_eq!((0..n).filter(|&t| rep[t] != t).count(), layout.r);
    }
    // Data: unmerge(merge(x)) = the mean of each token's group, per head of a (b, h) group.
    let mut rng = SeedRng::new(case.data_seed ^ 1);
    let cx = 3;
    let x_v = rng.normals(b * h * n * cx);
    let x = cast(Tensor::<B, 4>::from_data(TensorData::new(x_v.clone(), [b, h, n, cx]), fopts::<B>(device)));
    let merged = plan.merge(x).unwrap();
    prop_assert_eq!(merged.dims(), [b, h, n_kept, cx]);
    let back = values(plan.unmerge(merged).unwrap());
    for g in 0..b * h {
        for t in 0..n {
            let members: Vec<usize> = (0..n).filter(|&u| reps[g][u] == reps[g][t]).collect();
            for ch in 0..cx {
                let want = members.iter().map(|&u| x_v[(g * n + u) * cx + ch]).sum::<f64>() / members.len() as f64;
                let got = back[(g * n + t) * cx + ch];
                prop_assert!(
                    (got - want).abs() <= tol * (1.0 + want.abs()),
                    "g {} t {} ch {}: {} vs {}",
                    g,
                    t,
                    ch,
                    got,
                    want
                );
            }
        }
    }
    Ok(())
}

/// On any metric (random ones included, where precision decides near-ties): every merged
/// source went to a destination within `tol` of its best cosine, exactly `r` merged, and no
/// unmerged source is more than `2 tol` more similar than a merged one. The cosines are f64 ones
/// of the metric as `B` holds it (cast to `dtype`).
pub fn check_near_optimal<B: SparseAttentionBackend>(
    case: &MergeCase,
    device: &B::Device,
    dtype: Option<DType>,
    tol: f64,
) -> Result<(), TestCaseError> {
    let layout = case.layout();
    let (b, h, n, c) = (case.batch, case.heads, case.n(), case.channels);
    let mut metric = Tensor::<B, 4>::from_data(TensorData::new(case.metric(), [b, h, n, c]), fopts::<B>(device));
    if let Some(d) = dtype {
        metric = metric.cast(d);
    }
    let held = values(metric.clone());
    let plan = MergePlan::new(metric, layout.clone(), MergeWeighting::Mean, None).unwrap();
    if layout.r > 0 {
        prop_assert_eq!(plan.path(), "CubeCL kernels");
    }
    let (slots, kept) = (ints(plan.slot_of_token()), ints(plan.kept_token()));
    let n_kept = layout.n_kept();
    for g in 0..b * h {
        let unit = |t: usize| {
            let x = &held[(g * n + t) * c..(g * n + t + 1) * c];
            let norm = x.iter().map(|a| a * a).sum::<f64>().sqrt().max(1e-6);
            x.iter().map(|a| a / norm).collect::<Vec<f64>>()
        };
        let cos = |s: usize, d: usize| unit(s).iter().zip(unit(d)).map(|(x, y)| x * y).sum::<f64>();
        let (mut merged_min, mut kept_max, mut merged) = (f64::INFINITY, f64::NEG_INFINITY, 0);
        for &s in &layout.src_token {
            let s = s as usize;
            let best = layout.dst_token.iter().map(|&d| cos(s, d as usize)).fold(f64::NEG_INFINITY, f64::max);
            let rep = kept[g * n_kept + slots[g * n + s]];
            if rep == s {
                kept_max = kept_max.max(best);
                continue;
            }
            merged += 1;
            merged_min = merged_min.min(best);
            prop_assert!(layout.dst_token.contains(&(rep as u32)), "source {} merged into non-destination {}", s, rep);
            let got = cos(s, rep);
            prop_assert!(got >= best - tol, "group {} source {}: cosine {} to {}, best {}", g, s, got, rep, best);
        }
        prop_assert_eq!(merged, layout.r);
        prop_assert!(
            merged_min >= kept_max - 2.0 * tol,
            "a kept source ({}) beats a merged one ({})",
            kept_max,
            merged_min
        );
    }
    Ok(())
}

/// The plan's index tables on `B` equal those of the f64 reference backend `R` exactly, and
/// merge / unmerge agree within `tol`.
pub fn check_against<B: SparseAttentionBackend, R: SparseAttentionBackend>(
    case: &MergeCase,
    device: &B::Device,
    ref_device: &R::Device,
    tol: f64,
) -> Result<(), TestCaseError> {
    let layout = case.layout();
    let (b, h, n, c) = (case.batch, case.heads, case.n(), case.channels);
    let metric_v = case.metric();
    let plan = MergePlan::<B>::new(
        Tensor::from_data(TensorData::new(metric_v.clone(), [b, h, n, c]), fopts::<B>(device)),
        layout.clone(),
        MergeWeighting::Mean,
        None,
    )
    .unwrap();
    let oracle = MergePlan::<R>::new(
        Tensor::from_data(TensorData::new(metric_v, [b, h, n, c]), fopts::<R>(ref_device)),
        layout,
        MergeWeighting::Mean,
        None,
    )
    .unwrap();
    if case.ties {
        // Exact cosines: the same decisions in any precision.
        prop_assert_eq!(ints(plan.slot_of_token()), ints(oracle.slot_of_token()));
        prop_assert_eq!(ints(plan.kept_token()), ints(oracle.kept_token()));
    }
    let x_v = SeedRng::new(case.data_seed ^ 2).normals(b * h * n * 5);
    let x = || TensorData::new(x_v.clone(), [b, h, n, 5]);
    let got = values(plan.unmerge(plan.merge(Tensor::from_data(x(), fopts::<B>(device))).unwrap()).unwrap());
    let want = values(oracle.unmerge(oracle.merge(Tensor::from_data(x(), fopts::<R>(ref_device))).unwrap()).unwrap());
    if case.ties {
        for (a, w) in got.iter().zip(&want) {
            prop_assert!((a - w).abs() <= tol * (1.0 + w.abs()), "{} vs {}", a, w);
        }
    }
    Ok(())
}

/// The token-merging kernel suite for a CubeCL runtime: `$fused` (= `Fusion<CubeBackend>`),
/// `$cube` (unfused) on `$device`; `$half` lists the half-precision dtypes to check there.
#[macro_export]
macro_rules! gpu_merge_suite {
    ($fused:ty, $cube:ty, $device:expr, $half:expr) => {
        mod merge_kernels {
            #[allow(unused_imports)]
            use super::*;
            use burn::backend::Autodiff;
            use burn::tensor::{DType, Tensor, TensorData};
            use dit_attention::merge::{
                MergeAmount, MergeMode, MergePlan, MergeState, MergeWeighting, TokenMergeAttentionConfig,
            };
            use dit_attention::{Canvas, SparseAttentionBackend, TextSpec};
            #[allow(unused_imports)]
            use proptest::prelude::*;

            use super::common::merge::{
                MergeCase, check_against, check_near_optimal, check_plan, check_plan_in, fopts, ints, merge_case,
            };
            use super::common::{B64, SeedRng, cases, rel_err, values};

            type Fused = $fused;
            type Cube = $cube;

            fn gpu() -> <Fused as burn::tensor::backend::BackendTypes>::Device {
                $device
            }

            fn cpu() -> burn::backend::ndarray::NdArrayDevice {
                Default::default()
            }

            /// On the same scores (any metric, random ones included) the kernels' plan equals
            /// the burn-tensor reference's, run on the same device.
            #[test]
            fn kernel_plans_equal_the_reference_on_the_same_scores() {
                let mut runner = proptest::test_runner::TestRunner::new(cases(8));
                runner
                    .run(&merge_case(), |case| {
                        let layout = case.layout();
                        if layout.r == 0 {
                            return Ok(());
                        }
                        let (b, h, n, c) = (case.batch, case.heads, case.n(), case.channels);
                        let metric = Tensor::<Fused, 4>::from_data(
                            TensorData::new(case.metric(), [b, h, n, c]),
                            fopts::<Fused>(&gpu()),
                        );
                        let scores = dit_attention::merge::cosine_scores(metric, &layout);
                        let kernel = <Fused as SparseAttentionBackend>::merge_match(scores.clone(), &layout);
                        prop_assert!(kernel.members.is_some(), "the kernels ran");
                        let reference = dit_attention::merge::reference::match_reference(scores, &layout);
                        prop_assert_eq!(ints(kernel.slot_of_token), ints(reference.slot_of_token));
                        prop_assert_eq!(ints(kernel.kept_token), ints(reference.kept_token));
                        Ok(())
                    })
                    .unwrap();
            }

            /// Random metrics through the fused matching (tensor cores in half precision where
            /// the runtime has them): every decision within rounding of the f64 optimum.
            #[test]
            fn fused_matching_is_near_optimal_on_random_metrics() {
                let halves: Vec<DType> = $half;
                let mut dtypes: Vec<(Option<DType>, f64)> = vec![(None, 1e-5)];
                dtypes.extend(halves.into_iter().map(|d| (Some(d), 2e-2)));
                let mut runner = proptest::test_runner::TestRunner::new(cases(8));
                for (dtype, tol) in dtypes {
                    runner
                        .run(&merge_case(), |case| {
                            let case = MergeCase { ties: false, ..case };
                            check_near_optimal::<Fused>(&case, &gpu(), dtype, tol)?;
                            check_near_optimal::<Cube>(&case, &gpu(), dtype, tol)
                        })
                        .unwrap();
                }
            }

            /// The unit metric's kernels (keys and values with their norms, or one part) against
            /// the burn-tensor composite on the f64 backend, with a zero row (the norm's floor) and
            /// widths that need padding; in half precision too where the device has it.
            #[test]
            fn unit_metric_kernels_match_the_reference() {
                let halves: Vec<DType> = $half;
                let mut dtypes: Vec<(Option<DType>, f64)> = vec![(None, 1e-5)];
                dtypes.extend(halves.into_iter().map(|d| (Some(d), 1e-2)));
                let mut rng = SeedRng::new(41);
                for (dtype, tol) in dtypes {
                    for (ca, cb) in [(5usize, Some(3usize)), (64, Some(64)), (16, None), (7, None)] {
                        let (b, h, n) = (2, 3, 37);
                        let mut a_v = rng.normals(b * h * n * ca);
                        a_v[..ca].iter_mut().for_each(|x| *x = 0.0);
                        let b_v = cb.map(|cb| {
                            let mut v = rng.normals(b * h * n * cb);
                            v[..cb].iter_mut().for_each(|x| *x = 0.0);
                            v
                        });
                        fn unit<B: SparseAttentionBackend>(
                            a: &[f64],
                            bv: Option<&Vec<f64>>,
                            dims: [usize; 4],
                            cb: Option<usize>,
                            dtype: Option<DType>,
                            device: &B::Device,
                        ) -> Vec<f64> {
                            let cast = |t: Tensor<B, 4>| dtype.map_or(t.clone(), |d| t.cast(d));
                            let t = |v: &[f64], c: usize| {
                                cast(Tensor::<B, 4>::from_data(
                                    TensorData::new(v.to_vec(), [dims[0], dims[1], dims[2], c]),
                                    fopts::<B>(device),
                                ))
                            };
                            let a = t(a, dims[3]);
                            let b = bv.zip(cb).map(|(v, c)| t(v, c));
                            values(B::merge_unit_metric(a, b))
                        }
                        let dims = [b, h, n, ca];
                        // The reference sees the same rounded inputs: cast there and back.
                        let rounded = |v: &[f64], c: usize| -> Vec<f64> {
                            let t = Tensor::<Fused, 4>::from_data(
                                TensorData::new(v.to_vec(), [b, h, n, c]),
                                fopts::<Fused>(&gpu()),
                            );
                            values(dtype.map_or(t.clone(), |d| t.cast(d)))
                        };
                        let (a_r, b_r) = (rounded(&a_v, ca), b_v.as_ref().zip(cb).map(|(v, c)| rounded(v, c)));
                        let want = unit::<B64>(&a_r, b_r.as_ref(), dims, cb, None, &cpu());
                        let width = cb.map_or(ca, |cb| ca + cb + 2).next_multiple_of(16);
                        assert_eq!(want.len(), b * h * n * width);
                        for got in [
                            unit::<Fused>(&a_v, b_v.as_ref(), dims, cb, dtype, &gpu()),
                            unit::<Cube>(&a_v, b_v.as_ref(), dims, cb, dtype, &gpu()),
                        ] {
                            assert_eq!(got.len(), want.len());
                            assert!(got[..width].iter().all(|x| *x == 0.0), "the zero row stays zero");
                            let err = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0.0, f64::max);
                            assert!(err <= tol, "{dtype:?} ca {ca} cb {cb:?}: largest difference {err}");
                        }
                    }
                }
            }

            /// Tie-heavy cases decide the same way in half precision.
            #[test]
            fn half_precision_plans_on_tie_heavy_metrics() {
                let halves: Vec<DType> = $half;
                let mut runner = proptest::test_runner::TestRunner::new(cases(6));
                for dtype in halves {
                    runner
                        .run(&merge_case(), |mut case| {
                            case.ties = true;
                            check_plan_in::<Fused>(&case, &gpu(), Some(dtype), 2e-2)
                        })
                        .unwrap();
                }
            }

            proptest! {
                #![proptest_config(cases(8))]

                // Decisions against f64 oracles need exact cosines: a device matmul may run in
                // TF32 (CUDA), which flips near-ties of random metrics. Random metrics are
                // checked on the device's own scores above.
                #[test]
                fn fused_kernels_match_the_brute_force(case in merge_case()) {
                    let case = MergeCase { ties: true, ..case };
                    check_plan::<Fused>(&case, &gpu(), 1e-5)?;
                    check_against::<Fused, B64>(&case, &gpu(), &cpu(), 1e-5)?;
                }

                #[test]
                fn unfused_kernels_match_the_brute_force(case in merge_case()) {
                    let case = MergeCase { ties: true, ..case };
                    check_plan::<Cube>(&case, &gpu(), 1e-5)?;
                    check_against::<Cube, B64>(&case, &gpu(), &cpu(), 1e-5)?;
                }
            }

            /// Larger canvases: several chunks of sources and destinations in the plan kernel, r
            /// from 1 to every source; the kernels run (not the reference fallback).
            #[test]
            fn kernels_on_multi_chunk_plans() {
                // Tie-heavy metrics only: exact cosines in any matmul precision (see above).
                for (ties, r_share, text) in [
                    (true, 0.5, TextSpec::before(5)),
                    (true, 0.3, TextSpec::after(7)),
                    (true, 1.0, TextSpec::none()),
                    (true, 1e-3, TextSpec::before(1)),
                ] {
                    let case = MergeCase {
                        canvas: Canvas::new(9, 12, 16).unwrap(),
                        window: [2, 2, 2],
                        seed: Some(3),
                        text,
                        batch: 1,
                        heads: 2,
                        channels: 6,
                        ties,
                        r_share,
                        data_seed: 17,
                    };
                    assert!(case.layout().dst_token.len() > 256 && case.layout().src_token.len() > 1024);
                    let layout = case.layout();
                    let metric = Tensor::<Fused, 4>::from_data(
                        TensorData::new(case.metric(), [1, 2, case.n(), 6]),
                        fopts::<Fused>(&gpu()),
                    );
                    let plan = MergePlan::new(metric, layout, MergeWeighting::Mean, None).unwrap();
                    assert_eq!(plan.path(), "CubeCL kernels");
                    check_plan::<Fused>(&case, &gpu(), 1e-5).unwrap();
                    check_against::<Cube, B64>(&case, &gpu(), &cpu(), 1e-5).unwrap();
                }
            }

            /// The attention module on the kernels against the f64 reference backend, both modes, per-head
            /// metric; and `Autodiff<Wgpu>` runs it (the matching on the inner kernels) and differentiates.
            #[test]
            fn module_on_wgpu_matches_the_reference() {
                let (b, h, d) = (2, 2, 16);
                let canvas = [5, 6, 8];
                let text = TextSpec::before(6);
                let n = 240 + 6;
                let mut rng = SeedRng::new(5);
                let (q, k, v) = (rng.normals(b * h * n * d), rng.normals(b * h * n * d), rng.normals(b * h * n * d));
                // A shared metric of axis vectors with integer scales: exact cosines, so both
                // backends decide the same (random metrics meet near-ties at f32 / TF32 precision).
                let mut metric = vec![0.0; b * n * 3];
                for row in 0..b * n {
                    metric[row * 3 + (rng.next_u64() % 3) as usize] = 1.0 + (rng.next_u64() % 4) as f64;
                }
                for mode in [MergeMode::KeysValues, MergeMode::Full] {
                    let module = TokenMergeAttentionConfig::new(canvas, MergeAmount::Ratio(0.4))
                        .with_text(text)
                        .with_window([2, 2, 2])
                        .with_mode(mode)
                        .with_metric(dit_attention::merge::MergeMetric::Shared)
                        .init()
                        .unwrap();
                    fn run<B: SparseAttentionBackend>(
                        m: &dit_attention::TokenMergeAttention,
                        x: [&[f64]; 4],
                        shape: [usize; 4],
                        device: &B::Device,
                    ) -> Vec<f64> {
                        let t = |v: &[f64]| {
                            Tensor::<B, 4>::from_data(TensorData::new(v.to_vec(), shape), fopts::<B>(device))
                        };
                        let metric = Tensor::<B, 3>::from_data(
                            TensorData::new(x[3].to_vec(), [shape[0], shape[2], 3]),
                            fopts::<B>(device),
                        );
                        values(
                            m.forward_with_state(t(x[0]), t(x[1]), t(x[2]), Some(metric), &mut MergeState::new())
                                .unwrap()
                                .output,
                        )
                    }
                    let shape = [b, h, n, d];
                    let want = run::<B64>(&module, [&q, &k, &v, &metric], shape, &cpu());
                    let got = run::<Fused>(&module, [&q, &k, &v, &metric], shape, &gpu());
                    let err = rel_err(&got, &want);
                    assert!(err < 1e-4, "{mode:?}: relative error {err}");
                }
                // Autodiff: gradients flow to the keys through merge (and, in full mode, unmerge).
                type Ad = Autodiff<Fused>;
                let module = TokenMergeAttentionConfig::new(canvas, MergeAmount::Ratio(0.4))
                    .with_text(text)
                    .with_window([2, 2, 2])
                    .with_mode(MergeMode::Full)
                    .init()
                    .unwrap();
                let t = |v: &[f64]| {
                    Tensor::<Ad, 4>::from_data(TensorData::new(v.to_vec(), [b, h, n, d]), fopts::<Ad>(&gpu()))
                };
                let kt = t(&k).require_grad();
                let out = module.forward(t(&q), kt.clone(), t(&v)).unwrap();
                let grads = out.sum().backward();
                let g = values(kt.grad(&grads).expect("keys have a gradient"));
                assert!(g.iter().all(|x| x.is_finite()) && g.iter().any(|x| *x != 0.0));
            }
        }
    };
}
