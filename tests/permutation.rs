//! The tile permutation: exact, inverse of itself, equal to a brute-force enumeration, and the
//! same as burn tensor ops.

mod common;

use common::strategies::{canvas_and_tile, text};
use common::*;
use dit_attention::permutation::tile_positions;
use dit_attention::{Token, TokenOrder, TokenPermutation, VideoLayout, to_natural, to_tile_major};
use proptest::prelude::*;

proptest! {
    #![proptest_config(cases(64))]

    #[test]
    fn positions_match_brute_force((canvas, tile) in canvas_and_tile(), text in text()) {
        let layout = VideoLayout::new(canvas, tile, text).unwrap();
        for order in [TokenOrder::Natural, TokenOrder::TileMajor] {
            let tokens = brute_tokens(canvas, tile, text, order);
            prop_assert_eq!(tokens.len(), layout.seq_len());
            for (pos, want) in tokens.iter().enumerate() {
                let got = layout.token_at(pos, order);
                match (got, want) {
                    (Token::Video(c), Some(w)) => prop_assert_eq!(c, *w, "position {}", pos),
                    (Token::Text(_), None) => {}
                    other => prop_assert!(false, "position {pos}: {other:?}"),
                }
                prop_assert_eq!(layout.position_of(got, order), pos);
            }
        }
        // Tile blocks are contiguous in tile-major order and partition the video.
        let mut seen = vec![false; layout.seq_len()];
        for t in 0..layout.tiling().num_tiles() {
            let p = tile_positions(&layout, t, TokenOrder::TileMajor);
            prop_assert!(p.windows(2).all(|w| w[1] == w[0] + 1), "tile {} not contiguous", t);
            for x in p { prop_assert!(!seen[x]); seen[x] = true; }
        }
        prop_assert_eq!(seen.iter().filter(|s| **s).count(), layout.video_len());
    }

    #[test]
    fn index_arrays_are_exact_inverses((canvas, tile) in canvas_and_tile(), text in text()) {
        let layout = VideoLayout::new(canvas, tile, text).unwrap();
        let p = TokenPermutation::to_tile_major(&layout);
        let n = layout.seq_len();
        let mut sorted: Vec<u32> = p.forward().to_vec();
        sorted.sort();
        prop_assert_eq!(sorted, (0..n as u32).collect::<Vec<_>>());
        for i in 0..n {
            prop_assert_eq!(p.inverse()[p.forward()[i] as usize] as usize, i);
            prop_assert_eq!(p.forward()[p.inverse()[i] as usize] as usize, i);
        }
        // Text keeps its place.
        for i in layout.text_range() { prop_assert_eq!(p.forward()[i] as usize, i); }
        prop_assert_eq!(p.inverted().inverted(), p.clone());
        // The fast construction equals the general one.
        prop_assert_eq!(p, TokenPermutation::between(&layout, TokenOrder::Natural, TokenOrder::TileMajor));
    }

    #[test]
    fn tensor_round_trip_is_exact((canvas, tile) in canvas_and_tile(), text in text(), seed in any::<u64>()) {
        let layout = VideoLayout::new(canvas, tile, text).unwrap();
        let n = layout.seq_len();
        let mut rng = SeedRng::new(seed);
        let (x, xv) = randn::<B64, 4>(&mut rng, [2, 3, n, 4]);
        let tm = to_tile_major(x.clone(), &layout).unwrap();
        let tmv = values(tm.clone());
        // Row i of the tile-major tensor is the natural row of the same token (brute force).
        let fwd = TokenPermutation::to_tile_major(&layout);
        let natural = brute_tokens(canvas, tile, text, TokenOrder::Natural);
        let tiled = brute_tokens(canvas, tile, text, TokenOrder::TileMajor);
        let mut text_seen = 0;
        let src_of: Vec<usize> = tiled.iter().enumerate().map(|(i, t)| match t {
            Some(c) => natural.iter().position(|x| *x == Some(*c)).unwrap(),
            None => { text_seen += 1; i }
        }).collect();
        prop_assert_eq!(text_seen, text.len);
        for bh in 0..6 {
            for i in 0..n {
                let src = src_of[i];
                prop_assert_eq!(&tmv[(bh * n + i) * 4..(bh * n + i + 1) * 4], &xv[(bh * n + src) * 4..(bh * n + src + 1) * 4]);
            }
        }
        let back = values(to_natural(tm, &layout).unwrap());
        prop_assert_eq!(back, xv);
        // Any dimension: [n, c] tensors.
        let (y, yv) = randn::<B64, 2>(&mut rng, [n, 3]);
        let y2 = fwd.apply_inverse(fwd.apply(y, 0).unwrap(), 0).unwrap();
        prop_assert_eq!(values(y2), yv);
    }
}

#[test]
fn wrong_sequence_length_is_an_error_naming_the_values() {
    let layout = VideoLayout::new(
        dit_attention::Canvas::new(2, 3, 4).unwrap(),
        dit_attention::TileShape::new(1, 2, 2).unwrap(),
        dit_attention::TextSpec::before(5),
    )
    .unwrap();
    let x = burn::tensor::Tensor::<B64, 4>::ones([1, 1, 30, 2], opts::<B64>());
    let msg = to_tile_major(x, &layout).unwrap_err().to_string();
    assert!(msg.contains("30") && msg.contains("24") && msg.contains("29"), "{msg}");
}
