//! Token merging (spec section 5) on the CPU reference backend, in f64: the matching against a
//! brute force, the ToMe identity, modes, reuse, sizes, and errors.

mod common;

use std::sync::Arc;

use burn::tensor::{Tensor, TensorData};
use common::merge::{MergeCase, brute_representatives, check_plan, fopts, merge_case};
use common::{B64, SeedRng, cases, rel_err, values};
use dit_attention::merge::{
    Destinations, MergeAmount, MergeLayout, MergeMetric, MergeMode, MergePlan, MergeState, MergeWeighting,
    TokenMergeAttentionConfig,
};
use dit_attention::reference::AttentionOptions;
use dit_attention::{Canvas, DitAttentionError, TextSpec, VideoAttentionConfig, dense_attention};
use proptest::prelude::*;

fn dev() -> burn::backend::ndarray::NdArrayDevice {
    Default::default()
}

fn tensor4(v: &[f64], shape: [usize; 4]) -> Tensor<B64, 4> {
    Tensor::from_data(TensorData::new(v.to_vec(), shape), fopts::<B64>(&dev()))
}

proptest! {
    #![proptest_config(cases(48))]

    #[test]
    fn plan_matches_the_brute_force(case in merge_case()) {
        check_plan::<B64>(&case, &dev(), 1e-12)?;
    }

    #[test]
    fn destinations_cover_frame_zero_and_one_per_box(
        t in 1usize..=6, h in 1usize..=6, w in 1usize..=6, seed in any::<Option<u64>>(), win in (1usize..=6, 1usize..=6, 1usize..=6)
    ) {
        let window = [win.0.min(t), win.1.min(h), win.2.min(w)];
        let canvas = Canvas::new(t, h, w).unwrap();
        let d = Destinations::new(canvas, window, seed).unwrap();
        prop_assert_eq!(d.dst.len() + d.src.len(), canvas.len());
        let is_dst = |i: usize| d.dst.binary_search(&(i as u32)).is_ok();
        for i in 0..h * w {
            prop_assert!(is_dst(i), "frame-0 token {} is not a destination", i);
        }
        // Every box of the later frames holds exactly one destination.
        for t0 in (1..t).step_by(window[0]) {
            for h0 in (0..h).step_by(window[1]) {
                for w0 in (0..w).step_by(window[2]) {
                    let mut found = vec![];
                    for tt in t0..(t0 + window[0]).min(t) {
                        for hh in h0..(h0 + window[1]).min(h) {
                            for ww in w0..(w0 + window[2]).min(w) {
                                let i = canvas.index([tt, hh, ww]);
                                if is_dst(i) { found.push([tt, hh, ww]); }
                            }
                        }
                    }
                    prop_assert_eq!(found.len(), 1, "box at {:?}", [t0, h0, w0]);
                    if seed.is_none() {
                        prop_assert_eq!(found[0], [t0, h0, w0]);
                    }
                }
            }
        }
        prop_assert_eq!(Destinations::new(canvas, window, seed).unwrap(), d, "the draw is deterministic");
    }
}

/// Destinations drawn with a seed vary with it and are spread over the box.
#[test]
fn seeded_destinations_vary() {
    let canvas = Canvas::new(9, 6, 6).unwrap();
    let a = Destinations::new(canvas, [4, 3, 3], Some(1)).unwrap();
    let b = Destinations::new(canvas, [4, 3, 3], Some(2)).unwrap();
    let first = Destinations::new(canvas, [4, 3, 3], None).unwrap();
    assert_ne!(a.dst, b.dst);
    assert_ne!(a.dst, first.dst);
    // 36 frame-0 tokens + 2 (frames 1-4, 5-8) x 2 x 2 boxes.
    assert_eq!(a.dst.len(), 36 + 8);
}

/// r = 0 is the identity; r = all sources leaves only destinations and text.
#[test]
fn merging_nothing_and_everything() {
    let canvas = Canvas::new(3, 4, 4).unwrap();
    let d = Destinations::new(canvas, [2, 2, 2], Some(7)).unwrap();
    let mut rng = SeedRng::new(3);
    let n = canvas.len() + 2;
    let metric = rng.normals(2 * n * 4);
    let x = rng.normals(2 * n * 3);
    for r in [0, d.src.len()] {
        let layout = Arc::new(MergeLayout::new(&d, TextSpec::before(2), r).unwrap());
        let plan = MergePlan::new(tensor4(&metric, [1, 2, n, 4]), layout, MergeWeighting::Mean, None).unwrap();
        let back = values(plan.unmerge(plan.merge(tensor4(&x, [1, 2, n, 3])).unwrap()).unwrap());
        if r == 0 {
            assert_eq!(plan.merged_len(), n);
            assert!(rel_err(&back, &x) < 1e-15, "r = 0 must be the identity");
        } else {
            assert_eq!(plan.merged_len(), n - d.src.len());
            assert_eq!(plan.merged_len(), d.dst.len() + 2);
        }
    }
}

/// Size-weighted merging with incoming sizes: sizes add up, and the weighted sum is conserved.
#[test]
fn size_weighted_merge_conserves_the_total() {
    let case = MergeCase {
        canvas: Canvas::new(4, 3, 5).unwrap(),
        window: [2, 2, 3],
        seed: Some(5),
        text: TextSpec::after(3),
        batch: 2,
        heads: 1,
        channels: 4,
        ties: false,
        r_share: 0.6,
        data_seed: 11,
    };
    let layout = case.layout();
    let n = case.n();
    let mut rng = SeedRng::new(9);
    let sizes_in: Vec<f64> = (0..2 * n).map(|_| 1.0 + (rng.next_u64() % 5) as f64).collect();
    let x = rng.normals(2 * n * 3);
    let plan = MergePlan::new(
        tensor4(&case.metric(), [2, 1, n, 4]),
        layout.clone(),
        MergeWeighting::SizeWeighted,
        Some(Tensor::from_data(TensorData::new(sizes_in.clone(), [2, 1, n]), fopts::<B64>(&dev()))),
    )
    .unwrap();
    let merged = values(plan.merge(tensor4(&x, [2, 1, n, 3])).unwrap());
    let sizes = values(plan.sizes());
    let k = layout.n_kept();
    for b in 0..2 {
        let total_in: f64 = sizes_in[b * n..(b + 1) * n].iter().sum();
        let total_out: f64 = sizes[b * k..(b + 1) * k].iter().sum();
        assert!((total_in - total_out).abs() < 1e-9);
        for ch in 0..3 {
            let want: f64 = (0..n).map(|t| sizes_in[b * n + t] * x[(b * n + t) * 3 + ch]).sum();
            let got: f64 = (0..k).map(|s| sizes[b * k + s] * merged[(b * k + s) * 3 + ch]).sum();
            assert!((want - got).abs() < 1e-9 * (1.0 + want.abs()), "{want} vs {got}");
        }
    }
}

/// The ToMe identity: when every merged source duplicates its destination, attention over the
/// merged keys with `log(size)` equals dense attention over all keys (exact in f64), in both
/// modes; with a size bias off it does not.
#[test]
fn proportional_attention_equals_dense_over_duplicates() {
    let canvas = Canvas::new(3, 4, 4).unwrap();
    let (b, h, d, dv) = (2, 2, 8, 6);
    for text in [TextSpec::before(3), TextSpec::after(2), TextSpec::none()] {
        let n = canvas.len() + text.len;
        let sources = Destinations::new(canvas, [2, 2, 2], Some(0)).unwrap().src.len();
        let config = |mode, prop| {
            TokenMergeAttentionConfig::new([3, 4, 4], MergeAmount::Count(sources * 99 / 100))
                .with_text(text)
                .with_window([2, 2, 2])
                .with_metric(MergeMetric::Keys)
                .with_mode(mode)
                .with_proportional_attention(prop)
        };
        let module = config(MergeMode::KeysValues, true).init().unwrap();
        let layout = module.layout().clone();
        // Fresh keys for text and destinations; each source copies one destination chosen at random.
        let mut rng = SeedRng::new(42);
        let (mut q, mut k, mut v) =
            (rng.normals(b * h * n * d), rng.normals(b * h * n * d), rng.normals(b * h * n * dv));
        let r = layout.r;
        assert_eq!(r, layout.src_token.len() * 99 / 100);
        for bh in 0..b * h {
            for &s in &layout.src_token {
                let dst = layout.dst_token[(rng.next_u64() % layout.dst_token.len() as u64) as usize] as usize;
                let s = s as usize;
                for (x, w) in [(&mut q, d), (&mut k, d), (&mut v, dv)] {
                    let (src, from) = ((bh * n + s) * w, (bh * n + dst) * w);
                    for i in 0..w {
                        x[src + i] = x[from + i];
                    }
                }
            }
        }
        let (qt, kt, vt) = (tensor4(&q, [b, h, n, d]), tensor4(&k, [b, h, n, d]), tensor4(&v, [b, h, n, dv]));
        let dense = dense_attention(qt.clone(), kt.clone(), vt.clone(), None, AttentionOptions::default()).unwrap();
        let dense_out = values(dense.output);
        for mode in [MergeMode::KeysValues, MergeMode::Full] {
            let module = config(mode, true).init().unwrap();
            let out =
                module.forward_with_state(qt.clone(), kt.clone(), vt.clone(), None, &mut MergeState::new()).unwrap();
            let err = rel_err(&values(out.output), &dense_out);
            // r is 99% of the sources: the 1% unmerged duplicates stay as themselves (exact too).
            assert!(err < 1e-12, "{mode:?} with {text:?}: relative error {err}");
            assert!(rel_err(&values(out.lse), &values(dense.lse.clone())) < 1e-12);
        }
        let plain = config(MergeMode::KeysValues, false).init().unwrap().forward(qt, kt, vt).unwrap();
        assert!(rel_err(&values(plain), &dense_out) > 1e-4, "without log(size) the identity must fail");
    }
}

/// Ties between destinations and between ranked sources are decided by the lowest index, the
/// same on every call; the brute force agrees on a tie-heavy metric.
#[test]
fn ties_are_deterministic() {
    let case = MergeCase {
        canvas: Canvas::new(5, 4, 6).unwrap(),
        window: [2, 2, 3],
        seed: None,
        text: TextSpec::before(2),
        batch: 1,
        heads: 2,
        channels: 3,
        ties: true,
        r_share: 0.5,
        data_seed: 1,
    };
    let layout = case.layout();
    let n = case.n();
    let metric = case.metric();
    let reps = brute_representatives(&metric, 2, n, 3, &layout);
    let plan = || MergePlan::new(tensor4(&metric, [1, 2, n, 3]), layout.clone(), MergeWeighting::Mean, None).unwrap();
    let a: Vec<i64> = plan().slot_of_token().into_data().iter::<i64>().collect();
    let b: Vec<i64> = plan().slot_of_token().into_data().iter::<i64>().collect();
    assert_eq!(a, b);
    check_plan::<B64>(&case, &dev(), 1e-12).unwrap();
    assert!(reps.iter().flatten().enumerate().any(|(i, &r)| r != i % n), "some tokens merge");
}

/// A matching is reused for `gap` calls of one state, then recomputed.
#[test]
fn matching_is_reused_for_gap_calls() {
    let canvas = [3, 4, 4];
    let n = 48;
    let module = TokenMergeAttentionConfig::new(canvas, MergeAmount::Count(12))
        .with_window([2, 2, 2])
        .with_gap(2)
        .init()
        .unwrap();
    let mut rng = SeedRng::new(8);
    let mut state = MergeState::<B64>::new();
    let mut slots = vec![];
    for _ in 0..4 {
        let t = |rng: &mut SeedRng| tensor4(&rng.normals(n * 4), [1, 1, n, 4]);
        let (q, k, v) = (t(&mut rng), t(&mut rng), t(&mut rng));
        module.forward_with_state(q, k, v, None, &mut state).unwrap();
        slots.push(state.plan().unwrap().slot_of_token().into_data().iter::<i64>().collect::<Vec<_>>());
    }
    assert_eq!(state.calls(), 4);
    assert_eq!(slots[0], slots[1], "call 2 reuses call 1's matching");
    assert_ne!(slots[1], slots[2], "call 3 matches again (fresh random keys)");
    assert_eq!(slots[2], slots[3]);
}

/// A shared metric (one matching per batch element) merges every head the same way, and the
/// KV-only output equals dense attention over explicitly merged keys with the size bias.
#[test]
#[allow(clippy::needless_range_loop)] // the oracle indexes several arrays by the same batch
fn shared_metric_and_kv_only_against_explicit_merge() {
    let (b, h, d) = (2, 3, 4);
    let canvas = [2, 3, 4];
    let text = TextSpec::after(2);
    let n = 24 + 2;
    let module = TokenMergeAttentionConfig::new(canvas, MergeAmount::Count(5))
        .with_text(text)
        .with_window([1, 2, 2])
        .with_metric(MergeMetric::Shared)
        .init()
        .unwrap();
    let mut rng = SeedRng::new(4);
    let (q, k, v) = (rng.normals(b * h * n * d), rng.normals(b * h * n * d), rng.normals(b * h * n * d));
    let metric = rng.normals(b * n * 7);
    let metric_t = || Tensor::<B64, 3>::from_data(TensorData::new(metric.clone(), [b, n, 7]), fopts::<B64>(&dev()));
    let (qt, kt, vt) = (tensor4(&q, [b, h, n, d]), tensor4(&k, [b, h, n, d]), tensor4(&v, [b, h, n, d]));
    let mut state = MergeState::new();
    let out = module.forward_with_state(qt.clone(), kt.clone(), vt.clone(), Some(metric_t()), &mut state).unwrap();
    // Oracle: the brute-force groups, merged by hand, dense attention with log(size) per key.
    let layout = module.layout();
    let reps = brute_representatives(&metric, b, n, 7, layout);
    let mut want = vec![];
    let mut lse_want = vec![];
    for bi in 0..b {
        let kept: Vec<usize> = (0..n).filter(|&t| reps[bi][t] == t).collect();
        let members = |t: usize| (0..n).filter(|&u| reps[bi][u] == t).collect::<Vec<_>>();
        for hi in 0..h {
            let base = (bi * h + hi) * n;
            for i in 0..n {
                let mut scores = vec![];
                for &t in &kept {
                    let m = members(t);
                    let kbar: Vec<f64> = (0..d)
                        .map(|c| m.iter().map(|&u| k[(base + u) * d + c]).sum::<f64>() / m.len() as f64)
                        .collect();
                    let s: f64 = (0..d).map(|c| q[(base + i) * d + c] * kbar[c]).sum::<f64>() / (d as f64).sqrt();
                    scores.push(s + (m.len() as f64).ln());
                }
                let mx = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = scores.iter().map(|s| (s - mx).exp()).sum();
                lse_want.push(mx + z.ln());
                for c in 0..d {
                    let mut acc = 0.0;
                    for (j, &t) in kept.iter().enumerate() {
                        let m = members(t);
                        let vbar = m.iter().map(|&u| v[(base + u) * d + c]).sum::<f64>() / m.len() as f64;
                        acc += (scores[j] - mx).exp() / z * vbar;
                    }
                    want.push(acc);
                }
            }
        }
    }
    assert!(rel_err(&values(out.output), &want) < 1e-12);
    assert!(rel_err(&values(out.lse), &lse_want) < 1e-12);
    // Text never merges.
    assert!((0..b).all(|bi| (24..26).all(|t| reps[bi][t] == t)));
}

/// Bad input gets errors that name the values.
#[test]
fn bad_input_is_rejected_with_the_values() {
    let err = |c: TokenMergeAttentionConfig| c.init().unwrap_err().to_string();
    let e = err(TokenMergeAttentionConfig::new([2, 4, 4], MergeAmount::Count(1)).with_window([4, 3, 3]));
    assert!(e.contains("merge window") && e.contains('4') && e.contains("canvas"), "{e}");
    let e = err(TokenMergeAttentionConfig::new([3, 4, 4], MergeAmount::Count(1000)).with_window([2, 2, 2]));
    assert!(e.contains("1000") && e.contains("sources"), "{e}");
    let e = err(TokenMergeAttentionConfig::new([3, 4, 4], MergeAmount::Ratio(1.5)).with_window([2, 2, 2]));
    assert!(e.contains("1.5"), "{e}");
    let e = err(TokenMergeAttentionConfig::new([3, 4, 4], MergeAmount::Count(1)).with_window([0, 2, 2]));
    assert!(e.contains("zero"), "{e}");
    let e = err(TokenMergeAttentionConfig::new([3, 4, 4], MergeAmount::Count(1)).with_window([2, 2, 2]).with_gap(0));
    assert!(e.contains("gap"), "{e}");

    let module =
        TokenMergeAttentionConfig::new([3, 4, 4], MergeAmount::Count(4)).with_window([2, 2, 2]).init().unwrap();
    let t = |n: usize| tensor4(&SeedRng::new(1).normals(n * 4), [1, 1, n, 4]);
    match module.forward(t(47), t(47), t(47)) {
        Err(DitAttentionError::SequenceLength { got: 47, expected: 48, .. }) => {}
        other => panic!("expected a sequence-length error, got {other:?}"),
    }
    let layout = module.layout().clone();
    let e = MergePlan::new(t(40), Arc::new(layout.clone()), MergeWeighting::Mean, None).unwrap_err().to_string();
    assert!(e.contains("48") && e.contains("40"), "{e}");
    let plan = MergePlan::new(t(48), Arc::new(layout), MergeWeighting::Mean, None).unwrap();
    let e = plan.merge(tensor4(&SeedRng::new(1).normals(2 * 48 * 4), [1, 2, 48, 4]));
    assert!(e.is_ok(), "a plan from a one-head metric serves every head");
    let e = plan.merge(t(44)).unwrap_err().to_string();
    assert!(e.contains("44"), "{e}");
    let shared = TokenMergeAttentionConfig::new([3, 4, 4], MergeAmount::Count(4))
        .with_window([2, 2, 2])
        .with_metric(MergeMetric::Shared)
        .init()
        .unwrap();
    let e = shared.forward(t(48), t(48), t(48)).unwrap_err().to_string();
    assert!(e.contains("Shared"), "{e}");
}

/// The module is a `VideoAttention` variant: serde round trip, and it runs through the enum.
#[test]
fn token_merge_is_a_video_attention_variant() {
    let config = VideoAttentionConfig::TokenMerge(
        TokenMergeAttentionConfig::new([3, 4, 4], MergeAmount::Ratio(0.25))
            .with_window([2, 2, 2])
            .with_mode(MergeMode::Full),
    );
    let json = serde_json::to_string(&config).unwrap();
    let back: VideoAttentionConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(back, config);
    let attention = back.init().unwrap();
    let t = || tensor4(&SeedRng::new(2).normals(2 * 48 * 8), [1, 2, 48, 8]);
    let out = attention.forward(t(), t(), t()).unwrap();
    assert_eq!(out.dims(), [1, 2, 48, 8]);
    let bias = Tensor::<B64, 3>::zeros([1, 2, 48], fopts::<B64>(&dev()));
    assert!(attention.forward_with(t(), t(), t(), Some(bias)).is_err());
}
