//! Block-map building and statistics at the HunyuanVideo canvas (115,200 tokens): the geometry
//! must cost a negligible fraction of an attention call.
//!
//! `cargo bench --bench block_map`

use dit_attention::{
    AttentionMask, BlockMap, BlockPartition, Canvas, MaskStats, PatternSpec, TextSpec, TileShape, TokenOrder,
    VideoLayout,
};

fn main() {
    divan::main();
}

fn hunyuan() -> VideoLayout {
    VideoLayout::new(Canvas::new(30, 48, 80).unwrap(), TileShape::new(6, 8, 8).unwrap(), TextSpec::after(256)).unwrap()
}

#[divan::bench(args = ["sta", "natten", "tiled-natten", "swin", "clear"])]
fn stats_115k_block_384(bencher: divan::Bencher, pattern: &str) {
    let spec = match pattern {
        "sta" => PatternSpec::sta([3, 3, 3]),
        "natten" => PatternSpec::Natten { window: [17, 25, 25] },
        "tiled-natten" => PatternSpec::TiledNatten { window: [17, 25, 25] },
        "swin" => PatternSpec::Swin { window: [6, 8, 8], shift: [3, 4, 4] },
        _ => PatternSpec::Clear { radius: 12.0 },
    };
    let mask = AttentionMask::new(hunyuan(), spec.clone()).unwrap();
    bencher.bench(|| MaskStats::compute(&mask, spec.default_order(), BlockPartition::Uniform(384)).unwrap());
}

#[divan::bench]
fn sta_24_head_windows_block_64(bencher: divan::Bencher) {
    let windows: Vec<[usize; 3]> = (0..24).map(|h| [1 + 2 * (h % 3), 3, 1 + 2 * (h % 5)]).collect();
    let mask = AttentionMask::new(hunyuan(), PatternSpec::Sta { windows }).unwrap();
    bencher.bench(|| BlockMap::from_mask(&mask, TokenOrder::TileMajor, BlockPartition::Uniform(64)).unwrap());
}

#[divan::bench]
fn tile_permutation_115k(bencher: divan::Bencher) {
    let layout = hunyuan();
    bencher.bench(|| dit_attention::TokenPermutation::to_tile_major(&layout));
}
