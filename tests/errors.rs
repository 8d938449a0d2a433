//! Bad input gets a clear error that names the values, never a panic or a silent result.

mod common;

use burn::tensor::Tensor;
use common::*;
use dit_attention::mask::BlockLayout;
use dit_attention::reference::{block_sparse_attention_reference, dense_attention_reference, sta_attention_reference};
use dit_attention::{
    AttentionMask, AttentionOptions, BlockKind, BlockMap, BlockPartition, Canvas, KernelPlan, PatternSpec, TextSpec,
    TileShape, TokenOrder, VideoLayout, attention_with_plan,
};

fn layout() -> VideoLayout {
    VideoLayout::new(Canvas::new(4, 6, 8).unwrap(), TileShape::new(2, 3, 4).unwrap(), TextSpec::after(3)).unwrap()
}

fn err_of<T: std::fmt::Debug>(r: dit_attention::Result<T>) -> String {
    r.unwrap_err().to_string()
}

fn assert_names(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "error {msg:?} should mention {p:?}");
    }
}

#[test]
fn even_windows_are_rejected() {
    let msg = err_of(AttentionMask::new(layout(), PatternSpec::sta([3, 2, 3])));
    assert_names(&msg, &["odd", "2", "dimension h", "[3, 2, 3]"]);
    let msg = err_of(AttentionMask::new(layout(), PatternSpec::Natten { window: [1, 3, 4] }));
    assert_names(&msg, &["odd", "4", "dimension w"]);
}

#[test]
fn zero_windows_and_zero_canvases_are_rejected() {
    let msg = err_of(AttentionMask::new(layout(), PatternSpec::sta([0, 1, 1])));
    assert_names(&msg, &["zero", "dimension t", "[0, 1, 1]"]);
    assert_names(&err_of(Canvas::new(3, 0, 4)), &["canvas", "dimension h", "[3, 0, 4]"]);
    assert_names(&err_of(TileShape::new(1, 1, 0)), &["tile", "dimension w"]);
    assert_names(
        &err_of(AttentionMask::new(layout(), PatternSpec::Swin { window: [1, 0, 1], shift: [0; 3] })),
        &["zero"],
    );
}

#[test]
fn windows_and_tiles_larger_than_the_canvas_are_rejected() {
    let msg = err_of(AttentionMask::new(layout(), PatternSpec::Natten { window: [5, 3, 3] }));
    assert_names(&msg, &["window 5", "dimension t", "canvas length 4"]);
    let msg = err_of(AttentionMask::new(layout(), PatternSpec::Swin { window: [1, 7, 1], shift: [0; 3] }));
    assert_names(&msg, &["7", "dimension h", "6"]);
    // A tile longer than the canvas is one partial tile (spec section 1: never refuse ragged canvases).
    let l = VideoLayout::new(Canvas::image(6, 8).unwrap(), TileShape::new(2, 4, 4).unwrap(), TextSpec::none()).unwrap();
    assert_eq!(l.tiling().counts(), [1, 2, 2]);
    assert_names(&err_of(Canvas::new(1 << 20, 1 << 20, 4)), &["too many tokens"]);
    assert_names(&err_of(Canvas::new(usize::MAX, 2, 2)), &["too many tokens"]);
    // STA windows wider than the tile count mean the whole dimension: allowed by the spec.
    assert!(AttentionMask::new(layout(), PatternSpec::sta([9, 9, 9])).unwrap().covers_everything());
}

#[test]
fn other_pattern_parameters_are_checked() {
    assert_names(
        &err_of(AttentionMask::new(layout(), PatternSpec::Swin { window: [2, 3, 4], shift: [0, 3, 0] })),
        &["shift 3", "window 3"],
    );
    assert_names(&err_of(AttentionMask::new(layout(), PatternSpec::Clear { radius: 0.0 })), &["radius", "0"]);
    assert_names(&err_of(AttentionMask::new(layout(), PatternSpec::Clear { radius: f64::NAN })), &["NaN"]);
    assert_names(&err_of(AttentionMask::new(layout(), PatternSpec::Sta { windows: vec![] })), &["at least one window"]);
    assert_names(
        &err_of(BlockLayout::new(&layout(), TokenOrder::Natural, BlockPartition::Uniform(0))),
        &["at least 1, got 0"],
    );
    assert_names(&err_of(BlockLayout::new(&layout(), TokenOrder::Natural, BlockPartition::PerTile)), &["tile-major"]);
    assert_names(&err_of(Canvas::from_slice(&[1, 2, 3, 4])), &["1, 2 or 3 values", "[1, 2, 3, 4]"]);
}

#[test]
fn text_and_sequence_length_mismatches_are_rejected() {
    let l = layout(); // 192 video + 3 text = 195
    let x = Tensor::<B64, 4>::ones([1, 2, 194, 4], opts::<B64>());
    let msg = err_of(sta_attention_reference(
        x.clone(),
        x.clone(),
        x.clone(),
        &l,
        &[[1, 1, 1]],
        TokenOrder::Natural,
        None,
        AttentionOptions::default(),
    ));
    assert_names(&msg, &["194", "195", "192 video", "3 text"]);
    let mask = AttentionMask::new(l, PatternSpec::sta([1, 1, 1])).unwrap();
    let map = BlockMap::from_mask(&mask, TokenOrder::TileMajor, BlockPartition::PerTile).unwrap();
    let msg =
        err_of(block_sparse_attention_reference(x.clone(), x.clone(), x, &map, None, AttentionOptions::default()));
    assert_names(&msg, &["194", "195"]);
}

#[test]
fn tensor_shapes_are_checked() {
    let t = |s: [usize; 4]| Tensor::<B64, 4>::ones(s, opts::<B64>());
    let msg = err_of(dense_attention_reference(
        t([1, 2, 5, 4]),
        t([1, 2, 6, 3]),
        t([1, 2, 6, 4]),
        None,
        None,
        AttentionOptions::default(),
    ));
    assert_names(&msg, &["key", "[1, 2, 6, 4]", "[1, 2, 6, 3]"]);
    let msg = err_of(dense_attention_reference(
        t([1, 2, 5, 4]),
        t([1, 2, 6, 4]),
        t([1, 2, 7, 4]),
        None,
        None,
        AttentionOptions::default(),
    ));
    assert_names(&msg, &["value", "[1, 2, 7, 4]"]);
    let bias = Tensor::<B64, 3>::ones([1, 2, 5], opts::<B64>());
    let msg = err_of(dense_attention_reference(
        t([1, 2, 5, 4]),
        t([1, 2, 6, 4]),
        t([1, 2, 6, 4]),
        None,
        Some(bias),
        AttentionOptions::default(),
    ));
    assert_names(&msg, &["bias", "[1, 2, 6]", "[1, 2, 5]"]);
    let msg = err_of(dense_attention_reference(
        t([1, 0, 5, 4]),
        t([1, 0, 5, 4]),
        t([1, 0, 5, 4]),
        None,
        None,
        AttentionOptions::default(),
    ));
    assert_names(&msg, &["query", "empty", "[1, 0, 5, 4]"]);
    for (scale, names) in [
        (f64::INFINITY, &["scale", "inf"][..]),
        (-0.5, &["scale", "positive", "-0.5"][..]),
        (1e-30, &["scale", "between", "1e-10"][..]),
    ] {
        let x = t([1, 1, 5, 4]);
        let options = AttentionOptions::with_scale(scale);
        let msg = err_of(dense_attention_reference(x.clone(), x.clone(), x, None, None, options));
        assert_names(&msg, names);
    }
    // A prepared plan carries its own scale: checked too, before any kernel sees it.
    let x = t([1, 1, 5, 4]);
    let msg = err_of(attention_with_plan(x.clone(), x.clone(), x, None, &KernelPlan::dense(5, 5, 0.0)));
    assert_names(&msg, &["scale", "positive", "got 0"]);
    let m = Tensor::<B64, 4, burn::tensor::Bool>::empty([1, 2, 5, 5], &Default::default());
    let msg = err_of(dense_attention_reference(
        t([1, 2, 5, 4]),
        t([1, 2, 6, 4]),
        t([1, 2, 6, 4]),
        Some(m),
        None,
        AttentionOptions::default(),
    ));
    assert_names(&msg, &["mask", "[1, 2, 5, 6]", "[1, 2, 5, 5]"]);
}

#[test]
fn block_maps_from_rows_are_checked() {
    let l = VideoLayout::untiled(Canvas::sequence(8).unwrap(), TextSpec::none());
    let blocks = || BlockLayout::new(&l, TokenOrder::Natural, BlockPartition::Uniform(4)).unwrap();
    assert_names(&err_of(BlockMap::from_rows(blocks(), 1, vec![vec![]], None)), &["needs 2 rows, got 1"]);
    assert_names(
        &err_of(BlockMap::from_rows(blocks(), 1, vec![vec![(2, BlockKind::Full)], vec![]], None)),
        &["key block 2"],
    );
    assert_names(
        &err_of(BlockMap::from_rows(blocks(), 1, vec![vec![(0, BlockKind::Partial)], vec![]], None)),
        &["partial", "predicate"],
    );
    // A per-head map must match the tensor's heads.
    let map = BlockMap::from_rows(blocks(), 2, vec![vec![(0, BlockKind::Full)]; 4], None).unwrap();
    let x = Tensor::<B64, 4>::ones([1, 3, 8, 2], opts::<B64>());
    assert_names(
        &err_of(block_sparse_attention_reference(x.clone(), x.clone(), x, &map, None, AttentionOptions::default())),
        &["2 per-head", "3 heads"],
    );
}

#[test]
fn merging_results_of_different_shapes_is_an_error() {
    use dit_attention::reference::merge_attention;
    let o = |n: usize| dit_attention::AttentionOutput::<B64> {
        output: Tensor::<B64, 4>::zeros([1, 2, n, 3], opts::<B64>()),
        lse: Tensor::<B64, 3>::zeros([1, 2, n], opts::<B64>()),
    };
    assert_names(&err_of(merge_attention(o(4), o(5))), &["[1, 2, 4, 3]", "[1, 2, 5, 3]"]);
    let bad = dit_attention::AttentionOutput::<B64> {
        output: o(4).output,
        lse: Tensor::<B64, 3>::zeros([1, 2, 1], opts::<B64>()),
    };
    assert_names(&err_of(merge_attention(o(4), bad)), &["[1, 2, 1]"]);
}

#[test]
fn drawing_a_head_the_map_lacks_is_an_error() {
    let mask = AttentionMask::new(layout(), PatternSpec::sta([1, 1, 1])).unwrap();
    let map = BlockMap::from_mask(&mask, TokenOrder::TileMajor, BlockPartition::PerTile).unwrap();
    assert_names(&err_of(dit_attention::mask::draw_block_map(&map, 1, 64)), &["head 1", "1 head"]);
}
