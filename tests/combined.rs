//! Pattern and Combined attention (spec section 8) on the CPU reference backend, in f64: the
//! statistics, the per-head choice and the pattern output against a brute force written from
//! the spec; dynamic heads against the dynamic module; exactness on frame-periodic heads;
//! warm-up; the enum variant; errors.

mod common;

use burn::tensor::{Tensor, TensorData};
use common::combined::{BruteStats, Geo, Head, brute_choice, brute_pattern, brute_stats, make_inputs};
use common::merge::fopts;
use common::{B64, cases, rel_err, values};
use dit_attention::combined::{CombinedAttentionConfig, HeadChoice};
use dit_attention::dynamic::{ThresholdSchedule, Thresholds};
use dit_attention::{AttentionOptions, CallPosition, Canvas, TextSpec, VideoAttentionConfig, dense_attention};
use proptest::prelude::*;

fn dev() -> burn::backend::ndarray::NdArrayDevice {
    Default::default()
}

fn tensor4(v: &[f64], shape: [usize; 4]) -> Tensor<B64, 4> {
    Tensor::from_data(TensorData::new(v.to_vec(), shape), fopts::<B64>(&dev()))
}

#[derive(Debug, Clone)]
struct Case {
    geo: Geo,
    samples: usize,
    batch: usize,
    heads: usize,
    periodic: Vec<bool>,
    sharpness: f64,
    sparse_mass: f64,
    similarity: f64,
    seed: u64,
    data_seed: u64,
}

fn case() -> impl Strategy<Value = Case> {
    let text = prop_oneof![
        Just(TextSpec::none()),
        (1usize..=4).prop_map(TextSpec::before),
        (1usize..=4).prop_map(TextSpec::after)
    ];
    ((2usize..=4, 1usize..=3, 1usize..=4), text, (2usize..=6, 2usize..=5), (1usize..=2, 1usize..=3), any::<u64>())
        .prop_flat_map(|(c, text, dims, bh, seed)| {
            let hw = c.1 * c.2;
            (
                Just((c, text, dims, bh, seed)),
                1..=hw,
                proptest::collection::vec(any::<bool>(), bh.0 * bh.1),
                prop_oneof![Just(1.0), Just(3.0)],
                prop_oneof![Just(0.5), Just(0.9), Just(1.0)],
                prop_oneof![Just(-1.0), Just(0.5), Just(0.9)],
                any::<u64>(),
            )
        })
        .prop_map(|((c, text, dims, bh, seed), samples, periodic, sharpness, sparse_mass, similarity, data_seed)| {
            Case {
                geo: Geo { canvas: Canvas::new(c.0, c.1, c.2).unwrap(), text, d: dims.0, dv: dims.1 },
                samples,
                batch: bh.0,
                heads: bh.1,
                periodic,
                sharpness,
                sparse_mass,
                similarity,
                seed,
                data_seed,
            }
        })
}

impl Case {
    fn config(&self) -> CombinedAttentionConfig {
        CombinedAttentionConfig::new(self.geo.canvas.dims())
            .with_text(self.geo.text)
            .with_pattern_samples(self.samples)
            .with_sparse_mass(self.sparse_mass)
            .with_similarity(self.similarity)
            .with_block(3)
            .with_block_samples(2)
            .with_sink_blocks(1)
            .with_schedule(ThresholdSchedule::Constant(Thresholds { tau: 0.7, min_ratio: 0.1, max_ratio: 0.8 }))
            .with_seed(self.seed)
    }
}

fn check(case: &Case, position: Option<CallPosition>) -> Result<(), TestCaseError> {
    let g = case.geo;
    let (bh, n, d, dv) = (case.batch * case.heads, g.n(), g.d, g.dv);
    let module = case.config().init().unwrap();
    let [q, k, v] = make_inputs(&g, &case.periodic, case.sharpness, case.data_seed);
    let shape = |c| [case.batch, case.heads, n, c];
    let out =
        module.forward_at(tensor4(&q, shape(d)), tensor4(&k, shape(d)), tensor4(&v, shape(dv)), position).unwrap();
    let spatial = module.sampled_spatial(position);
    prop_assert_eq!(spatial.len(), case.samples);
    prop_assert!(spatial.windows(2).all(|w| w[0] < w[1]) && spatial.iter().all(|&r| r < g.hw()));
    let scale = 1.0 / (d as f64).sqrt();
    let stats = out.stats.clone().expect("past the warm-up");
    let (got_out, got_lse) = (values(out.output), values(out.lse));
    let mut dynamic_heads = vec![];
    for i in 0..bh {
        let head = Head {
            q: &q[i * n * d..(i + 1) * n * d],
            k: &k[i * n * d..(i + 1) * n * d],
            v: &v[i * n * dv..(i + 1) * n * dv],
        };
        let brute: BruteStats = brute_stats(&g, &head, &spatial, scale, 0.2);
        for f in 0..g.frames() {
            for c in 0..=g.frames() {
                prop_assert!((stats.mass(i, f, c) - brute.mass[f][c]).abs() < 1e-9, "head {} mass {} {}", i, f, c);
            }
        }
        prop_assert!((stats.top_mass[i] - brute.top_mass).abs() < 1e-9);
        prop_assert!(
            (stats.similarity[i] - brute.similarity).abs() < 1e-9,
            "{} vs {}",
            stats.similarity[i],
            brute.similarity
        );
        let clear =
            (brute.top_mass - case.sparse_mass).abs() > 1e-9 && (brute.similarity - case.similarity).abs() > 1e-9;
        if clear {
            prop_assert_eq!(out.heads[i], brute_choice(&brute, case.sparse_mass, case.similarity));
        }
        if case.periodic[i] {
            prop_assert!(brute.similarity > 1.0 - 1e-9, "a periodic head repeats: {}", brute.similarity);
        }
        match out.heads[i] {
            HeadChoice::Pattern => {
                let (want, want_lse) = brute_pattern(&g, &head, &brute, scale);
                let got = &got_out[i * n * dv..(i + 1) * n * dv];
                prop_assert!(rel_err(got, &want) < 1e-9, "head {} output {}", i, rel_err(got, &want));
                prop_assert!(rel_err(&got_lse[i * n..(i + 1) * n], &want_lse) < 1e-9, "head {} lse", i);
                let (t, hw, text) = (g.frames() as f64, g.hw() as f64, g.text.len as f64);
                let anchor = if text > 0.0 { text } else { hw };
                let pairs = (text + hw) * n as f64 + t * hw * hw + t * hw * anchor;
                prop_assert!((out.density[i] - pairs / (n * n) as f64).abs() < 1e-12);
            }
            HeadChoice::Dynamic => dynamic_heads.push(i),
        }
    }
    // Dynamic heads: the dynamic module over the same heads, flattened.
    if !dynamic_heads.is_empty() {
        let pick = |x: &[f64], c: usize| {
            dynamic_heads.iter().flat_map(|&i| x[i * n * c..(i + 1) * n * c].to_vec()).collect::<Vec<_>>()
        };
        let p = dynamic_heads.len();
        let dynamic = module.dynamic().forward_at(
            tensor4(&pick(&q, d), [1, p, n, d]),
            tensor4(&pick(&k, d), [1, p, n, d]),
            tensor4(&pick(&v, dv), [1, p, n, dv]),
            None,
            position,
        );
        let dynamic = dynamic.unwrap();
        let want = values(dynamic.output.clone());
        let got = pick(&got_out, dv);
        prop_assert!(rel_err(&got, &want) < 1e-12);
        for (j, x) in dynamic.head_densities().into_iter().enumerate() {
            prop_assert!((out.density[dynamic_heads[j]] - x).abs() < 1e-12);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(cases(48))]

    /// Statistics, choices, pattern outputs and LSEs against the brute force; dynamic heads as
    /// the dynamic module computes them; densities.
    #[test]
    fn combined_attention_matches_the_brute_force(case in case(), layer in 0usize..3, step in 5usize..50) {
        check(&case, Some(CallPosition::new(layer, step)))?;
    }
}

/// Heads whose frames repeat (no text): the mass map is uniform, every head is a pattern head,
/// and pattern attention is exact attention (output and LSE).
#[test]
fn periodic_heads_are_exact_pattern_heads() {
    let g = Geo { canvas: Canvas::new(4, 2, 3).unwrap(), text: TextSpec::none(), d: 5, dv: 3 };
    let n = g.n();
    let [q, k, v] = make_inputs(&g, &[true, true, true], 0.5, 21);
    let module = CombinedAttentionConfig::new([4, 2, 3]).with_pattern_samples(3).init().unwrap();
    let t = |x: &[f64], c| tensor4(x, [1, 3, n, c]);
    let out = module.forward_at(t(&q, 5), t(&k, 5), t(&v, 3), Some(CallPosition::new(0, 10))).unwrap();
    assert_eq!(out.heads, vec![HeadChoice::Pattern; 3], "{:?}", out.stats);
    let dense = dense_attention(t(&q, 5), t(&k, 5), t(&v, 3), None, AttentionOptions::default()).unwrap();
    assert!(rel_err(&values(out.output), &values(dense.output)) < 1e-12);
    assert!(rel_err(&values(out.lse), &values(dense.lse)) < 1e-12);
    assert!(out.density.iter().all(|&x| x < 1.0));
}

/// One frame: no other frame to share a pattern with, every head dynamic; thresholds that keep
/// every block make every head dense, density 1 each.
#[test]
fn single_frame_is_dynamic() {
    let g = Geo { canvas: Canvas::new(1, 3, 4).unwrap(), text: TextSpec::before(2), d: 4, dv: 3 };
    let n = g.n();
    let [q, k, v] = make_inputs(&g, &[true, false, true], 1.0, 6);
    let t = |x: &[f64], c| tensor4(x, [1, 3, n, c]);
    let dense =
        values(dense_attention(t(&q, 4), t(&k, 4), t(&v, 3), None, AttentionOptions::default()).unwrap().output);
    let all = ThresholdSchedule::Constant(Thresholds { tau: 1.0, min_ratio: 0.0, max_ratio: 1.0 });
    let module = CombinedAttentionConfig::new([1, 3, 4])
        .with_text(TextSpec::before(2))
        .with_pattern_samples(2)
        .with_similarity(-1.0)
        .with_schedule(all)
        .init()
        .unwrap();
    let out = module.forward_at(t(&q, 4), t(&k, 4), t(&v, 3), Some(CallPosition::new(0, 9))).unwrap();
    assert_eq!(out.heads, vec![HeadChoice::Dynamic; 3]);
    assert_eq!(out.density, vec![1.0; 3]);
    assert!(rel_err(&values(out.output), &dense) < 1e-12);
}

/// Warm-up steps run dense attention.
#[test]
fn warmup_is_dense() {
    let g = Geo { canvas: Canvas::new(3, 2, 2).unwrap(), text: TextSpec::before(2), d: 4, dv: 3 };
    let n = g.n();
    let [q, k, v] = make_inputs(&g, &[false, true], 1.0, 2);
    let module =
        CombinedAttentionConfig::new([3, 2, 2]).with_text(TextSpec::before(2)).with_pattern_samples(2).init().unwrap();
    let t = |x: &[f64], c| tensor4(x, [1, 2, n, c]);
    let dense =
        values(dense_attention(t(&q, 4), t(&k, 4), t(&v, 3), None, AttentionOptions::default()).unwrap().output);
    for (step, warm) in [(0, true), (4, true), (5, false)] {
        let out = module.forward_at(t(&q, 4), t(&k, 4), t(&v, 3), Some(CallPosition::new(0, step))).unwrap();
        assert_eq!(out.heads.is_empty(), warm, "step {step}");
        if warm {
            assert!(rel_err(&values(out.output), &dense) < 1e-12 && out.density == vec![1.0; 2]);
        }
    }
}

/// The `Combined` variant: serde round trip, same output as the module, no bias.
#[test]
fn combined_variant_swaps_in_by_config() {
    let g = Geo { canvas: Canvas::new(3, 2, 2).unwrap(), text: TextSpec::after(2), d: 4, dv: 3 };
    let n = g.n();
    let [q, k, v] = make_inputs(&g, &[false, true], 1.0, 4);
    let config = CombinedAttentionConfig::new([3, 2, 2])
        .with_text(TextSpec::after(2))
        .with_pattern_samples(2)
        .with_block(4)
        .with_block_samples(2);
    let variant = VideoAttentionConfig::Combined(config.clone());
    let json = serde_json::to_string(&variant).unwrap();
    let back: VideoAttentionConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(back, variant);
    let t = |x: &[f64], c| tensor4(x, [1, 2, n, c]);
    let position = Some(CallPosition::new(2, 30));
    let via_enum = back.init().unwrap().forward_at(t(&q, 4), t(&k, 4), t(&v, 3), None, position).unwrap();
    let direct = config.init().unwrap().forward_at(t(&q, 4), t(&k, 4), t(&v, 3), position).unwrap();
    assert_eq!(values(via_enum.output), values(direct.output));
    let bias = Tensor::<B64, 3>::zeros([1, 2, n], fopts::<B64>(&dev()));
    let err = VideoAttentionConfig::Combined(config).init().unwrap().forward_at(
        t(&q, 4),
        t(&k, 4),
        t(&v, 3),
        Some(bias),
        position,
    );
    assert!(err.unwrap_err().to_string().contains("bias"));
}

/// Bad input names its values.
#[test]
fn bad_input_gets_clear_errors() {
    let base = CombinedAttentionConfig::new([3, 2, 2]).with_pattern_samples(2);
    for (config, want) in [
        (base.clone().with_pattern_samples(0), "samples 0 positions per frame"),
        (base.clone().with_pattern_samples(5), "the 4 positions of a frame"),
        (base.clone().with_top_fraction(0.0), "top_fraction must be in (0, 1], got 0"),
        (base.clone().with_sparse_mass(1.5), "sparse_mass must be in (0, 1], got 1.5"),
        (base.clone().with_similarity(2.0), "similarity must be in [-1, 1], got 2"),
        (base.clone().with_block_samples(100), "block size 64"),
    ] {
        let err = config.init().expect_err(want).to_string();
        assert!(err.contains(want), "{err:?} should contain {want:?}");
    }
}
