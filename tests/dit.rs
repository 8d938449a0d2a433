//! The host video DiT: patchify, 3D rotary embedding, the model's shapes and errors, every attention
//! variant swapped in by configuration, schedules by layer and step, the STA mask search, and
//! gradients through the model against finite differences.

mod common;

use burn::backend::Autodiff;
use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::DType;
use burn::tensor::{Tensor, TensorData};
use common::*;
use dit_attention::dit::{
    AttentionContext, AttentionProbe, AttentionScheduleConfig, Rope3d, ScheduleRule, StaSearchConfig,
    StaWindowSchedule, VideoDit, VideoDitConfig, euler_sample, patchify, unpatchify,
};
use dit_attention::{
    BlockSparseAttentionConfig, CallPosition, Canvas, CombinedAttentionConfig, DenseAttentionConfig,
    DynamicSparseAttentionConfig, MergeAmount, PatternSpec, SlidingTileAttentionConfig, SmartAttentionConfig,
    TextPlacement, TextSpec, TileShape, TokenMergeAttentionConfig, VideoAttentionConfig,
};
use proptest::prelude::*;

fn tensor<BK: burn::tensor::backend::Backend, const D: usize>(v: Vec<f64>, shape: [usize; D]) -> Tensor<BK, D> {
    Tensor::from_data(TensorData::new(v, shape).convert::<BK::FloatElem>(), opts::<BK>())
}

/// Fixes the CPU device's default float dtype to f32 before any test makes a tensor: burn keeps
/// one default per device for `NdArray<f32>` and `NdArray<f64>`, locked by the first tensor
/// made, and the model's weights take it (the f64 test casts its model).
fn device() -> burn::backend::ndarray::NdArrayDevice {
    static INIT: std::sync::Once = std::sync::Once::new();
    let device = Default::default();
    INIT.call_once(|| burn::tensor::set_default_dtypes::<B32>(&device, DType::F32, DType::I64).unwrap());
    device
}

/// Casts every weight to f64 (burn creates parameters in the device's default float dtype, f32).
struct ToF64;

impl<BK: burn::tensor::backend::Backend> ModuleMapper<BK> for ToF64 {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<BK, D>>) -> Param<Tensor<BK, D>> {
        let (id, tensor, mapper) = param.consume();
        Param::from_mapped_value(id, tensor.cast(DType::F64), mapper)
    }
}

proptest! {
    #![proptest_config(cases(16))]

    /// Every feature of every token is the latent pixel the layout names; unpatchify inverts it.
    #[test]
    fn patchify_places_every_pixel(
        c in 1usize..3, p in (1usize..3, 1usize..3, 1usize..3), n in (1usize..3, 1usize..4, 1usize..4), seed in any::<u64>()
    ) {
        let _ = device();
        let patch = [p.0, p.1, p.2];
        let dims = [n.0 * p.0, n.1 * p.1, n.2 * p.2];
        let mut rng = SeedRng::new(seed);
        let (latent, lv) = randn::<B64, 5>(&mut rng, [2, c, dims[0], dims[1], dims[2]]);
        let tokens = patchify(latent.clone(), patch).unwrap();
        let got = values(tokens.clone());
        let f = c * patch.iter().product::<usize>();
        for b in 0..2 {
            for (tok, want_tok) in (0..n.0 * n.1 * n.2).map(|i| (i, [i / (n.1 * n.2), (i / n.2) % n.1, i % n.2])) {
                for feat in 0..f {
                    let (ch, r) = (feat / (f / c), feat % (f / c));
                    let off = [r / (p.1 * p.2), (r / p.2) % p.1, r % p.2];
                    let px = [want_tok[0] * p.0 + off[0], want_tok[1] * p.1 + off[1], want_tok[2] * p.2 + off[2]];
                    let want = lv[(((b * c + ch) * dims[0] + px[0]) * dims[1] + px[1]) * dims[2] + px[2]];
                    prop_assert_eq!(got[(b * n.0 * n.1 * n.2 + tok) * f + feat], want);
                }
            }
        }
        let back = unpatchify(tokens, [n.0, n.1, n.2], patch, c).unwrap();
        prop_assert_eq!(values(back), lv);
    }
}

/// Rotary embedding: norms kept, text untouched, and scores depend only on the canvas offset
/// between query and key.
#[test]
fn rope_scores_depend_on_relative_position_only() {
    let _ = device();
    let canvas = [3, 4, 5];
    let video = 60;
    let text = TextSpec::before(2);
    let d = 16;
    let rope = Rope3d::<B64>::new(canvas, text, [4, 6, 6], 10000.0, &Default::default(), DType::F64).unwrap();
    let mut rng = SeedRng::new(5);
    let qv = rng.normals(d);
    let kv = rng.normals(d);
    let n = video + 2;
    let rep = |v: &Vec<f64>| tensor::<B64, 4>((0..n).flat_map(|_| v.clone()).collect(), [1, 1, n, d]);
    let (q, k) = (rope.apply(rep(&qv)).unwrap(), rope.apply(rep(&kv)).unwrap());
    assert!(rope.apply(tensor::<B64, 4>(vec![0.0; n * 8], [1, 1, n, 8])).unwrap_err().to_string().contains("[62, 16]"));
    let qr = values(q.clone());
    // Text rows (first two) untouched; every row keeps its norm.
    assert_eq!(&qr[..d], &qv[..]);
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    for row in qr.chunks(d) {
        assert!((norm(row) - norm(&qv)).abs() < 1e-12);
    }
    let scores = values(q.matmul(k.swap_dims(2, 3)));
    let at = |c: [usize; 3]| 2 + c[0] * 20 + c[1] * 5 + c[2];
    let s = |a: [usize; 3], b: [usize; 3]| scores[at(a) * n + at(b)];
    let mut distinct = Vec::new();
    for a in [[0, 0, 0], [1, 2, 3], [0, 3, 1]] {
        for b in [[2, 1, 4], [1, 0, 0], [0, 3, 1]] {
            for shift in [[1, 0, 0], [0, 0, 1], [0, 1, 0]] {
                let (a2, b2) = ([0, 1, 2].map(|i| a[i] + shift[i]), [0, 1, 2].map(|i| b[i] + shift[i]));
                if (0..3).all(|i| a2[i] < canvas[i] && b2[i] < canvas[i]) {
                    assert!((s(a, b) - s(a2, b2)).abs() < 1e-10, "{a:?} {b:?} shifted by {shift:?}");
                }
            }
            distinct.push(s(a, b));
        }
    }
    // ... and do depend on it.
    assert!(distinct.iter().any(|x| (x - distinct[0]).abs() > 1e-3));
}

const CANVAS: [usize; 3] = [4, 4, 4];
const TEXT: usize = 3;

fn tiny(zero_init: bool, placement: TextPlacement) -> VideoDitConfig {
    VideoDitConfig::new(2, 32, 4, 2, 6).with_zero_init(zero_init).with_text_placement(placement).with_time_freq_dim(16)
}

struct Inputs<BK: burn::tensor::backend::Backend> {
    latent: Tensor<BK, 5>,
    t: Tensor<BK, 1>,
    text: Tensor<BK, 3>,
}

fn inputs<BK: burn::tensor::backend::Backend>(seed: u64) -> Inputs<BK> {
    let mut rng = SeedRng::new(seed);
    Inputs {
        latent: randn::<BK, 5>(&mut rng, [2, 2, 4, 8, 8]).0,
        t: tensor(vec![0.3, 0.8], [2]),
        text: randn::<BK, 3>(&mut rng, [2, TEXT, 6]).0,
    }
}

fn run<BK: dit_attention::SparseAttentionBackend>(
    model: &VideoDit<BK>,
    x: &Inputs<BK>,
    schedule: &AttentionScheduleConfig,
    step: usize,
) -> dit_attention::Result<Tensor<BK, 5>> {
    let schedule = schedule.init()?;
    let mut ctx = AttentionContext::new(&schedule);
    ctx.set_step(step);
    model.forward(x.latent.clone(), x.t.clone(), x.text.clone(), &mut ctx)
}

fn uniform(attention: VideoAttentionConfig) -> AttentionScheduleConfig {
    AttentionScheduleConfig::new(attention)
}

fn dense() -> VideoAttentionConfig {
    VideoAttentionConfig::Dense(DenseAttentionConfig::new())
}

fn sta(windows: Vec<[usize; 3]>) -> VideoAttentionConfig {
    VideoAttentionConfig::SlidingTile(
        SlidingTileAttentionConfig::new(CANVAS, [2, 2, 2], windows).with_text(TextSpec::after(TEXT)),
    )
}

#[test]
fn the_model_maps_shapes_and_names_bad_inputs() {
    let _ = device();
    let device = Default::default();
    let model = tiny(true, TextPlacement::After).init::<B32>(&device).unwrap();
    let x = inputs::<B32>(1);
    let out = run(&model, &x, &uniform(dense()), 0).unwrap();
    assert_eq!(out.dims(), [2, 2, 4, 8, 8]);
    // adaLN-Zero: the output layer starts at zero.
    assert!(values(out).iter().all(|v| *v == 0.0));

    let err = |r: dit_attention::Result<Tensor<B32, 5>>| r.unwrap_err().to_string();
    let bad_channels = Inputs { latent: randn::<B32, 5>(&mut SeedRng::new(2), [2, 3, 4, 8, 8]).0, ..inputs(1) };
    assert!(err(run(&model, &bad_channels, &uniform(dense()), 0)).contains("[2, 3, 4, 8, 8]"));
    let odd_width = Inputs { latent: randn::<B32, 5>(&mut SeedRng::new(2), [2, 2, 4, 8, 7]).0, ..inputs(1) };
    let e = err(run(&model, &odd_width, &uniform(dense()), 0));
    assert!(e.contains("w length 7") && e.contains("patch's 2"), "{e}");
    let bad_text = Inputs { text: randn::<B32, 3>(&mut SeedRng::new(2), [2, TEXT, 5]).0, ..inputs(1) };
    assert!(err(run(&model, &bad_text, &uniform(dense()), 0)).contains("[2, 3, 5]"));
    // An attention laid out for another text length names both lengths.
    let other_text = Inputs { text: randn::<B32, 3>(&mut SeedRng::new(2), [2, 5, 6]).0, ..inputs(1) };
    let e = err(run(&model, &other_text, &uniform(sta(vec![[1, 1, 1]])), 0));
    assert!(e.contains("69") && e.contains("67"), "{e}");
    let deep = uniform(dense()).with_rules(vec![ScheduleRule::new(dense()).with_layers(Some(vec![2]))]);
    assert!(err(run(&model, &x, &deep, 0)).contains("layer 2"));
    // Config errors name the values.
    let e = VideoDitConfig::new(2, 30, 4, 1, 6).init::<B32>(&device).unwrap_err().to_string();
    assert!(e.contains("30") && e.contains("4"), "{e}");
    let e = tiny(true, TextPlacement::After).with_rope_dims(Some([2, 2, 2])).init::<B32>(&device).unwrap_err();
    assert!(e.to_string().contains("[2, 2, 2]") && e.to_string().contains("8"));
}

/// Every variant runs inside the model on ndarray; STA whose windows cover the canvas equals dense,
/// and a narrow window changes the result (the schedule really reaches the attention).
#[test]
fn every_variant_swaps_into_the_model() {
    let _ = device();
    for placement in [TextPlacement::After, TextPlacement::Before] {
        let device = Default::default();
        let model = tiny(false, placement).init::<B32>(&device).unwrap();
        let x = inputs::<B32>(7);
        let text = TextSpec { len: TEXT, placement };
        let with_text = |mut c: VideoAttentionConfig| {
            match &mut c {
                VideoAttentionConfig::SlidingTile(s) => s.text = text,
                VideoAttentionConfig::BlockSparse(s) => s.text = text,
                VideoAttentionConfig::TokenMerge(s) => s.text = text,
                VideoAttentionConfig::Smart(s) => s.text = text,
                VideoAttentionConfig::Dynamic(s) => s.text = text,
                VideoAttentionConfig::Combined(s) => s.text = text,
                _ => {}
            }
            c
        };
        let want = values(run(&model, &x, &uniform(dense()), 0).unwrap());
        let full = values(run(&model, &x, &uniform(with_text(sta(vec![[3, 3, 3]]))), 0).unwrap());
        assert!(rel_err(&full, &want) < 1e-5, "{placement:?}: {}", rel_err(&full, &want));
        let narrow = values(run(&model, &x, &uniform(with_text(sta(vec![[1, 1, 1]]))), 0).unwrap());
        assert!(rel_err(&narrow, &want) > 1e-3);
        let per_head = values(
            run(&model, &x, &uniform(with_text(sta(vec![[1, 1, 1], [3, 3, 3], [1, 3, 3], [3, 1, 1]]))), 0).unwrap(),
        );
        assert!(rel_err(&per_head, &want) > 1e-4 && rel_err(&per_head, &narrow) > 1e-4);

        let variants = [
            VideoAttentionConfig::BlockSparse(BlockSparseAttentionConfig::new(
                CANVAS,
                [2, 2, 2],
                PatternSpec::Natten { window: [3, 3, 3] },
            )),
            VideoAttentionConfig::TokenMerge(TokenMergeAttentionConfig::new(CANVAS, MergeAmount::Ratio(0.25))),
            VideoAttentionConfig::Smart(SmartAttentionConfig::new(CANVAS).with_samples(8)),
            VideoAttentionConfig::Dynamic(DynamicSparseAttentionConfig::new(CANVAS).with_block(16).with_sink_blocks(1)),
            VideoAttentionConfig::Combined(
                CombinedAttentionConfig::new(CANVAS).with_block(16).with_sink_blocks(1).with_warmup_steps(0),
            ),
        ];
        for variant in variants {
            let name = format!("{variant:?}").split('(').next().unwrap().to_string();
            let got = values(run(&model, &x, &uniform(with_text(variant)), 3).unwrap());
            assert_eq!(got.len(), want.len());
            assert!(got.iter().all(|v| v.is_finite()), "{name}");
            // Sparse or merged attention approximates dense: close, not equal to garbage.
            let e = rel_err(&got, &want);
            assert!(e < 0.5, "{name} {placement:?}: relative error {e} against dense");
        }
    }
}

/// Rules pick the attention by layer and step; JSON round trip; each distinct config prepared once.
#[test]
fn schedules_pick_attention_by_layer_and_step() {
    let _ = device();
    let model = tiny(false, TextPlacement::After).init::<B32>(&Default::default()).unwrap();
    let x = inputs::<B32>(11);
    let narrow = sta(vec![[1, 1, 1]]);
    let schedule = uniform(dense()).with_rules(vec![
        ScheduleRule::new(narrow.clone()).with_layers(Some(vec![1])).with_steps(Some([2, 4])),
        ScheduleRule::new(narrow.clone()).with_steps(Some([6, 7])),
    ]);
    let json = serde_json::to_string_pretty(&schedule).unwrap();
    let back: AttentionScheduleConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(back, schedule);
    assert_eq!(schedule.init().unwrap().num_prepared(), 2);
    assert_eq!(schedule.config_at(CallPosition::new(1, 3)), &narrow);
    assert_eq!(schedule.config_at(CallPosition::new(0, 3)), &dense());
    assert_eq!(schedule.config_at(CallPosition::new(1, 4)), &dense());
    assert_eq!(schedule.config_at(CallPosition::new(0, 6)), &narrow);

    let dense_out = values(run(&model, &x, &uniform(dense()), 0).unwrap());
    for (step, changed) in [(0, false), (2, true), (5, false), (6, true)] {
        let got = values(run(&model, &x, &back, step).unwrap());
        assert_eq!(rel_err(&got, &dense_out) > 1e-4, changed, "step {step}");
    }
    let empty = uniform(dense()).with_rules(vec![ScheduleRule::new(dense()).with_steps(Some([3, 3]))]);
    assert!(empty.init().unwrap_err().to_string().contains("[3, 3)"));
}

#[test]
fn sta_window_schedules_load_per_head_windows() {
    let _ = device();
    let mut windows = std::collections::BTreeMap::new();
    for head in 0..4 {
        windows.insert(StaWindowSchedule::key(1, 0, head), if head == 2 { [3, 3, 3] } else { [1, 1, 1] });
        windows.insert(StaWindowSchedule::key(1, 1, head), [1, 3, 3]);
    }
    let sched = StaWindowSchedule { windows, sparsity: Some(0.5) };
    let json = serde_json::to_string(&sched).unwrap();
    // The spec's flat object: windows by key, and the sparsity beside them.
    assert!(json.contains("\"1_0_2\":[3,3,3]") && json.contains("\"sparsity\":0.5"), "{json}");
    let bare: StaWindowSchedule = serde_json::from_str(r#"{"1_0_0": [1, 3, 3]}"#).unwrap();
    assert_eq!((bare.sparsity, bare.windows["1_0_0"]), (None, [1, 3, 3]));
    let base = SlidingTileAttentionConfig::new(CANVAS, [2, 2, 2], vec![]).with_text(TextSpec::after(TEXT));
    let config = AttentionScheduleConfig::from_sta_windows(&serde_json::from_str(&json).unwrap(), &base).unwrap();
    let VideoAttentionConfig::SlidingTile(l0) = config.config_at(CallPosition::new(0, 1)) else { panic!() };
    assert_eq!(l0.windows, vec![[1, 1, 1], [1, 1, 1], [3, 3, 3], [1, 1, 1]]);
    let VideoAttentionConfig::SlidingTile(l1) = config.config_at(CallPosition::new(1, 1)) else { panic!() };
    assert_eq!(l1.windows, vec![[1, 3, 3]]);
    assert_eq!(config.config_at(CallPosition::new(0, 0)), &dense());
    // The model runs it.
    let model = tiny(false, TextPlacement::After).init::<B32>(&Default::default()).unwrap();
    run(&model, &inputs(3), &config, 1).unwrap();

    let mut bad = sched.clone();
    bad.windows.insert("1_x_0".into(), [1, 1, 1]);
    assert!(AttentionScheduleConfig::from_sta_windows(&bad, &base).unwrap_err().to_string().contains("\"1_x_0\""));
    let mut padded = sched.clone();
    padded.windows.insert("01_0_0".into(), [1, 1, 1]);
    let e = AttentionScheduleConfig::from_sta_windows(&padded, &base).unwrap_err().to_string();
    assert!(e.contains("\"01_0_0\"") && e.contains("\"1_0_0\""), "{e}");
    let mut gap = sched;
    gap.windows.remove("1_0_1");
    let e = AttentionScheduleConfig::from_sta_windows(&gap, &base).unwrap_err().to_string();
    assert!(e.contains("head 2") && e.contains("head 1"), "{e}");
}

/// A probe that keeps the inputs of one call and passes every call on.
struct Capture<'a, P> {
    inner: &'a mut P,
    at: CallPosition,
    kept: Option<[Tensor<B32, 4>; 4]>,
}

impl<P: AttentionProbe<B32>> AttentionProbe<B32> for Capture<'_, P> {
    fn observe(
        &mut self,
        position: CallPosition,
        q: &Tensor<B32, 4>,
        k: &Tensor<B32, 4>,
        v: &Tensor<B32, 4>,
        output: &Tensor<B32, 4>,
    ) -> dit_attention::Result<()> {
        if position == self.at {
            self.kept = Some([q.clone(), k.clone(), v.clone(), output.clone()]);
        }
        self.inner.observe(position, q, k, v, output)
    }
}

#[test]
fn sta_search_picks_the_cheapest_window_within_tolerance() {
    let _ = device();
    let model = tiny(false, TextPlacement::After).init::<B32>(&Default::default()).unwrap();
    let base = SlidingTileAttentionConfig::new(CANVAS, [2, 2, 2], vec![]).with_text(TextSpec::after(TEXT));
    let candidates = vec![[1, 1, 1], [1, 3, 3], [3, 3, 3]];
    let search_with = |tolerance: f64, prompts: &[u64]| {
        let mut search = StaSearchConfig::new(base.clone(), candidates.clone())
            .with_skip_steps(1)
            .with_tolerance(tolerance)
            .init()
            .unwrap();
        let schedule = uniform(dense()).init().unwrap();
        let mut capture = Capture { inner: &mut search, at: CallPosition::new(1, 1), kept: None };
        for &prompt in prompts {
            let mut ctx = AttentionContext::new(&schedule).with_probe(&mut capture);
            for step in 0..2 {
                ctx.set_step(step);
                let x = inputs::<B32>(20 + prompt);
                model.forward(x.latent, x.t, x.text, &mut ctx).unwrap();
            }
        }
        let kept = capture.kept.take().unwrap();
        (search, kept)
    };

    // One prompt: the losses are the per-head mean squared differences to the full output.
    let (one, [q, k, v, out]) = search_with(0.0, &[0]);
    let l0 = one.losses(1, 1).unwrap();
    assert_eq!((l0.len(), l0[0].len()), (3, 4));
    let narrow_config = SlidingTileAttentionConfig { windows: vec![[1, 1, 1]], ..base.clone() };
    let narrow = dit_attention::sliding_tile_attention(q, k, v, &narrow_config, None).unwrap().output;
    let per_head = values((narrow - out).square().mean_dim(3).mean_dim(2).mean_dim(0));
    assert!(per_head.iter().all(|l| *l > 0.0));
    assert!(rel_err(&l0[0], &per_head) < 1e-6, "{:?} vs {per_head:?}", l0[0]);
    // Two prompts: the mean of each prompt's losses.
    let l1 = search_with(0.0, &[1]).0.losses(1, 1).unwrap();
    let (search, _) = search_with(0.0, &[0, 1]);
    let losses = search.losses(1, 1).unwrap();
    for c in 0..3 {
        let mean: Vec<f64> = (0..4).map(|h| (l0[c][h] + l1[c][h]) / 2.0).collect();
        assert!(rel_err(&losses[c], &mean) < 1e-9);
    }
    // Covering windows lose (almost) nothing; the narrowest loses the most.
    for h in 0..4 {
        assert!(losses[2][h] < 1e-6 * losses[0][h], "{losses:?}");
        assert!(losses[0][h] >= losses[1][h]);
    }
    let sched = search.schedule().unwrap();
    assert_eq!(sched.windows.len(), 2 * 2 * 4);
    // Skipped step 0: full windows (the tile counts); step 1 argmin: the covering candidate.
    assert_eq!(sched.windows["0_1_3"], [3, 3, 3]);
    assert_eq!(sched.windows["1_0_0"], [3, 3, 3]);
    assert!(sched.sparsity.unwrap().abs() < 1e-12);

    // With a huge tolerance the cheapest candidate wins everywhere it is measured.
    let (search, _) = search_with(10.0, &[0, 1]);
    let sched = search.schedule().unwrap();
    assert_eq!(sched.windows["1_1_2"], [1, 1, 1]);
    // Sparsity: the mean over entries, counted by brute force over the canvas.
    let c = Canvas::new(4, 4, 4).unwrap();
    let tile = TileShape::new(2, 2, 2).unwrap();
    let coords: Vec<[usize; 3]> = (0..64).map(|i| c.coords(i)).collect();
    let allowed = coords
        .iter()
        .flat_map(|a| coords.iter().map(move |b| (a, b)))
        .filter(|(a, b)| sta_allows(c, tile, [1, 1, 1], **a, **b))
        .count();
    let narrow_sparsity = 1.0 - allowed as f64 / 4096.0;
    let sparsity = sched.sparsity.unwrap();
    assert!((sparsity - narrow_sparsity / 2.0).abs() < 1e-12, "{sparsity} vs {}", narrow_sparsity / 2.0);
}

/// Gradients through the whole model (dense and STA attention) against central finite differences
/// in f64: what training the host model relies on.
#[test]
fn gradients_through_the_model_match_finite_differences() {
    let _ = device();
    type Ad = Autodiff<B64>;
    let model = tiny(false, TextPlacement::Before).init::<Ad>(&Default::default()).unwrap().map(&mut ToF64);
    let mut rng = SeedRng::new(31);
    let (latent, lv) = randn::<Ad, 5>(&mut rng, [1, 2, 4, 8, 8]);
    let (_, dv) = randn::<B64, 5>(&mut rng, [1, 2, 4, 8, 8]);
    let text = randn::<Ad, 3>(&mut rng, [1, TEXT, 6]).0;
    let t: Tensor<Ad, 1> = tensor(vec![0.4], [1]);
    let before = |mut c: VideoAttentionConfig| {
        if let VideoAttentionConfig::SlidingTile(s) = &mut c {
            s.text = TextSpec::before(TEXT);
        }
        c
    };
    for attention in [dense(), before(sta(vec![[1, 1, 1], [1, 3, 3], [3, 1, 1], [1, 1, 3]]))] {
        let schedule = uniform(attention).init().unwrap();
        let loss = |x: Tensor<Ad, 5>| {
            let mut ctx = AttentionContext::new(&schedule);
            model.forward(x, t.clone(), text.clone(), &mut ctx).unwrap().square().sum()
        };
        let x = latent.clone().require_grad();
        let grads = loss(x.clone()).backward();
        let g = values(x.grad(&grads).unwrap());
        let analytic: f64 = g.iter().zip(&dv).map(|(a, b)| a * b).sum();
        let eps = 1e-5;
        let shifted = |s: f64| {
            let x: Tensor<Ad, 5> = tensor(lv.iter().zip(&dv).map(|(a, b)| a + s * b).collect(), [1, 2, 4, 8, 8]);
            values(loss(x))[0]
        };
        let numeric = (shifted(eps) - shifted(-eps)) / (2.0 * eps);
        assert!((analytic - numeric).abs() < 1e-6 * numeric.abs().max(1.0), "{analytic} vs {numeric}");
    }
}

/// Euler sampling against the exact conditional velocity `(x - x0) / t` of the training path
/// `x_t = (1 - t) x0 + t eps` lands on `x0`: the sampler's direction and times match training.
#[test]
fn euler_sampling_follows_the_training_path() {
    let _ = device();
    let mut rng = SeedRng::new(41);
    let (x0, x0v) = randn::<B64, 5>(&mut rng, [2, 3, 2, 4, 4]);
    let (eps, _) = randn::<B64, 5>(&mut rng, [2, 3, 2, 4, 4]);
    let mut times = Vec::new();
    let out = euler_sample(eps, 7, |x, t, step| {
        times.push((t, step));
        Ok((x - x0.clone()) / t)
    })
    .unwrap();
    assert!(rel_err(&values(out), &x0v) < 1e-12);
    assert_eq!(times.len(), 7);
    assert!((times[0].0 - 1.0).abs() < 1e-15 && (times[6].0 - 1.0 / 7.0).abs() < 1e-15 && times[6].1 == 6);
    assert!(euler_sample(x0, 0, |x, _, _| Ok(x)).unwrap_err().to_string().contains("got 0"));
}

/// A user's attention layer written with burn ops ("before").
#[derive(Module, Debug)]
struct UserAttention<B: burn::tensor::backend::Backend> {
    qkv: burn::nn::Linear<B>,
    out: burn::nn::Linear<B>,
    heads: usize,
}

fn split_heads<B: burn::tensor::backend::Backend>(
    qkv: &burn::nn::Linear<B>,
    x: Tensor<B, 3>,
    heads: usize,
) -> [Tensor<B, 4>; 3] {
    let [b, n, c] = x.dims();
    let qkv = qkv.forward(x).reshape([b, n, 3, heads, c / heads]).permute([2, 0, 3, 1, 4]);
    [0, 1, 2].map(|i| qkv.clone().narrow(0, i, 1).reshape([b, heads, n, c / heads]))
}

impl<B: burn::tensor::backend::Backend> UserAttention<B> {
    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, n, c] = x.dims();
        let [q, k, v] = split_heads(&self.qkv, x, self.heads);
        let o = burn::tensor::activation::softmax(q.matmul(k.swap_dims(2, 3)) / ((c / self.heads) as f64).sqrt(), 3)
            .matmul(v);
        self.out.forward(o.swap_dims(1, 2).reshape([b, n, c]))
    }
}

/// The same layer after the swap guide: one skipped field, one line changed.
#[derive(Module, Debug)]
struct SwappedAttention<B: burn::tensor::backend::Backend> {
    qkv: burn::nn::Linear<B>,
    out: burn::nn::Linear<B>,
    heads: usize,
    #[module(skip)]
    core: dit_attention::VideoAttention,
}

impl<B: dit_attention::SparseAttentionBackend> SwappedAttention<B> {
    fn forward(&self, x: Tensor<B, 3>) -> dit_attention::Result<Tensor<B, 3>> {
        let [b, n, c] = x.dims();
        let [q, k, v] = split_heads(&self.qkv, x, self.heads);
        let o = self.core.forward(q, k, v)?;
        Ok(self.out.forward(o.swap_dims(1, 2).reshape([b, n, c])))
    }
}

/// The swap guide on a layer that knows nothing of the crate: its saved weights load into the
/// swapped layer unchanged, the dense core reproduces its softmax, and an STA core runs sparse.
#[test]
fn a_foreign_layer_swaps_its_attention_and_keeps_its_weights() {
    use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
    let device = device();
    let (hidden, heads, n) = (32, 4, 64 + TEXT);
    let linear = |i, o| burn::nn::LinearConfig::new(i, o).init::<B32>(&device);
    let user = UserAttention { qkv: linear(hidden, 3 * hidden), out: linear(hidden, hidden), heads };
    let x = randn::<B32, 3>(&mut SeedRng::new(43), [2, n, hidden]).0;
    // Run it first: burn initialises weights lazily, and a clone taken before that draws its own.
    let want = values(user.forward(x.clone()));
    let recorder = NamedMpkBytesRecorder::<FullPrecisionSettings>::new();
    let bytes = recorder.record(user.clone().into_record(), ()).unwrap();
    let fresh = |core: VideoAttentionConfig| SwappedAttention {
        qkv: linear(hidden, 3 * hidden),
        out: linear(hidden, hidden),
        heads,
        core: core.init().unwrap(),
    };
    let load = |core| {
        let record: SwappedAttentionRecord<B32> = recorder.load(bytes.clone(), &device).unwrap();
        fresh(core).load_record(record)
    };
    let dense_core = values(load(dense()).forward(x.clone()).unwrap());
    assert!(rel_err(&dense_core, &want) < 1e-5, "{}", rel_err(&dense_core, &want));
    // Without the saved weights the layer is another function.
    assert!(rel_err(&values(fresh(dense()).forward(x.clone()).unwrap()), &want) > 0.1);
    let sta_core = values(load(sta(vec![[1, 1, 1]])).forward(x.clone()).unwrap());
    assert!(rel_err(&sta_core, &want) > 1e-3);
    let covering = values(load(sta(vec![[3, 3, 3]])).forward(x).unwrap());
    assert!(rel_err(&covering, &want) < 1e-5);
}
