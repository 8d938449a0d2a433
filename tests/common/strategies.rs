//! proptest strategies for small layouts: 1D, 2D and 3D canvases, ragged tiles, text anywhere.
#![allow(dead_code)]

use dit_attention::{Canvas, TextSpec, TileShape, TokenOrder};
use proptest::prelude::*;

/// A canvas (1D, 2D or 3D, small) and a tile that fits it (often ragged).
pub fn canvas_and_tile() -> impl Strategy<Value = (Canvas, TileShape)> {
    prop_oneof![
        (1usize..=40).prop_map(|n| [1, 1, n]),
        (1usize..=7, 1usize..=9).prop_map(|(h, w)| [1, h, w]),
        (1usize..=5, 1usize..=6, 1usize..=7).prop_map(|(t, h, w)| [t, h, w]),
    ]
    .prop_flat_map(|c| {
        let tile = (1..=c[0], 1..=c[1], 1..=c[2]);
        (Just(c), tile)
    })
    .prop_map(|(c, (a, b, d))| (Canvas::new(c[0], c[1], c[2]).unwrap(), TileShape::new(a, b, d).unwrap()))
}

pub fn text() -> impl Strategy<Value = TextSpec> {
    prop_oneof![Just(TextSpec::none()), (1usize..=5).prop_map(TextSpec::before), (1usize..=5).prop_map(TextSpec::after)]
}

pub fn order() -> impl Strategy<Value = TokenOrder> {
    prop_oneof![Just(TokenOrder::Natural), Just(TokenOrder::TileMajor)]
}

/// An odd window of at most `max` per dimension (or exactly 1 where the dimension is 1).
pub fn odd_window(max: [usize; 3]) -> impl Strategy<Value = [usize; 3]> {
    let odd = |m: usize| (0..=(m.max(1) - 1) / 2).prop_map(|i| 2 * i + 1);
    (odd(max[0]), odd(max[1]), odd(max[2])).prop_map(|(a, b, c)| [a, b, c])
}

use dit_attention::PatternSpec;

/// Any of the five patterns with parameters valid for the canvas (STA windows may exceed the
/// tile count; per-head STA windows for 1-3 heads).
pub fn pattern(canvas: Canvas, tile: TileShape) -> impl Strategy<Value = PatternSpec> {
    let c = canvas.dims();
    let n = [0, 1, 2].map(|d| c[d].div_ceil(tile.dims()[d]));
    let sta = prop::collection::vec(odd_window([n[0] + 2, n[1] + 2, n[2] + 2]), 1..=3)
        .prop_map(|windows| PatternSpec::Sta { windows });
    let natten = odd_window(c).prop_map(|window| PatternSpec::Natten { window });
    let tiled = odd_window(c).prop_map(|window| PatternSpec::TiledNatten { window });
    let swin = (1..=c[0], 1..=c[1], 1..=c[2])
        .prop_flat_map(|(a, b, d)| (Just([a, b, d]), 0..a, 0..b, 0..d))
        .prop_map(|(window, s0, s1, s2)| PatternSpec::Swin { window, shift: [s0, s1, s2] });
    let clear = prop::sample::select(vec![0.5, 1.0, 1.5, 2.0f64.sqrt(), 2.2, 3.0, 5.0f64.sqrt(), 4.5, 1e20])
        .prop_map(|radius| PatternSpec::Clear { radius });
    prop_oneof![sta, natten, tiled, swin, clear]
}
