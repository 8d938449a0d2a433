//! Block maps and statistics against the brute-force token predicate written from the spec.

mod common;

use common::strategies::{canvas_and_tile, order, pattern, text};
use common::*;
use dit_attention::mask::Segment;
use dit_attention::{
    AttentionMask, BlockKind, BlockMap, BlockPartition, Canvas, MaskStats, PatternSpec, TextPlacement, TextSpec,
    TileShape, TokenOrder, VideoLayout,
};
use proptest::prelude::*;

/// Expected block starts: each segment cut on its own, from its first position.
fn expected_starts(layout: &VideoLayout, text: TextSpec, partition: BlockPartition, order: TokenOrder) -> Vec<usize> {
    let cut = |len: usize, b: usize, base: usize| (0..len).step_by(b).map(move |x| x + base);
    let v = layout.video_len();
    let video: Vec<usize> = match partition {
        BlockPartition::Uniform(b) => cut(v, b, 0).collect(),
        BlockPartition::PerTile => {
            assert_eq!(order, TokenOrder::TileMajor);
            // A tile starts wherever the tile of the token differs from the previous token's.
            let tokens = brute_tile_major(layout.canvas(), layout.tiling().tile());
            let t = layout.tiling().tile().dims();
            (0..v)
                .filter(|&i| {
                    i == 0 || [0, 1, 2].map(|d| tokens[i][d] / t[d]) != [0, 1, 2].map(|d| tokens[i - 1][d] / t[d])
                })
                .collect()
        }
    };
    let tb = match partition {
        BlockPartition::Uniform(b) => b,
        BlockPartition::PerTile => layout.tiling().tile().volume(),
    };
    let mut s: Vec<usize> = match text.placement {
        TextPlacement::Before => cut(text.len, tb, 0).chain(video.iter().map(|x| x + text.len)).collect(),
        TextPlacement::After => video.into_iter().chain(cut(text.len, tb, v)).collect(),
    };
    s.push(layout.seq_len());
    s
}

fn partition_for(order: TokenOrder) -> impl Strategy<Value = BlockPartition> {
    let uniform = (1usize..=12).prop_map(BlockPartition::Uniform);
    match order {
        TokenOrder::Natural => uniform.boxed(),
        TokenOrder::TileMajor => prop_oneof![uniform, Just(BlockPartition::PerTile)].boxed(),
    }
}

fn case() -> impl Strategy<Value = (Canvas, TileShape, TextSpec, TokenOrder, BlockPartition, PatternSpec)> {
    (canvas_and_tile(), text(), order()).prop_flat_map(|((c, t), text, order)| {
        (Just(c), Just(t), Just(text), Just(order), partition_for(order), pattern(c, t))
    })
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn block_maps_equal_the_brute_force_predicate((canvas, tile, text, order, partition, spec) in case()) {
        let layout = VideoLayout::new(canvas, tile, text).unwrap();
        let mask = AttentionMask::new(layout, spec.clone()).unwrap();
        let map = BlockMap::from_mask(&mask, order, partition).unwrap();
        let tokens = brute_tokens(canvas, tile, text, order);
        let n = tokens.len();
        let heads = mask.heads();
        let starts = expected_starts(&layout, text, partition, order);
        prop_assert_eq!(map.blocks().starts(), starts.as_slice());

        let brute = |h: usize, q: usize, k: usize| pattern_allows(&spec, canvas, tile, h, tokens[q], tokens[k]);
        for h in 0..heads {
            // Token predicate, through the mask and through the map.
            for q in 0..n {
                for k in 0..n {
                    let want = brute(h, q, k);
                    prop_assert_eq!(mask.allows(h, q, k, order), want, "mask h{} q{} k{}", h, q, k);
                    prop_assert_eq!(map.allows(h, q, k), want, "map h{} q{} k{}", h, q, k);
                }
            }
            // Every block pair classified as the brute force says.
            let nb = map.num_blocks();
            for qb in 0..nb {
                let row: Vec<(usize, BlockKind)> = map.row(h, qb).collect();
                let mut want = Vec::new();
                for kb in 0..nb {
                    let (mut on, mut off) = (0, 0);
                    for q in map.blocks().range(qb) {
                        for k in map.blocks().range(kb) {
                            if brute(h, q, k) { on += 1 } else { off += 1 }
                        }
                    }
                    match (on, off) {
                        (0, _) => {}
                        (_, 0) => want.push((kb, BlockKind::Full)),
                        _ => want.push((kb, BlockKind::Partial)),
                    }
                }
                prop_assert_eq!(row, want, "head {} query block {}", h, qb);
            }
        }

        // Statistics: exact counts from the brute force.
        let stats = MaskStats::from_map(&mask, &map);
        let video: Vec<usize> = (0..n).filter(|&i| tokens[i].is_some()).collect();
        let nv = video.len() as u64;
        let mut allowed = 0u64;
        for h in 0..heads {
            let a: u64 = video.iter().map(|&q| video.iter().filter(|&&k| brute(h, q, k)).count() as u64).sum();
            prop_assert_eq!(mask.allowed_video_pairs(h), a, "head {}", h);
            allowed += a;
        }
        prop_assert_eq!(stats.allowed_pairs, allowed);
        prop_assert_eq!(stats.total_pairs, nv * nv * heads as u64);
        prop_assert!((stats.sparsity - (1.0 - allowed as f64 / (nv * nv * heads as u64) as f64)).abs() < 1e-12);
        let vb: Vec<usize> = (0..map.num_blocks()).filter(|&b| map.blocks().segment(b) == Segment::Video).collect();
        let (mut dense, mut mixed) = (0usize, 0usize);
        for h in 0..heads {
            for &qb in &vb {
                for (kb, kind) in map.row(h, qb) {
                    if map.blocks().segment(kb) == Segment::Video {
                        if kind == BlockKind::Full { dense += 1 } else { mixed += 1 }
                    }
                }
            }
        }
        let total = (vb.len() * vb.len() * heads) as f64;
        prop_assert!((stats.dense_blocks - dense as f64 / total).abs() < 1e-12);
        prop_assert!((stats.mixed_blocks - mixed as f64 / total).abs() < 1e-12);
        prop_assert!((stats.dense_blocks + stats.mixed_blocks + stats.empty_blocks - 1.0).abs() < 1e-12);
    }

    #[test]
    fn sta_in_tile_major_order_per_tile_has_no_mixed_block(
        ((canvas, tile), text) in (canvas_and_tile(), text()),
        k in 0usize..3,
    ) {
        let layout = VideoLayout::new(canvas, tile, text).unwrap();
        let mask = AttentionMask::new(layout, PatternSpec::sta([2 * k + 1; 3])).unwrap();
        let stats = MaskStats::compute(&mask, TokenOrder::TileMajor, BlockPartition::PerTile).unwrap();
        prop_assert_eq!(stats.mixed_blocks, 0.0);
    }
}

#[test]
fn index_arrays_hold_every_row() {
    let layout =
        VideoLayout::new(Canvas::new(3, 4, 5).unwrap(), TileShape::new(1, 2, 2).unwrap(), TextSpec::before(3)).unwrap();
    let mask = AttentionMask::new(layout, PatternSpec::Sta { windows: vec![[1, 1, 1], [3, 1, 3]] }).unwrap();
    let map = BlockMap::from_mask(&mask, TokenOrder::TileMajor, BlockPartition::Uniform(4)).unwrap();
    let arrays = map.to_index_arrays();
    assert_eq!(arrays.rows, 2 * map.num_blocks());
    for r in 0..arrays.rows {
        let (h, qb) = (r / map.num_blocks(), r % map.num_blocks());
        let row: Vec<(usize, BlockKind)> = map.row(h, qb).collect();
        assert_eq!(arrays.counts[r] as usize, row.len());
        for (i, (kb, kind)) in row.iter().enumerate() {
            assert_eq!(arrays.indices[r * arrays.max_count + i] as usize, *kb);
            assert_eq!(arrays.partial[r * arrays.max_count + i] == 1, *kind == BlockKind::Partial);
        }
    }
}

#[test]
fn hunyuan_sta_matches_the_paper() {
    // STA paper: 3x3x3 tiles of 6x8x8 on 30x48x80 is 91% sparse, all blocks dense or empty.
    let layout =
        VideoLayout::new(Canvas::new(30, 48, 80).unwrap(), TileShape::new(6, 8, 8).unwrap(), TextSpec::after(256))
            .unwrap();
    let mask = AttentionMask::new(layout, PatternSpec::sta([3, 3, 3])).unwrap();
    let s = MaskStats::compute(&mask, TokenOrder::TileMajor, BlockPartition::Uniform(384)).unwrap();
    // 3 of 5 tiles in t, 3 of 6 in h, 3 of 10 in w: density 0.6 * 0.5 * 0.3 = 0.09.
    assert!((s.sparsity - 0.91).abs() < 1e-12, "{}", s.sparsity);
    assert_eq!(s.mixed_blocks, 0.0);
    assert!((s.dense_blocks - 0.09).abs() < 1e-12);
    assert_eq!(s.blocks, 301);
}
