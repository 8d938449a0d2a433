//! Reference attention (burn ops, any backend) against brute-force f64 attention written from
//! the spec, against burn's own attention, and against itself through the LSE merge.

mod common;

use burn::tensor::{Tensor, TensorData};
use common::strategies::{canvas_and_tile, order, pattern, text};
use common::*;
use dit_attention::glue::burn_attention_fallback;
use dit_attention::mask::BlockLayout;
use dit_attention::reference::{
    block_sparse_attention_reference, dense_attention_reference, merge_attention, sta_attention_reference,
};
use dit_attention::{
    AttentionMask, AttentionOptions, AttentionOutput, BlockKind, BlockMap, BlockPartition, Canvas, PatternSpec,
    TextSpec, TileShape, TokenOrder, VideoLayout,
};
use proptest::prelude::*;

const TOL: f64 = 1e-10;

struct Qkv {
    q: Tensor<B64, 4>,
    k: Tensor<B64, 4>,
    v: Tensor<B64, 4>,
    bias: Option<Tensor<B64, 3>>,
    qv: Vec<f64>,
    kv: Vec<f64>,
    vv: Vec<f64>,
    biasv: Vec<f64>,
    dims: [usize; 6],
}

fn qkv(seed: u64, b: usize, h: usize, n: usize, d: usize, dv: usize, with_bias: bool) -> Qkv {
    let mut rng = SeedRng::new(seed);
    let (q, qv) = randn::<B64, 4>(&mut rng, [b, h, n, d]);
    let (k, kv) = randn::<B64, 4>(&mut rng, [b, h, n, d]);
    let (v, vv) = randn::<B64, 4>(&mut rng, [b, h, n, dv]);
    let (bias, biasv) = if with_bias {
        let (t, v) = randn::<B64, 3>(&mut rng, [b, h, n]);
        (Some(t), v)
    } else {
        (None, Vec::new())
    };
    Qkv { q, k, v, bias, qv, kv, vv, biasv, dims: [b, h, n, n, d, dv] }
}

fn check(out: AttentionOutput<B64>, want: (Vec<f64>, Vec<f64>)) -> Result<(), TestCaseError> {
    let (o, l) = (values(out.output), values(out.lse));
    prop_assert!(o.iter().all(|x| x.is_finite()), "output has a non-finite value");
    prop_assert_eq!(o.len(), want.0.len());
    let e = rel_err(&o, &want.0);
    prop_assert!(e < TOL, "output relative error {}", e);
    for (a, b) in l.iter().zip(&want.1) {
        prop_assert!(a == b || (a - b).abs() < TOL * (1.0 + b.abs()), "lse {} vs {}", a, b);
    }
    Ok(())
}

fn shape() -> impl Strategy<Value = (usize, usize, usize, usize, bool, u64)> {
    (1usize..=2, 1usize..=3, 1usize..=8, 1usize..=5, any::<bool>(), any::<u64>())
}

fn layout_case() -> impl Strategy<Value = (Canvas, TileShape, TextSpec, TokenOrder)> {
    (canvas_and_tile(), text(), order()).prop_map(|((c, t), x, o)| (c, t, x, o))
}

proptest! {
    #![proptest_config(cases(48))]

    #[test]
    fn dense_reference_equals_brute_force((b, h, d, dv, _, seed) in shape(), n in 1usize..=20, mask_seed in any::<u64>(), bias_kind in 0usize..4) {
        let mut x = qkv(seed, b, h, n, d, dv, false);
        // No bias, or a per-key bias of shape [b, h, n], [1, 1, n] or [1, h, n] (broadcast).
        let mut brng = SeedRng::new(seed ^ 0xB1A5);
        let bshape = [[b, h, n], [1, 1, n], [1, h, n]];
        if bias_kind > 0 {
            let s = bshape[bias_kind - 1];
            let (t, small) = randn::<B64, 3>(&mut brng, s);
            x.bias = Some(t);
            x.biasv = (0..b * h * n).map(|i| {
                let (bb, hh, kk) = (i / (h * n), (i / n) % h, i % n);
                small[((if s[0] == 1 { 0 } else { bb }) * s[1] + if s[1] == 1 { 0 } else { hh }) * n + kk]
            }).collect();
        }
        // Random mask with some fully masked rows.
        let mut rng = SeedRng::new(mask_seed);
        let masked: Vec<bool> = (0..b * h * n * n).map(|_| rng.uniform() < 0.4).collect();
        let full_row = |bh: usize, i: usize| (bh + i).is_multiple_of(5);
        let masked: Vec<bool> = masked.iter().enumerate().map(|(idx, &m)| m || full_row(idx / (n * n), (idx / n) % n)).collect();
        let mt = Tensor::<B64, 4, burn::tensor::Bool>::from_data(TensorData::new(masked.clone(), [b, h, n, n]), &Default::default());
        let out = dense_attention_reference(x.q, x.k, x.v, Some(mt), x.bias, AttentionOptions::default()).unwrap();
        let want = brute_masked(&x.qv, &x.kv, &x.vv, &x.biasv, x.dims, &masked);
        check(out, want)?;
    }

    #[test]
    fn sta_reference_equals_brute_force(
        (canvas, tile, text, order) in layout_case(),
        (b, h, d, dv, with_bias, seed) in shape(),
        wseed in any::<u64>(),
    ) {
        let layout = VideoLayout::new(canvas, tile, text).unwrap();
        let n = layout.seq_len();
        let nt = [0, 1, 2].map(|x| canvas.dims()[x].div_ceil(tile.dims()[x]));
        // Shared or per-head windows, odd, sometimes wider than the canvas.
        let mut rng = SeedRng::new(wseed);
        let mut win = || [0, 1, 2].map(|x| 2 * (rng.next_u64() as usize % (nt[x] / 2 + 2)) + 1);
        let windows: Vec<[usize; 3]> = if wseed % 2 == 0 { vec![win()] } else { (0..h).map(|_| win()).collect() };
        let x = qkv(seed, b, h, n, d, dv, with_bias);
        let tokens = brute_tokens(canvas, tile, text, order);
        let out = sta_attention_reference(x.q, x.k, x.v, &layout, &windows, order, x.bias, AttentionOptions::with_scale(0.7)).unwrap();
        let want = brute_attention(&x.qv, &x.kv, &x.vv, &x.biasv, x.dims, 0.7, |head, q, k| match (tokens[q], tokens[k]) {
            (Some(a), Some(c)) => sta_allows(canvas, tile, windows[if windows.len() == 1 { 0 } else { head }], a, c),
            _ => true,
        });
        check(out, want)?;
    }

    #[test]
    fn sta_covering_the_canvas_equals_burn_attention(
        (canvas, tile, text, order) in layout_case(),
        (b, h, d, dv, _, seed) in shape(),
    ) {
        let layout = VideoLayout::new(canvas, tile, text).unwrap();
        let nt = [0, 1, 2].map(|x| canvas.dims()[x].div_ceil(tile.dims()[x]));
        let window = [0, 1, 2].map(|x| nt[x] | 1); // odd and >= the tile count
        let x = qkv(seed, b, h, layout.seq_len(), d, dv, false);
        let out = sta_attention_reference(x.q.clone(), x.k.clone(), x.v.clone(), &layout, &[window], order, None, AttentionOptions::default()).unwrap();
        let fallback = burn_attention_fallback(x.q, x.k, x.v, None, None);
        let e = rel_err(&values(out.output), &values(fallback));
        prop_assert!(e < TOL, "relative error {}", e);
    }

    #[test]
    fn block_map_attention_equals_masked_dense_attention(
        ((canvas, tile), text, order, spec) in (canvas_and_tile(), text(), order())
            .prop_flat_map(|((c, t), x, o)| (Just((c, t)), Just(x), Just(o), pattern(c, t))),
        (b, _, d, dv, with_bias, seed) in shape(),
        block in 1usize..=9,
    ) {
        let layout = VideoLayout::new(canvas, tile, text).unwrap();
        let mask = AttentionMask::new(layout, spec.clone()).unwrap();
        let h = mask.heads();
        let map = BlockMap::from_mask(&mask, order, BlockPartition::Uniform(block)).unwrap();
        let n = layout.seq_len();
        let x = qkv(seed, b, h, n, d, dv, with_bias);
        let out = block_sparse_attention_reference(x.q.clone(), x.k.clone(), x.v.clone(), &map, x.bias.clone(), AttentionOptions::default()).unwrap();
        // The equivalent boolean mask, burn's convention (true = masked out).
        // From the spec's predicate, not from the crate's mask code.
        let tokens = brute_tokens(canvas, tile, text, order);
        let masked: Vec<bool> = (0..b).flat_map(|_| (0..h).flat_map(|hh| {
            let (tokens, spec) = (&tokens, &spec);
            (0..n).flat_map(move |q| (0..n).map(move |k| !pattern_allows(spec, canvas, tile, hh, tokens[q], tokens[k])))
        })).collect();
        let mt = Tensor::<B64, 4, burn::tensor::Bool>::from_data(TensorData::new(masked.clone(), [b, h, n, n]), &Default::default());
        let dense = dense_attention_reference(x.q, x.k, x.v, Some(mt), x.bias, AttentionOptions::default()).unwrap();
        let (o, l) = (values(out.output), values(out.lse));
        let (od, ld) = (values(dense.output), values(dense.lse));
        prop_assert!(rel_err(&o, &od) < TOL);
        prop_assert!(l.iter().zip(&ld).all(|(a, c)| a == c || (a - c).abs() < TOL * (1.0 + c.abs())));
        check_both(&o, &l, brute_masked(&x.qv, &x.kv, &x.vv, &x.biasv, x.dims, &masked))?;
    }

    #[test]
    fn lse_merge_of_a_split_equals_the_whole((b, h, d, dv, with_bias, seed) in shape(), n in 1usize..=16, split_seed in any::<u64>()) {
        let x = qkv(seed, b, h, n, d, dv, with_bias);
        let mut rng = SeedRng::new(split_seed);
        // Each key goes to one side; some rows keep all keys on one side (the other side empty).
        let side: Vec<bool> = (0..b * h * n * n).map(|_| rng.uniform() < 0.5).collect();
        let side: Vec<bool> = side.iter().enumerate().map(|(i, &s)| if (i / n) % 3 == 0 { true } else { s }).collect();
        let to_t = |m: Vec<bool>| Tensor::<B64, 4, burn::tensor::Bool>::from_data(TensorData::new(m, [b, h, n, n]), &Default::default());
        let a = dense_attention_reference(x.q.clone(), x.k.clone(), x.v.clone(), Some(to_t(side.iter().map(|s| !s).collect())), x.bias.clone(), AttentionOptions::default()).unwrap();
        let c = dense_attention_reference(x.q.clone(), x.k.clone(), x.v.clone(), Some(to_t(side.clone())), x.bias.clone(), AttentionOptions::default()).unwrap();
        let merged = merge_attention(a, c).unwrap();
        let whole = brute_attention(&x.qv, &x.kv, &x.vv, &x.biasv, x.dims, 1.0 / (d as f64).sqrt(), |_, _, _| true);
        check(merged, whole)?;
    }

    #[test]
    fn ones_in_give_ones_out((canvas, tile, text, order) in layout_case(), (b, h, d, _, with_bias, seed) in shape(), k in 0usize..3) {
        let layout = VideoLayout::new(canvas, tile, text).unwrap();
        let n = layout.seq_len();
        let x = qkv(seed, b, h, n, d, 3, with_bias);
        let ones = Tensor::<B64, 4>::ones([b, h, n, 3], opts::<B64>());
        let window = [2 * k + 1; 3];
        let sta = sta_attention_reference(x.q.clone(), x.k.clone(), ones.clone(), &layout, &[window], order, x.bias.clone(), AttentionOptions::default()).unwrap();
        prop_assert!(values(sta.output).iter().all(|v| (v - 1.0).abs() < 1e-12));
        let mask = AttentionMask::new(layout, PatternSpec::sta(window)).unwrap();
        let map = BlockMap::from_mask(&mask, order, BlockPartition::Uniform(5)).unwrap();
        let bs = block_sparse_attention_reference(x.q, x.k, ones, &map, x.bias, AttentionOptions::default()).unwrap();
        prop_assert!(values(bs.output).iter().all(|v| (v - 1.0).abs() < 1e-12));
    }
}

/// Brute force with a per-(b, h, q, k) mask (true = masked out).
fn brute_masked(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    bias: &[f64],
    dims: [usize; 6],
    masked: &[bool],
) -> (Vec<f64>, Vec<f64>) {
    let [b, h, nq, nk, d, dv] = dims;
    let (mut out, mut lse) = (Vec::new(), Vec::new());
    for bh in 0..b * h {
        let sl = |x: &[f64], n: usize, w: usize| x[bh * n * w..(bh + 1) * n * w].to_vec();
        let bb = if bias.is_empty() { Vec::new() } else { sl(bias, nk, 1) };
        let (o, l) = brute_attention(
            &sl(q, nq, d),
            &sl(k, nk, d),
            &sl(v, nk, dv),
            &bb,
            [1, 1, nq, nk, d, dv],
            1.0 / (d as f64).sqrt(),
            |_, i, j| !masked[(bh * nq + i) * nk + j],
        );
        out.extend(o);
        lse.extend(l);
    }
    (out, lse)
}

fn check_both(o: &[f64], l: &[f64], want: (Vec<f64>, Vec<f64>)) -> Result<(), TestCaseError> {
    prop_assert!(rel_err(o, &want.0) < TOL);
    prop_assert!(l.iter().zip(&want.1).all(|(a, c)| a == c || (a - c).abs() < TOL * (1.0 + c.abs())));
    Ok(())
}

#[test]
fn a_row_with_no_allowed_key_gives_zeros_and_minus_infinity() {
    let layout = VideoLayout::untiled(Canvas::sequence(8).unwrap(), TextSpec::none());
    let blocks = BlockLayout::new(&layout, TokenOrder::Natural, BlockPartition::Uniform(4)).unwrap();
    // Block 0 sees nothing, block 1 sees block 0.
    let map = BlockMap::from_rows(blocks, 1, vec![vec![], vec![(0, BlockKind::Full)]], None).unwrap();
    let x = qkv(7, 1, 2, 8, 4, 3, true);
    let out = block_sparse_attention_reference(
        x.q.clone(),
        x.k.clone(),
        x.v.clone(),
        &map,
        x.bias.clone(),
        AttentionOptions::default(),
    )
    .unwrap();
    let (o, l) = (values(out.output), values(out.lse));
    for head in 0..2 {
        for row in 0..8 {
            let r = &o[(head * 8 + row) * 3..(head * 8 + row + 1) * 3];
            assert!(r.iter().all(|v| v.is_finite()));
            if row < 4 {
                assert!(r.iter().all(|v| *v == 0.0), "row {row}: {r:?}");
                assert_eq!(l[head * 8 + row], f64::NEG_INFINITY);
            } else {
                assert!(l[head * 8 + row].is_finite());
            }
        }
    }
    // The same through a dense mask that blocks a whole row.
    let mut masked = vec![false; 2 * 8 * 8];
    masked[..8].iter_mut().for_each(|m| *m = true);
    let mt =
        Tensor::<B64, 4, burn::tensor::Bool>::from_data(TensorData::new(masked, [1, 2, 8, 8]), &Default::default());
    let d = dense_attention_reference(x.q, x.k, x.v, Some(mt), x.bias, AttentionOptions::default()).unwrap();
    let (o, l) = (values(d.output), values(d.lse));
    assert!(o[..3].iter().all(|v| *v == 0.0) && l[0] == f64::NEG_INFINITY);
    assert!(o.iter().all(|v| v.is_finite()));
}

#[test]
fn windows_for_heads_must_match_the_head_count() {
    let layout =
        VideoLayout::new(Canvas::new(2, 4, 4).unwrap(), TileShape::new(1, 2, 2).unwrap(), TextSpec::none()).unwrap();
    let x = qkv(3, 1, 3, 32, 4, 4, false);
    let err = sta_attention_reference(
        x.q,
        x.k,
        x.v,
        &layout,
        &[[1, 1, 1], [3, 1, 1]],
        TokenOrder::Natural,
        None,
        AttentionOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("2 per-head windows") && err.contains("3 heads"), "{err}");
}
