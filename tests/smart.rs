//! Smart attention (spec section 7) on the CPU reference backend, in f64: the profiling, the
//! per-head choice and the masked output against a brute force written from the spec, the
//! token-major layout, the band from a density, warm-up, the enum variant, and errors.

mod common;

use burn::tensor::{Tensor, TensorData};
use common::merge::fopts;
use common::smart::{SmartCase, brute_smart, smart_case, two_class_inputs};
use common::{B64, cases, rel_err, values};
use dit_attention::smart::{Band, BandSpec, HeadClass, SmartAttentionConfig};
use dit_attention::{
    AttentionOptions, CallPosition, Canvas, DitAttentionError, TextSpec, VideoAttentionConfig, dense_attention,
};
use proptest::prelude::*;

fn dev() -> burn::backend::ndarray::NdArrayDevice {
    Default::default()
}

fn tensor4(v: &[f64], shape: [usize; 4]) -> Tensor<B64, 4> {
    Tensor::from_data(TensorData::new(v.to_vec(), shape), fopts::<B64>(&dev()))
}

fn check_case(case: &SmartCase, position: Option<CallPosition>) -> Result<(), TestCaseError> {
    let module = case.config().init().unwrap();
    let x = case.inputs::<B64>(&dev());
    let rows = module.sampled_rows(position);
    prop_assert_eq!(rows.len(), case.samples);
    prop_assert!(rows.windows(2).all(|w| w[0] < w[1]), "rows distinct and ascending: {:?}", rows);
    let video = if case.text.placement == dit_attention::TextPlacement::Before { case.text.len } else { 0 };
    prop_assert!(rows.iter().all(|&r| r >= video && r < video + case.canvas.len()), "video rows only: {:?}", rows);
    let scale = 1.0 / (case.dims.0 as f64).sqrt();
    let brute = brute_smart(case, &x.values, &rows, scale);
    let out = module.forward_at(x.q, x.k, x.v, x.bias, position).unwrap();
    let (n, dv) = (case.n(), case.dims.1);
    if module.band().density() == 1.0 {
        // The band covers every frame: dense attention, no profiling.
        prop_assert!(out.heads.is_empty());
    } else {
        let clear = brute.clear(1e-6);
        for (i, (&got, &want)) in out.heads.iter().zip(&brute.heads).enumerate() {
            prop_assert!(
                !clear[i] || got == want,
                "head {} chose {:?}, the brute force {:?} ({:?})",
                i,
                got,
                want,
                brute.errors[i]
            );
            for c in 0..2 {
                let (a, b) = (out.errors[i][c], brute.errors[i][c]);
                prop_assert!((a - b).abs() <= 1e-9 * b.abs().max(1e-12), "head {} error {}: {} vs {}", i, c, a, b);
            }
        }
        prop_assert_eq!(out.heads.len(), case.batch * case.heads);
    }
    let heads = if out.heads.is_empty() { brute.heads.clone() } else { out.heads.clone() };
    let (want_out, want_lse) = brute.for_classes(&heads, n, dv);
    let (got_out, got_lse) = (values(out.output), values(out.lse));
    prop_assert!(rel_err(&got_out, &want_out) < 1e-10, "output error {}", rel_err(&got_out, &want_out));
    prop_assert!(rel_err(&got_lse, &want_lse) < 1e-10, "lse error {}", rel_err(&got_lse, &want_lse));
    Ok(())
}

proptest! {
    #![proptest_config(cases(64))]

    /// Decisions, profiled errors, output and LSE against the brute force (text before, after
    /// or none; sink on or off; any band width; with and without a bias).
    #[test]
    fn smart_attention_matches_the_brute_force(case in smart_case(), layer in 0usize..3, step in 0usize..50) {
        check_case(&case, Some(CallPosition::new(layer, step)))?;
    }

    /// The band from a target density is the widest one at or below it.
    #[test]
    fn density_picks_the_widest_band_below_the_target(t in 1usize..=20, s in 0.001f64..=1.0, sink in any::<bool>()) {
        let canvas = Canvas::new(t, 2, 3).unwrap();
        let band = Band::new(canvas, BandSpec::Density(s), sink).unwrap();
        prop_assert!(band.width == 0 || band.density() <= s);
        if band.width + 1 < t {
            let wider = Band::new(canvas, BandSpec::Width(band.width + 1), sink).unwrap();
            prop_assert!(wider.density() > s, "width {} has density {} <= {}", band.width + 1, wider.density(), s);
        }
        let brute = (0..t).flat_map(|a| (0..t).map(move |b| (a, b)))
            .filter(|&(a, b)| a.abs_diff(b) <= band.width || (sink && b == 0)).count() as f64 / (t * t) as f64;
        prop_assert!((band.density() - brute).abs() < 1e-15);
    }
}

/// The temporal plan reads its inputs in token-major order `(h, w, t)`, text in place, and the
/// permutation and its inverse are exact.
#[test]
fn temporal_layout_is_token_major() {
    for text in [TextSpec::none(), TextSpec::before(3), TextSpec::after(2)] {
        let canvas = Canvas::new(4, 3, 5).unwrap();
        let band = Band::new(canvas, BandSpec::Width(1), true).unwrap();
        let plan = band.plan(HeadClass::Temporal, text).unwrap();
        let gather = plan.gather().expect("temporal heads gather");
        let before = if text.placement == dit_attention::TextPlacement::Before { text.len } else { 0 };
        let mut want: Vec<u32> = (0..before as u32).collect();
        let mut coords: Vec<[usize; 3]> = (0..canvas.len()).map(|i| canvas.coords(i)).collect();
        coords.sort_by_key(|c| (c[1], c[2], c[0]));
        want.extend(coords.iter().map(|&c| (before + canvas.index(c)) as u32));
        want.extend((before + canvas.len()) as u32..(canvas.len() + text.len) as u32);
        assert_eq!(gather.forward(), &want[..]);
        for (i, &p) in gather.forward().iter().enumerate() {
            assert_eq!(gather.inverse()[p as usize] as usize, i);
        }
        assert!(band.plan(HeadClass::Spatial, text).unwrap().gather().is_none(), "spatial heads read natural order");
    }
}

/// Heads built to be spatial (queries and keys one-hot on the frame) and temporal (one-hot on
/// the spatial position) are classified so, and their output is the brute force's.
#[test]
fn frame_heads_are_spatial_and_position_heads_temporal() {
    let canvas = Canvas::new(6, 2, 3).unwrap();
    for (text, batch) in [(0, 1), (2, 2)] {
        let [q, k, v] = two_class_inputs(canvas, text, batch, 7);
        let n = text + canvas.len();
        let d = 6;
        let config = SmartAttentionConfig::new([6, 2, 3]).with_text(TextSpec::before(text)).with_samples(12);
        let module = config.init().unwrap();
        let out = module
            .forward_at(
                tensor4(&q, [batch, 2, n, d]),
                tensor4(&k, [batch, 2, n, d]),
                tensor4(&v, [batch, 2, n, 3]),
                None,
                None,
            )
            .unwrap();
        let want: Vec<HeadClass> = (0..batch).flat_map(|_| [HeadClass::Spatial, HeadClass::Temporal]).collect();
        assert_eq!(out.heads, want, "errors {:?}", out.errors);
        for e in &out.errors {
            let (lo, hi) = (e[0].min(e[1]), e[0].max(e[1]));
            assert!(hi > 10.0 * lo, "a clear choice: {e:?}");
        }
        let case = SmartCase {
            canvas,
            text: TextSpec::before(text),
            width: 1,
            sink: true,
            samples: 12,
            seed: 0,
            batch,
            heads: 2,
            dims: (d, 3),
            bias: None,
            data_seed: 0,
        };
        let brute = brute_smart(&case, &[q, k, v, vec![]], &module.sampled_rows(None), 1.0 / (d as f64).sqrt());
        assert_eq!(brute.heads, want);
        assert!(rel_err(&values(out.output), &brute.output) < 1e-10);
        assert!((out.density - module.band().density()).abs() < 1e-15 && out.density < 1.0);
    }
}

/// A band covering every frame, and calls in the warm-up, are dense attention.
#[test]
fn covering_band_and_warmup_are_dense() {
    let mut rng = common::SeedRng::new(3);
    let (b, h, n, d) = (2, 2, 3 + 4 * 2 * 3, 4);
    let mut t = |c| tensor4(&rng.normals(b * h * n * c), [b, h, n, c]);
    let (q, k, v) = (t(d), t(d), t(5));
    let dense =
        values(dense_attention(q.clone(), k.clone(), v.clone(), None, AttentionOptions::default()).unwrap().output);
    let base = SmartAttentionConfig::new([4, 2, 3]).with_text(TextSpec::after(3)).with_samples(5);
    for config in [
        base.clone().with_band(BandSpec::Width(3)),
        base.clone().with_band(BandSpec::Width(3)).with_sink(false),
        base.clone().with_band(BandSpec::Density(1.0)),
    ] {
        let out = config.init().unwrap().forward_at(q.clone(), k.clone(), v.clone(), None, None).unwrap();
        assert!(out.heads.is_empty() && out.density == 1.0);
        assert!(rel_err(&values(out.output), &dense) < 1e-12);
    }
    let warm = base.with_first_layers(2).with_first_steps(3).init().unwrap();
    for (layer, step, dense_call) in [(0, 10, true), (1, 10, true), (2, 2, true), (2, 3, false), (5, 40, false)] {
        let out = warm.forward_at(q.clone(), k.clone(), v.clone(), None, Some(CallPosition::new(layer, step))).unwrap();
        assert_eq!(out.heads.is_empty(), dense_call, "layer {layer}, step {step}");
        if dense_call {
            assert!(rel_err(&values(out.output), &dense) < 1e-12);
        }
    }
    assert!(!warm.is_warmup(None), "a call outside any schedule is not warm-up");
}

/// The `Smart` variant of the enum: serde round trip, and the same output as the module.
#[test]
fn smart_variant_swaps_in_by_config() {
    let case = SmartCase {
        canvas: Canvas::new(3, 2, 2).unwrap(),
        text: TextSpec::before(2),
        width: 0,
        sink: false,
        samples: 4,
        seed: 11,
        batch: 1,
        heads: 3,
        dims: (4, 4),
        bias: None,
        data_seed: 5,
    };
    let config = VideoAttentionConfig::Smart(case.config());
    let json = serde_json::to_string(&config).unwrap();
    let back: VideoAttentionConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(back, config);
    let x = case.inputs::<B64>(&dev());
    let via_enum = back.init().unwrap().forward(x.q.clone(), x.k.clone(), x.v.clone()).unwrap();
    let direct = case.config().init().unwrap().forward(x.q, x.k, x.v).unwrap();
    assert!(rel_err(&values(via_enum), &values(direct)) == 0.0);
}

/// Bad input: errors name the values.
#[test]
fn bad_input_is_named() {
    fn msg<T>(r: Result<T, DitAttentionError>) -> String {
        r.err().expect("an error").to_string()
    }
    let base = SmartAttentionConfig::new([4, 2, 3]);
    let m = msg(base.clone().with_band(BandSpec::Width(4)).init());
    assert!(m.contains("band width 4") && m.contains("4 frames"), "{m}");
    for s in [0.0, -0.5, 1.5, f64::NAN] {
        let m = msg(base.clone().with_band(BandSpec::Density(s)).init());
        assert!(m.contains("density") && m.contains(&format!("{s}")), "{m}");
    }
    for samples in [0, 25] {
        let m = msg(base.clone().with_samples(samples).init());
        assert!(m.contains(&format!("samples {samples}")) && m.contains("24 video tokens"), "{m}");
    }
    let m = msg(SmartAttentionConfig::new([0, 2, 3]).init());
    assert!(m.contains("zero"), "{m}");
    let module = base.with_text(TextSpec::before(2)).with_samples(4).init().unwrap();
    let t = |n: usize| tensor4(&vec![0.5; n * 4], [1, 1, n, 4]);
    let m = msg(module.forward_at(t(25), t(25), t(25), None, None));
    assert!(m.contains("25") && m.contains("26"), "{m}");
    let m = msg(module.forward_at(t(26), t(20), t(20), None, None));
    assert!(m.contains("20"), "{m}");
}
