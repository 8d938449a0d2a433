//! Dynamic block-sparse attention (spec section 8) on the CPU reference backend, in f64: the
//! sampled tokens, the block masses, the selection and the output against a brute force written
//! from the spec; the schedule; dense when the thresholds keep everything; the enum variant;
//! errors.

mod common;

use burn::tensor::{Tensor, TensorData};
use common::dynamic::{DynamicCase, brute_dynamic, dynamic_case, kept_rows};
use common::merge::{fopts, ints};
use common::{B64, cases, rel_err, values};
use dit_attention::dynamic::{BlockBudget, DynamicSparseAttentionConfig, ThresholdSchedule, Thresholds, select_blocks};
use dit_attention::{AttentionOptions, CallPosition, Canvas, TextSpec, VideoAttentionConfig, dense_attention};
use proptest::prelude::*;

fn dev() -> burn::backend::ndarray::NdArrayDevice {
    Default::default()
}

fn tensor4(v: &[f64], shape: [usize; 4]) -> Tensor<B64, 4> {
    Tensor::from_data(TensorData::new(v.to_vec(), shape), fopts::<B64>(&dev()))
}

fn check_case(case: &DynamicCase, position: Option<CallPosition>) -> Result<(), TestCaseError> {
    let module = case.config().init().unwrap();
    let ranges = case.block_ranges();
    let nb = ranges.len();
    prop_assert_eq!(module.blocks().len(), nb);
    let positions = module.sampled_positions(position);
    prop_assert_eq!(positions.len(), nb * case.samples);
    for (b, r) in ranges.iter().enumerate() {
        let mine = &positions[b * case.samples..(b + 1) * case.samples];
        prop_assert!(mine.iter().all(|p| r.contains(p)), "block {} {:?} samples {:?}", b, r, mine);
        if r.len() >= case.samples {
            prop_assert!(mine.windows(2).all(|w| w[0] < w[1]), "distinct and ascending: {:?}", mine);
        }
    }
    let x = case.inputs::<B64>(&dev());
    let scale = 1.0 / (case.dims.0 as f64).sqrt();
    let brute = brute_dynamic(case, &x.values, &positions, scale);
    let out = module.forward_at(x.q, x.k, x.v, x.bias, position).unwrap();
    let sel = out.selection.clone().expect("thresholds below 1 estimate and select");
    let masses = values(sel.masses);
    prop_assert!(rel_err(&masses, &brute.masses) < 1e-10, "masses {}", rel_err(&masses, &brute.masses));
    let kept = kept_rows(&ints(sel.counts), &ints(sel.indices.clone()), nb);
    prop_assert_eq!(&kept, &brute.kept);
    prop_assert!(ints(sel.indices).chunks(nb).zip(&kept).all(|(row, k)| row[k.len()..].iter().all(|&j| j == nb)));
    let (got, got_lse) = (values(out.output.clone()), values(out.lse.clone()));
    prop_assert!(rel_err(&got, &brute.output) < 1e-10, "output error {}", rel_err(&got, &brute.output));
    prop_assert!(rel_err(&got_lse, &brute.lse) < 1e-10, "lse error {}", rel_err(&got_lse, &brute.lse));
    // Density: kept pairs over all pairs, per (batch, head).
    let n = case.n() as f64;
    let pairs: usize = kept
        .iter()
        .enumerate()
        .map(|(r, k)| ranges[r % nb].len() * k.iter().map(|&j| ranges[j].len()).sum::<usize>())
        .sum();
    let want = pairs as f64 / (case.batch * case.heads) as f64 / (n * n);
    prop_assert!((out.density() - want).abs() < 1e-12, "density {} vs {}", out.density(), want);
    Ok(())
}

/// More blocks than one engine call's value width (the masses come in chunks of key blocks,
/// rescaled by their LSE), with text after the video and a bias: exact against the brute force.
#[test]
fn masses_span_several_key_chunks() {
    let case = DynamicCase {
        canvas: Canvas::new(5, 6, 9).unwrap(),
        text: TextSpec::after(5),
        block: 2,
        samples: 2,
        sinks: 1,
        thresholds: Thresholds { tau: 0.7, min_ratio: 0.05, max_ratio: 0.6 },
        seed: 9,
        batch: 1,
        heads: 2,
        dims: (4, 3),
        bias: Some([true, false]),
        sharpness: 3.0,
        data_seed: 5,
    };
    assert!(case.block_ranges().len() > 2 * 64, "{} blocks", case.block_ranges().len());
    check_case(&case, None).unwrap();
}

proptest! {
    #![proptest_config(cases(64))]

    /// Sampled tokens, masses, kept blocks, output, LSE and density against the brute force
    /// (text before, after or none; ragged blocks; sinks; any thresholds; with and without a bias).
    #[test]
    fn dynamic_attention_matches_the_brute_force(case in dynamic_case(), layer in 0usize..3, step in 0usize..50) {
        check_case(&case, Some(CallPosition::new(layer, step)))?;
    }

    /// The rule keeps the fewest top blocks (by rank key) reaching `tau`, within the budget, plus
    /// the sinks.
    #[test]
    fn selection_rule_is_minimal(masses in proptest::collection::vec(0.0f32..1.0, 1..40), tau in 0.01f32..=1.0, qb in 0usize..5, sinks in 0usize..3, lo in 0.0f64..=1.0, hi in 0.0f64..=1.0) {
        let n = masses.len();
        let budget = BlockBudget::new(n, lo.min(hi), lo.max(hi), sinks);
        let kept = select_blocks(&masses, tau, budget, qb);
        prop_assert!(kept.windows(2).all(|w| w[0] < w[1]));
        if qb < sinks {
            prop_assert_eq!(kept.len(), n);
        } else {
            let key = |j: usize| common::dynamic::rank_key(&masses, j);
            let ranked: Vec<u32> = kept.iter().copied().filter(|&j| j as usize >= sinks || {
                // A sink also chosen by rank counts toward k.
                let better = (0..n).filter(|&i| key(i) > key(j as usize)).count();
                better < budget.k_max
            }).collect();
            prop_assert!(ranked.len() >= budget.k_min.min(n));
            // Exactly the top `k` ranks (`k` = the fewest reaching `tau`, within the budget)
            // plus the sinks, as the tests' brute force of the contract keeps them.
            let want: Vec<u32> = common::dynamic::brute_select(&masses, tau, budget.k_min, budget.k_max, sinks, qb)
                .into_iter()
                .map(|j| j as u32)
                .collect();
            prop_assert_eq!(&kept, &want);
            // Every kept non-sink block outweighs every dropped block.
            for &j in kept.iter().filter(|&&j| j as usize >= sinks) {
                for i in (0..n).filter(|i| !kept.contains(&(*i as u32))) {
                    prop_assert!(masses[j as usize] >= masses[i]);
                }
            }
        }
    }
}

/// The logistic schedule runs from its start to its end, monotonically.
#[test]
fn logistic_schedule_ramps_between_its_ends() {
    let s = ThresholdSchedule::default();
    let ThresholdSchedule::Logistic { from, to, steps } = s else { panic!("the default is the spec's ramp") };
    assert_eq!((from.tau, from.min_ratio, from.max_ratio), (0.98, 0.12, 1.0));
    assert_eq!((to.tau, to.min_ratio, to.max_ratio), (0.90, 0.10, 0.8));
    assert_eq!(steps, 50);
    assert_eq!(s.at(0), from);
    assert!((s.at(50).tau - to.tau).abs() < 1e-15 && (s.at(80).max_ratio - to.max_ratio).abs() < 1e-15);
    let taus: Vec<f64> = (0..=50).map(|i| s.at(i).tau).collect();
    assert!(taus.windows(2).all(|w| w[1] <= w[0]), "monotone: {taus:?}");
    assert!((s.at(25).tau - 0.94).abs() < 1e-12, "the midpoint is halfway: {}", s.at(25).tau);
}

/// Thresholds that keep everything run dense attention (no estimate).
#[test]
fn keeping_everything_is_dense() {
    let mut rng = common::SeedRng::new(5);
    let (b, h, n, d) = (2, 2, 3 + 3 * 2 * 3, 4);
    let mut t = |c| tensor4(&rng.normals(b * h * n * c), [b, h, n, c]);
    let (q, k, v) = (t(d), t(d), t(5));
    let dense = dense_attention(q.clone(), k.clone(), v.clone(), None, AttentionOptions::default()).unwrap();
    let base = DynamicSparseAttentionConfig::new([3, 2, 3]).with_text(TextSpec::after(3)).with_block(4).with_samples(2);
    for t in [
        Thresholds { tau: 1.0, min_ratio: 0.0, max_ratio: 1.0 },
        Thresholds { tau: 0.1, min_ratio: 1.0, max_ratio: 1.0 },
    ] {
        let m = base.clone().with_schedule(ThresholdSchedule::Constant(t)).init().unwrap();
        let out = m.forward_at(q.clone(), k.clone(), v.clone(), None, None).unwrap();
        assert!(out.selection.is_none() && out.density() == 1.0);
        assert!(rel_err(&values(out.output), &values(dense.output.clone())) < 1e-12);
        assert!(rel_err(&values(out.lse), &values(dense.lse.clone())) < 1e-12);
    }
    // `tau = 1` with a block cap below 1 still selects (the cap binds).
    let capped = base
        .clone()
        .with_schedule(ThresholdSchedule::Constant(Thresholds { tau: 1.0, min_ratio: 0.0, max_ratio: 0.5 }))
        .init()
        .unwrap();
    let out = capped.forward_at(q.clone(), k.clone(), v.clone(), None, None).unwrap();
    assert!(out.selection.is_some() && out.density() < 1.0);
    // A selection made elsewhere is checked before the kernels index with it.
    let sel = out.selection.unwrap();
    let bad = dit_attention::glue::BlockSelection { indices: sel.indices.clone().add_scalar(100), ..sel.clone() };
    let err = capped.forward_selected(q.clone(), k.clone(), v.clone(), None, &bad).unwrap_err().to_string();
    assert!(err.contains("block selection row 0"), "{err}");
    // Repeated blocks (not strictly ascending), and a count past the key blocks.
    let nkb = sel.indices.dims()[1];
    assert!(ints(sel.counts.clone()).iter().any(|&c| c >= 2));
    let repeated = dit_attention::glue::BlockSelection { indices: sel.indices.clone().zeros_like(), ..sel.clone() };
    let too_many =
        dit_attention::glue::BlockSelection { counts: sel.counts.clone().add_scalar(nkb as i64), ..sel.clone() };
    for bad in [repeated, too_many] {
        let err = capped.forward_selected(q.clone(), k.clone(), v.clone(), None, &bad).unwrap_err().to_string();
        assert!(err.contains("block selection row"), "{err}");
    }
    let good = capped.forward_selected(q.clone(), k.clone(), v.clone(), None, &sel).unwrap();
    assert!(good.output.dims() == [b, h, n, 5]);
    // Unchecked, on the module's own (valid) selection: the same numbers; shapes still checked.
    // SAFETY: `sel` is this module's selection for these batch-heads.
    let unchecked = unsafe { capped.forward_selected_unchecked(q.clone(), k.clone(), v.clone(), None, &sel) }.unwrap();
    assert!(rel_err(&values(unchecked.output), &values(good.output.clone())) == 0.0);
    assert!(rel_err(&values(unchecked.lse), &values(good.lse.clone())) == 0.0);
    let (q1, k1, v1) = (q.clone().narrow(0, 0, 1), k.clone().narrow(0, 0, 1), v.clone().narrow(0, 0, 1));
    // SAFETY: the lists are valid; only their shape (two batches' rows, one batch given) is wrong.
    let err = unsafe { capped.forward_selected_unchecked(q1, k1, v1, None, &sel) }.unwrap_err().to_string();
    assert!(err.contains("block selection for 1 x 2"), "{err}");
    // Lists in another int dtype than the device's default are checked and used alike.
    let narrow = dit_attention::glue::BlockSelection {
        counts: sel.counts.clone().cast(burn::tensor::DType::I32),
        indices: sel.indices.clone().cast(burn::tensor::DType::I32),
        ..sel.clone()
    };
    let same = capped.forward_selected(q.clone(), k.clone(), v.clone(), None, &narrow).unwrap();
    assert!(rel_err(&values(same.output), &values(good.output.clone())) < 1e-12);
    let bad = dit_attention::glue::BlockSelection { indices: narrow.indices.clone().add_scalar(100), ..narrow };
    assert!(capped.forward_selected(q.clone(), k.clone(), v.clone(), None, &bad).is_err());
    // Every block kept through the selection (max ratio 1, tiny sinks): also dense.
    let all =
        base.with_schedule(ThresholdSchedule::Constant(Thresholds { tau: 0.999_999, min_ratio: 0.99, max_ratio: 1.0 }));
    let out = all.init().unwrap().forward_at(q, k, v, None, None).unwrap();
    assert!(out.density() == 1.0);
    assert!(rel_err(&values(out.output), &values(dense.output)) < 1e-12);
}

/// The `Dynamic` variant of the enum: serde round trip, and the same output as the module.
#[test]
fn dynamic_variant_swaps_in_by_config() {
    let case = DynamicCase {
        canvas: Canvas::new(3, 2, 2).unwrap(),
        text: TextSpec::before(2),
        block: 3,
        samples: 2,
        sinks: 1,
        thresholds: Thresholds { tau: 0.5, min_ratio: 0.1, max_ratio: 0.7 },
        seed: 4,
        batch: 1,
        heads: 2,
        dims: (4, 3),
        bias: None,
        sharpness: 3.0,
        data_seed: 8,
    };
    let config = VideoAttentionConfig::Dynamic(case.config());
    let json = serde_json::to_string(&config).unwrap();
    let back: VideoAttentionConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(back, config);
    let x = case.inputs::<B64>(&dev());
    let position = Some(CallPosition::new(1, 7));
    let via_enum = back.init().unwrap().forward_at(x.q.clone(), x.k.clone(), x.v.clone(), None, position).unwrap();
    let direct = case.config().init().unwrap().forward_at(x.q, x.k, x.v, None, position).unwrap();
    assert!(direct.density() < 1.0, "a sparse call");
    assert_eq!(values(via_enum.output), values(direct.output));
}

/// Bad input names its values.
#[test]
fn bad_input_gets_clear_errors() {
    let base = DynamicSparseAttentionConfig::new([2, 3, 4]).with_text(TextSpec::before(2));
    let constant = |tau, min_ratio, max_ratio| ThresholdSchedule::Constant(Thresholds { tau, min_ratio, max_ratio });
    let cases = [
        (base.clone().with_schedule(constant(0.0, 0.1, 1.0)), "tau must be in (0, 1], got 0"),
        (base.clone().with_schedule(constant(1.5, 0.1, 1.0)), "tau must be in (0, 1], got 1.5"),
        (base.clone().with_schedule(constant(f64::NAN, 0.1, 1.0)), "got NaN"),
        (base.clone().with_schedule(constant(0.9, 0.5, 0.2)), "min_ratio 0.5, max_ratio 0.2"),
        (base.clone().with_schedule(constant(0.9, 0.0, 0.0)), "max_ratio 0"),
        (base.clone().with_samples(0), "samples 0 tokens per block"),
        (
            base.clone().with_block(4).with_samples(5),
            "samples 5 tokens per block; it needs between 1 and the block size 4",
        ),
        (base.clone().with_block(0), "block size must be at least 1, got 0"),
        (DynamicSparseAttentionConfig::new([0, 3, 4]), "canvas has a zero in dimension"),
    ];
    for (config, want) in cases {
        let err = config.init().expect_err(want).to_string();
        assert!(err.contains(want), "{err:?} should contain {want:?}");
    }
    let m = base.with_block(4).with_samples(2).init().unwrap();
    let mut rng = common::SeedRng::new(1);
    let mut t = |n: usize| tensor4(&rng.normals(2 * n * 4), [1, 2, n, 4]);
    let err = m.forward_at(t(25), t(25), t(25), None, None).unwrap_err().to_string();
    assert!(err.contains("25") && err.contains("26"), "{err}");
}
