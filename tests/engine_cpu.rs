//! The public API on CPU backends (the references behind the extension trait), `Autodiff`'s
//! gradients against burn's own autodiff through the reference composite, configs and errors.

mod common;

use std::sync::Arc;

use burn::backend::Autodiff;
use burn::tensor::{DType, Tensor};
use common::engine::{StaCase, check_sta, inputs, sta_case};
use common::*;
use dit_attention::reference::block_sparse_attention_reference;
use dit_attention::{
    AttentionMask, AttentionOptions, BlockMap, BlockPartition, BlockSparseAttentionConfig, Canvas,
    DenseAttentionConfig, DitAttentionError, KernelPlan, PatternSpec, SlidingTileAttentionConfig, TextSpec, TileShape,
    TokenOrder, VideoAttentionConfig, VideoLayout, attention_with_plan, block_sparse_attention, dense_attention,
};
use proptest::prelude::*;

type Ad64 = Autodiff<B64>;

proptest! {
    #![proptest_config(cases(24))]

    #[test]
    fn sta_through_the_trait_on_ndarray_f32(c in sta_case()) {
        check_sta::<B32>(&c, &Default::default(), DType::F32)?;
    }

    #[cfg(feature = "flex")]
    #[test]
    fn sta_through_the_trait_on_flex_f32(c in sta_case()) {
        check_sta::<burn::backend::Flex>(&c, &Default::default(), DType::F32)?;
    }

    #[test]
    fn reference_backward_equals_the_brute_force_chain_rule(
        c in sta_case(),
        p in common::engine::pattern_case(),
        up in common::backward::upstream(),
    ) {
        common::backward::check_sta_gradients::<Ad64>(&c, up, &Default::default(), DType::F64)?;
        common::backward::check_pattern_gradients::<Ad64>(&p, up, &Default::default(), DType::F64)?;
    }

    #[test]
    fn autodiff_gradients_equal_burns_autodiff_through_the_reference(c in sta_case(), pattern_seed in any::<u64>()) {
        gradients_match(&c, pattern_seed)?;
    }
}

/// The gradient oracle itself against central finite differences of the f64 brute-force
/// forward: a random mask with an empty row, a bias, both outputs in the loss.
#[test]
fn brute_force_gradients_equal_finite_differences() {
    let [b, h, n, d, dv] = [1, 2, 7, 3, 2];
    let mut rng = SeedRng::new(3);
    let mut x: Vec<Vec<f64>> =
        [b * h * n * d, b * h * n * d, b * h * n * dv, b * h * n].map(|len| rng.normals(len)).into();
    let (w, u) = (rng.normals(b * h * n * dv), rng.normals(b * h * n));
    let mask: Vec<bool> = (0..h * n * n).map(|_| rng.uniform() < 0.6).collect();
    // Row 2 of head 0 sees no key: no gradient, a finite loss.
    let allowed = |head: usize, i: usize, j: usize| !(head == 0 && i == 2) && (i == j || mask[(head * n + i) * n + j]);
    let scale = 0.7;
    let dims = [b, h, n, n, d, dv];
    let loss = |x: &[Vec<f64>]| {
        let (o, l) = brute_attention(&x[0], &x[1], &x[2], &x[3], dims, scale, allowed);
        let lo: f64 = o.iter().zip(&w).map(|(a, b)| a * b).sum();
        lo + l.iter().zip(&u).filter(|(a, _)| a.is_finite()).map(|(a, b)| a * b).sum::<f64>()
    };
    let grads = brute_attention_grads(&x[0], &x[1], &x[2], &x[3], dims, scale, allowed, &w, &u);
    let step = 1e-5;
    for t in 0..4 {
        for i in 0..x[t].len() {
            let keep = x[t][i];
            x[t][i] = keep + step;
            let up = loss(&x);
            x[t][i] = keep - step;
            let down = loss(&x);
            x[t][i] = keep;
            let fd = (up - down) / (2.0 * step);
            assert!(
                (fd - grads[t][i]).abs() < 1e-7,
                "input {t} element {i}: finite difference {fd}, oracle {}",
                grads[t][i]
            );
        }
    }
}

/// Loss = sum(out * w) + sum(lse * u) (finite LSE rows only); gradients of q, k, v and bias.
fn gradients_match(c: &StaCase, seed: u64) -> Result<(), TestCaseError> {
    let device = Default::default();
    let n = c.seq_len();
    let (b, h, d, dv) = (c.batch, c.heads, c.head_dim.min(8), c.value_dim.min(8));
    // Natural order with NATTEN-like partial blocks half of the time, STA otherwise.
    let layout = VideoLayout::new(c.canvas, c.tile, c.text).unwrap();
    let spec = if seed.is_multiple_of(2) { c.spec() } else { PatternSpec::Natten { window: [1, 1, 1] } };
    let map =
        BlockMap::from_mask(&AttentionMask::new(layout, spec).unwrap(), c.order, BlockPartition::Uniform(5)).unwrap();
    let mut rng = SeedRng::new(seed);
    let w = rng.normals(b * h * n * dv);
    let u = rng.normals(b * h * n);

    let grads = |use_engine: bool| -> Vec<Vec<f64>> {
        let x = inputs::<Ad64>(c.seed, [b, h, n, d, dv], c.bias, &device, DType::F64);
        let (q, k, v) = (x.q.require_grad(), x.k.require_grad(), x.v.require_grad());
        let bias = x.bias.map(|t| t.require_grad());
        let r = if use_engine {
            block_sparse_attention(q.clone(), k.clone(), v.clone(), &map, bias.clone(), AttentionOptions::default())
                .unwrap()
        } else {
            block_sparse_attention_reference(
                q.clone(),
                k.clone(),
                v.clone(),
                &map,
                bias.clone(),
                AttentionOptions::default(),
            )
            .unwrap()
        };
        let wt = Tensor::<Ad64, 1>::from_floats(w.as_slice(), &device).reshape([b, h, n, dv]);
        let ut = Tensor::<Ad64, 1>::from_floats(u.as_slice(), &device).reshape([b, h, n]);
        let finite = r.lse.clone().is_finite();
        let lse = r.lse.mask_fill(finite.bool_not(), 0.0);
        let loss = (r.output * wt).sum() + (lse * ut).sum();
        let g = loss.backward();
        let mut out = vec![values(q.grad(&g).unwrap()), values(k.grad(&g).unwrap()), values(v.grad(&g).unwrap())];
        out.extend(bias.map(|t| values(t.grad(&g).unwrap())));
        out
    };
    let (got, want) = (grads(true), grads(false));
    for (name, (a, e)) in ["q", "k", "v", "bias"].iter().zip(got.iter().zip(&want)) {
        prop_assert!(rel_err(a, e) < 1e-9, "gradient of {}: relative error {}", name, rel_err(a, e));
    }
    Ok(())
}

#[test]
fn dense_attention_with_cross_lengths_equals_brute_force() {
    let mut rng = SeedRng::new(7);
    let (b, h, nq, nk, d, dv) = (2, 3, 5, 9, 8, 4);
    let (q, qv) = randn::<B64, 4>(&mut rng, [b, h, nq, d]);
    let (k, kv) = randn::<B64, 4>(&mut rng, [b, h, nk, d]);
    let (v, vv) = randn::<B64, 4>(&mut rng, [b, h, nk, dv]);
    let (bias, biasv) = randn::<B64, 3>(&mut rng, [b, h, nk]);
    let r = dense_attention(q, k, v, Some(bias), AttentionOptions::with_scale(0.3)).unwrap();
    let (want_o, want_l) = brute_attention(&qv, &kv, &vv, &biasv, [b, h, nq, nk, d, dv], 0.3, |_, _, _| true);
    assert!(rel_err(&values(r.output), &want_o) < 1e-12);
    assert!(rel_err(&values(r.lse), &want_l) < 1e-12);
}

#[test]
fn configs_round_trip_through_json_and_modules_agree_with_the_functions() {
    let sta = SlidingTileAttentionConfig::new([3, 4, 5], [2, 2, 2], vec![[1, 1, 3]])
        .with_text(TextSpec::before(3))
        .with_order(TokenOrder::Natural);
    let block = BlockSparseAttentionConfig::new([3, 4, 5], [2, 2, 2], PatternSpec::Natten { window: [3, 3, 3] })
        .with_text(TextSpec::after(2));
    for config in [
        VideoAttentionConfig::Dense(DenseAttentionConfig::new().with_scale(Some(0.25))),
        VideoAttentionConfig::SlidingTile(sta.clone()),
        VideoAttentionConfig::BlockSparse(block.clone()),
    ] {
        let json = serde_json::to_string(&config).unwrap();
        let back: VideoAttentionConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, config, "{json}");
    }

    let mut rng = SeedRng::new(3);
    let n = 60 + 3;
    let (q, _) = randn::<B64, 4>(&mut rng, [1, 2, n, 8]);
    let (k, _) = randn::<B64, 4>(&mut rng, [1, 2, n, 8]);
    let (v, _) = randn::<B64, 4>(&mut rng, [1, 2, n, 8]);
    let module = VideoAttentionConfig::SlidingTile(sta.clone()).init().unwrap();
    let a = module.forward(q.clone(), k.clone(), v.clone()).unwrap();
    let b = dit_attention::sliding_tile_attention(q, k, v, &sta, None).unwrap().output;
    assert_eq!(values(a), values(b));
}

#[test]
fn bad_input_gets_errors_that_name_the_values() {
    let mut rng = SeedRng::new(11);
    let (q, _) = randn::<B64, 4>(&mut rng, [1, 2, 10, 4]);
    let (k, _) = randn::<B64, 4>(&mut rng, [1, 2, 10, 4]);
    let (v, _) = randn::<B64, 4>(&mut rng, [1, 2, 10, 4]);
    let (k_bad, _) = randn::<B64, 4>(&mut rng, [1, 2, 10, 5]);

    let err = dense_attention(q.clone(), k_bad, v.clone(), None, AttentionOptions::default()).unwrap_err();
    assert!(matches!(err, DitAttentionError::Shape { .. }), "{err}");

    // A block map for another sequence length.
    let layout =
        VideoLayout::new(Canvas::new(1, 3, 4).unwrap(), TileShape::new(1, 2, 2).unwrap(), TextSpec::none()).unwrap();
    let map = BlockMap::from_mask(
        &AttentionMask::new(layout, PatternSpec::sta([1, 1, 1])).unwrap(),
        TokenOrder::TileMajor,
        BlockPartition::PerTile,
    )
    .unwrap();
    let err =
        block_sparse_attention(q.clone(), k.clone(), v.clone(), &map, None, AttentionOptions::default()).unwrap_err();
    assert!(err.to_string().contains("10"), "{err}");
    let plan = KernelPlan::from_map(Arc::new(map), 0.5);
    let err = attention_with_plan(q.clone(), k.clone(), v.clone(), None, &plan).unwrap_err();
    assert!(err.to_string().contains("12 queries x 12 keys") && err.to_string().contains("10 x 10"), "{err}");

    // STA: even window, window heads against tensor heads, sequence length.
    let sta = SlidingTileAttentionConfig::new([1, 2, 5], [1, 1, 1], vec![[1, 2, 1]]);
    assert!(matches!(sta.init().unwrap_err(), DitAttentionError::EvenWindow { value: 2, .. }));
    let sta = SlidingTileAttentionConfig::new([1, 2, 5], [1, 1, 1], vec![[1, 1, 1], [1, 1, 3], [1, 1, 1]]);
    let err = sta.init().unwrap().forward(q.clone(), k.clone(), v.clone()).unwrap_err();
    assert!(err.to_string().contains("3 per-head windows") && err.to_string().contains("2 heads"), "{err}");
    let sta = SlidingTileAttentionConfig::new([1, 3, 5], [1, 1, 1], vec![[1, 1, 1]]);
    let err = sta.init().unwrap().forward(q.clone(), k.clone(), v.clone()).unwrap_err();
    assert!(matches!(err, DitAttentionError::SequenceLength { got: 10, expected: 15, .. }), "{err}");
    // Windows covering the canvas (the dense fast path) still check the key length.
    let sta = SlidingTileAttentionConfig::new([1, 2, 5], [1, 1, 1], vec![[1, 3, 9]]);
    let (k_long, _) = randn::<B64, 4>(&mut rng, [1, 2, 12, 4]);
    let (v_long, _) = randn::<B64, 4>(&mut rng, [1, 2, 12, 4]);
    let err = sta.init().unwrap().forward(q.clone(), k_long, v_long).unwrap_err();
    assert!(matches!(err, DitAttentionError::SequenceLength { got: 12, expected: 10, .. }), "{err}");

    // Mixed dtypes.
    let k32 = k.clone().cast(DType::F32);
    let err = dense_attention(q, k32, v, None, AttentionOptions::default()).unwrap_err();
    assert!(err.to_string().contains("F32") && err.to_string().contains("F64"), "{err}");
}
