//! A 16,384-token, 8-head STA call on the CPU: the references stay bounded in memory. f32 only
//! (its own test binary: burn keeps one default dtype per device across backends).

mod common;

use common::*;
use dit_attention::reference::{block_sparse_attention_reference, sta_attention_reference};
use dit_attention::{
    AttentionMask, AttentionOptions, BlockMap, BlockPartition, Canvas, PatternSpec, TextSpec, TileShape, TokenOrder,
    VideoLayout,
};

#[test]
fn sixteen_thousand_tokens_and_eight_heads_run_without_an_n_by_n_tensor() {
    // 16 x 32 x 32 = 16,384 tokens, 8 heads; a dense score tensor would hold 2.1 G values.
    let layout =
        VideoLayout::new(Canvas::new(16, 32, 32).unwrap(), TileShape::new(4, 8, 8).unwrap(), TextSpec::after(16))
            .unwrap();
    let n = layout.seq_len();
    let (h, d) = (8, 4);
    let mut rng = SeedRng::new(11);
    let (q, qv) = randn::<B32, 4>(&mut rng, [1, h, n, d]);
    let (k, kv) = randn::<B32, 4>(&mut rng, [1, h, n, d]);
    let (v, vv) = randn::<B32, 4>(&mut rng, [1, h, n, d]);
    let windows = [[1, 1, 1], [3, 1, 1], [1, 3, 3], [3, 3, 3], [1, 1, 3], [3, 3, 1], [1, 3, 1], [3, 1, 3]];
    let order = TokenOrder::TileMajor;
    let out = sta_attention_reference(
        q.clone(),
        k.clone(),
        v.clone(),
        &layout,
        &windows,
        order,
        None,
        AttentionOptions::default(),
    )
    .unwrap();
    let mask = AttentionMask::new(layout, PatternSpec::Sta { windows: windows.to_vec() }).unwrap();
    let map = BlockMap::from_mask(&mask, order, BlockPartition::PerTile).unwrap();
    let bs = block_sparse_attention_reference(q, k, v, &map, None, AttentionOptions::default()).unwrap();
    let (o, ob) = (values(out.output), values(bs.output));
    assert!(rel_err(&ob, &o) < 1e-5);
    // Spot-check sampled rows against f64 brute force from the spec.
    let tokens = brute_tokens(layout.canvas(), layout.tiling().tile(), layout.text(), order);
    for s in 0..12 {
        let (head, row) = (s % h, (s * 7919 + 13) % n);
        let base = head * n;
        let one = |x: &[f64], r: usize| x[(base + r) * d..(base + r + 1) * d].to_vec();
        let keys: Vec<usize> = (0..n)
            .filter(|&j| match (tokens[row], tokens[j]) {
                (Some(a), Some(c)) => sta_allows(layout.canvas(), layout.tiling().tile(), windows[head], a, c),
                _ => true,
            })
            .collect();
        let qr = one(&qv, row);
        let kk: Vec<f64> = keys.iter().flat_map(|&j| one(&kv, j)).collect();
        let vvv: Vec<f64> = keys.iter().flat_map(|&j| one(&vv, j)).collect();
        let (want, _) = brute_attention(&qr, &kk, &vvv, &[], [1, 1, 1, keys.len(), d, d], 0.5, |_, _, _| true);
        let got = &o[(base + row) * d..(base + row + 1) * d];
        assert!(rel_err(got, &want) < 1e-4, "head {head} row {row}: {got:?} vs {want:?}");
    }
}
