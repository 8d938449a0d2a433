//! Pattern and Combined attention (spec section 8) on the CPU reference backend, in f64: the
//! statistics, the per-head choice and the pattern output against a brute force written from
//! the spec; dynamic heads against the dynamic module; with KV token merging stacked on top,
//! the dynamic heads against a brute force of the matching, the merge and dynamic attention
//! over the merged keys; exactness on frame-periodic heads; warm-up; the enum variant; errors.

mod common;

use burn::tensor::{Tensor, TensorData};
use common::combined::{BruteStats, Geo, Head, brute_choice, brute_pattern, brute_stats, make_inputs};
use common::dynamic::{DynamicCase, brute_dynamic};
use common::merge::{brute_representatives, fopts, ints};
use common::{B64, cases, rel_err, values};
use dit_attention::combined::{CombinedAttentionConfig, DEAD_KEY_BIAS, HeadChoice, KvMergeConfig};
use dit_attention::dynamic::{ThresholdSchedule, Thresholds};
use dit_attention::merge::{MergeLayout, MergeMetric};
use dit_attention::{
    AttentionOptions, CallPosition, Canvas, MergeAmount, TextPlacement, TextSpec, TokenMergeAttentionConfig,
    VideoAttentionConfig, dense_attention,
};
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
    merge: Option<KvMergeCase>,
}

/// KV token merging stacked on the case: the window, the share of the sources that merge,
/// proportional attention, keys-only metric.
#[derive(Debug, Clone)]
struct KvMergeCase {
    window: [usize; 3],
    share: f64,
    proportional: bool,
    keys_only: bool,
    seed: u64,
}

const THRESHOLDS: Thresholds = Thresholds { tau: 0.7, min_ratio: 0.1, max_ratio: 0.8 };

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
                merge: None,
            }
        })
}

/// A case with KV merging on top: windows inside the canvas. No frame-periodic heads: their
/// exact metric ties would leave the ranking to rounding.
fn merge_case() -> impl Strategy<Value = Case> {
    (case(), (1usize..=3, 1usize..=3, 1usize..=3), 0.0f64..=1.0, any::<bool>(), any::<bool>(), any::<u64>()).prop_map(
        |(mut case, (st, sy, sx), share, proportional, keys_only, seed)| {
            let [t, h, w] = case.geo.canvas.dims();
            let window = [st.min(t - 1).max(1), sy.min(h), sx.min(w)];
            case.merge = Some(KvMergeCase { window, share, proportional, keys_only, seed });
            case.periodic = vec![false; case.periodic.len()];
            case
        },
    )
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
            .with_schedule(ThresholdSchedule::Constant(THRESHOLDS))
            .with_seed(self.seed)
            .with_kv_merge(self.merge.as_ref().map(|m| {
                KvMergeConfig::new(MergeAmount::Count(self.merged(m)))
                    .with_window(m.window)
                    .with_seed(Some(m.seed))
                    .with_metric(if m.keys_only { MergeMetric::Keys } else { MergeMetric::KeysValues })
                    .with_proportional_attention(m.proportional)
            }))
    }

    /// The merge layout of a merging case (destinations drawn by the crate, like the sampled
    /// positions; everything after them is the brute force's).
    fn merge_layout(&self, m: &KvMergeCase, r: usize) -> MergeLayout {
        let module = TokenMergeAttentionConfig::new(self.geo.canvas.dims(), MergeAmount::Count(r))
            .with_text(self.geo.text)
            .with_window(m.window)
            .with_seed(Some(m.seed))
            .init()
            .unwrap();
        module.layout().clone()
    }

    /// Sources that merge: `share` of them, rounded down.
    fn merged(&self, m: &KvMergeCase) -> usize {
        let sources = self.merge_layout(m, 0).src_token.len();
        (m.share * sources as f64).floor() as usize
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
    let (got_out, got_lse) = (values(out.output.clone()), values(out.lse.clone()));
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
    if let Some(m) = &case.merge
        && !dynamic_heads.is_empty()
    {
        return check_merged_dynamic_heads(case, m, &out, &dynamic_heads, [&q, &k, &v], position);
    }
    prop_assert!(out.merge.is_none());
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

/// The dynamic heads of a merging case against the brute force: each head's matching (every
/// merged source in its best destination, the `r` most similar), its merged keys and values
/// (group means, in the layout's slot order), `log(size)` biases, the merged-away slots as dead
/// padding, then dynamic attention over them written from the spec; densities from the kept
/// blocks.
fn check_merged_dynamic_heads(
    case: &Case,
    m: &KvMergeCase,
    out: &dit_attention::CombinedOutput<B64>,
    heads: &[usize],
    [q, k, v]: [&[f64]; 3],
    position: Option<CallPosition>,
) -> Result<(), TestCaseError> {
    let g = case.geo;
    let (n, d, dv, p) = (g.n(), g.d, g.dv, heads.len());
    let layout = case.merge_layout(m, case.merged(m));
    let row = |x: &[f64], i: usize, t: usize, c: usize| x[(i * n + t) * c..(i * n + t + 1) * c].to_vec();
    let norm = |x: &[f64]| x.iter().map(|a| a * a).sum::<f64>().sqrt();
    let c = if m.keys_only { d } else { d + dv + 2 };
    let metric: Vec<f64> = heads
        .iter()
        .flat_map(|&i| (0..n).map(move |t| (i, t)))
        .flat_map(|(i, t)| {
            let (kr, vr) = (row(k, i, t, d), row(v, i, t, dv));
            if m.keys_only { kr } else { [kr.clone(), vec![norm(&kr)], vr.clone(), vec![norm(&vr)]].concat() }
        })
        .collect();
    let reps = brute_representatives(&metric, p, n, c, &layout);
    // Slots: text before, destinations, unmerged sources, text after; then dead padding.
    let text: Vec<usize> = g.text_range().collect();
    let (before, after) = if g.text.placement == TextPlacement::Before { (text, vec![]) } else { (vec![], text) };
    let plan = out.merge.as_ref().expect("dynamic heads merge");
    let kept_by_plan = ints(plan.kept_token());
    let (mut qs, mut ks, mut vs, mut bias) = (vec![], vec![], vec![], vec![]);
    for (j, &i) in heads.iter().enumerate() {
        let rep = &reps[j];
        let unmerged = layout.src_token.iter().map(|&s| s as usize).filter(|&s| rep[s] == s);
        let slots: Vec<usize> = before
            .iter()
            .copied()
            .chain(layout.dst_token.iter().map(|&t| t as usize))
            .chain(unmerged)
            .chain(after.clone())
            .collect();
        prop_assert_eq!(slots.len(), n - layout.r);
        prop_assert_eq!(&kept_by_plan[j * slots.len()..(j + 1) * slots.len()], &slots[..], "head {} slots", i);
        qs.extend_from_slice(&q[i * n * d..(i + 1) * n * d]);
        for &t in &slots {
            let group: Vec<usize> = (0..n).filter(|&u| rep[u] == t).collect();
            let mean = |x: &[f64], c: usize| -> Vec<f64> {
                (0..c)
                    .map(|ch| group.iter().map(|&u| x[(i * n + u) * c + ch]).sum::<f64>() / group.len() as f64)
                    .collect()
            };
            ks.extend(mean(k, d));
            vs.extend(mean(v, dv));
            bias.push(if m.proportional { (group.len() as f64).ln() } else { 0.0 });
        }
        ks.extend(vec![0.0; layout.r * d]);
        vs.extend(vec![0.0; layout.r * dv]);
        bias.extend(vec![DEAD_KEY_BIAS; layout.r]);
    }
    let dynamic = DynamicCase {
        canvas: g.canvas,
        text: g.text,
        block: 3,
        samples: 2,
        sinks: 1,
        thresholds: THRESHOLDS,
        seed: case.seed,
        batch: 1,
        heads: p,
        dims: (d, dv),
        bias: None,
        sharpness: case.sharpness,
        data_seed: case.data_seed,
    };
    let module = case.config().init().unwrap();
    let positions = module.dynamic().sampled_positions(position);
    let scale = 1.0 / (d as f64).sqrt();
    let brute = brute_dynamic(&dynamic, &[qs, ks, vs, bias], &positions, scale);
    let got = values(out.output.clone());
    let got_lse = values(out.lse.clone());
    let pick =
        |x: &[f64], c: usize| heads.iter().flat_map(|&i| x[i * n * c..(i + 1) * n * c].to_vec()).collect::<Vec<_>>();
    prop_assert!(rel_err(&pick(&got, dv), &brute.output) < 1e-9, "output {}", rel_err(&pick(&got, dv), &brute.output));
    prop_assert!(rel_err(&pick(&got_lse, 1), &brute.lse) < 1e-9, "lse");
    let ranges = dynamic.block_ranges();
    let nb = ranges.len();
    for (j, &i) in heads.iter().enumerate() {
        let pairs: usize = (0..nb)
            .map(|qb| ranges[qb].len() * brute.kept[j * nb + qb].iter().map(|&kb| ranges[kb].len()).sum::<usize>())
            .sum();
        prop_assert!((out.density[i] - pairs as f64 / (n * n) as f64).abs() < 1e-12, "density of head {}", i);
    }
    Ok(())
}

proptest! {
    #![proptest_config(cases(48))]

    /// KV merging on top: pattern heads as without it, dynamic heads over the merged keys.
    #[test]
    fn kv_merging_on_combined_matches_the_brute_force(case in merge_case(), layer in 0usize..3, step in 5usize..50) {
        check(&case, Some(CallPosition::new(layer, step)))?;
    }

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

/// KV merging with thresholds that keep every block: each dynamic head is token-merging
/// attention (KV-only, proportional), whatever the dead padding; pattern heads ignore the merge.
#[test]
fn kv_merging_keeping_everything_is_token_merging() {
    let g = Geo { canvas: Canvas::new(3, 3, 4).unwrap(), text: TextSpec::after(3), d: 4, dv: 3 };
    let n = g.n();
    let [q, k, v] = make_inputs(&g, &[false, false, false], 1.0, 11);
    let all = ThresholdSchedule::Constant(Thresholds { tau: 1.0, min_ratio: 0.0, max_ratio: 1.0 });
    let merge = KvMergeConfig::new(MergeAmount::Count(9)).with_window([2, 2, 2]);
    let module = CombinedAttentionConfig::new([3, 3, 4])
        .with_text(TextSpec::after(3))
        .with_pattern_samples(2)
        .with_sparse_mass(1e-9)
        .with_block(5)
        .with_block_samples(2)
        .with_schedule(all)
        .with_kv_merge(Some(merge))
        .init()
        .unwrap();
    let t = |x: &[f64], c| tensor4(x, [1, 3, n, c]);
    let out = module.forward_at(t(&q, 4), t(&k, 4), t(&v, 3), Some(CallPosition::new(0, 9))).unwrap();
    assert_eq!(out.heads, vec![HeadChoice::Dynamic; 3]);
    let tome = TokenMergeAttentionConfig::new([3, 3, 4], MergeAmount::Count(9))
        .with_text(TextSpec::after(3))
        .with_window([2, 2, 2])
        .init()
        .unwrap()
        .forward(t(&q, 4), t(&k, 4), t(&v, 3))
        .unwrap();
    let dense =
        values(dense_attention(t(&q, 4), t(&k, 4), t(&v, 3), None, AttentionOptions::default()).unwrap().output);
    let got = values(out.output);
    assert!(rel_err(&got, &values(tome)) < 1e-12);
    assert!(rel_err(&got, &dense) > 1e-6, "merging changed the output");
    assert_eq!(out.merge.map(|p| p.merged_len()), Some(n - 9));
}

/// Warm-up steps run dense attention and take no statistics; past them `statistics_at` returns
/// the statistics the call decided from.
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
        let alone = module.statistics_at(&t(&q, 4), &t(&k, 4), Some(CallPosition::new(0, step))).unwrap();
        assert_eq!(alone, out.stats, "step {step}");
    }
    // Keys in another dtype than the queries: an error naming both.
    let k32 = t(&k, 4).cast(burn::tensor::DType::F32);
    let err = module.statistics_at(&t(&q, 4), &k32, None).unwrap_err().to_string();
    assert!(err.contains("F32") && err.contains("F64"), "{err}");
    // Keys of another head count than the queries: an error naming both shapes.
    let err = module.statistics_at(&t(&q, 4), &tensor4(&k[..n * 4], [1, 1, n, 4]), None).unwrap_err().to_string();
    assert!(err.contains("[1, 2, ") && err.contains("[1, 1, "), "{err}");
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
        .with_block_samples(2)
        .with_kv_merge(Some(KvMergeConfig::new(MergeAmount::Ratio(0.25)).with_window([1, 2, 1])));
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
        (
            base.clone()
                .with_kv_merge(Some(KvMergeConfig::new(MergeAmount::Count(1)).with_metric(MergeMetric::Shared))),
            "not `shared`",
        ),
        (
            base.clone().with_kv_merge(Some(KvMergeConfig::new(MergeAmount::Count(9)).with_window([1, 2, 2]))),
            "cannot merge 9 tokens",
        ),
        (base.clone().with_kv_merge(Some(KvMergeConfig::new(MergeAmount::Count(1)).with_window([1, 3, 1]))), "window"),
    ] {
        let err = config.init().expect_err(want).to_string();
        assert!(err.contains(want), "{err:?} should contain {want:?}");
    }
}
