//! The `mask_stats` example, run in-process: its JSON, its table, its picture and its errors.

#[path = "../examples/mask_stats.rs"]
#[allow(dead_code)]
mod mask_stats;

use clap::Parser;

fn run(args: &str) -> Result<String, String> {
    let argv = std::iter::once("mask_stats").chain(args.split_whitespace());
    let args = mask_stats::Args::try_parse_from(argv).map_err(|e| e.to_string())?;
    mask_stats::run(&args).map_err(|e| e.to_string())
}

fn json(args: &str) -> serde_json::Value {
    let out = run(&format!("{args} --json")).unwrap();
    assert_eq!(out.trim_end().lines().count(), 1, "exactly one JSON line: {out}");
    serde_json::from_str(&out).unwrap()
}

#[test]
fn json_has_the_documented_fields_for_every_pattern() {
    for args in [
        "--pattern sta --canvas 30,48,80 --tile 6,8,8 --window 3,3,3",
        "--pattern natten --canvas 10,16,20 --window 5,7,9",
        "--pattern tiled-natten --canvas 10,16,20 --tile 2,4,4 --window 5,7,9 --block 64",
        "--pattern swin --canvas 10,16,20 --window 2,4,4 --shift 1,2,2 --text 7 --text-at before",
        "--pattern clear --canvas 10,16,20 --radius 3.5 --order tile-major",
        "--pattern sta --canvas 13,30,45 --tile 6,8,8 --window 3,3,3 --text 226 --text-at before",
        "--pattern sta --canvas 16,16 --tile 4,4 --window 1,3 --window 3,3",
    ] {
        let v = json(args);
        for key in ["pattern", "canvas", "tile", "block", "sparsity", "dense_blocks", "mixed_blocks", "empty_blocks"] {
            assert!(v.get(key).is_some(), "{args}: no {key} in {v}");
        }
        let f = |k: &str| v[k].as_f64().unwrap();
        for k in ["sparsity", "dense_blocks", "mixed_blocks", "empty_blocks"] {
            assert!((0.0..=1.0).contains(&f(k)), "{args}: {k} = {}", f(k));
        }
        assert!((f("dense_blocks") + f("mixed_blocks") + f("empty_blocks") - 1.0).abs() < 1e-12, "{args}");
    }
    let v = json("--pattern sta --canvas 30,48,80 --tile 6,8,8 --window 3,3,3");
    assert_eq!(v["canvas"], serde_json::json!([30, 48, 80]));
    assert_eq!(v["block"], 384);
    assert!((v["sparsity"].as_f64().unwrap() - 0.91).abs() < 1e-12);
    assert_eq!(v["mixed_blocks"], 0.0);
    // CogVideoX-2B: tiles do not divide 13 x 30 x 45; one block per tile keeps STA dense or empty.
    let v = json("--pattern sta --canvas 13,30,45 --tile 6,8,8 --window 3,3,3 --text 226 --text-at before");
    assert_eq!(v["mixed_blocks"], 0.0);
    assert_eq!(v["per_tile"], true);
    // A tile longer than the canvas is one partial tile.
    let v = json("--pattern sta --canvas 4,48,80 --tile 6,8,8 --window 1,3,3");
    assert_eq!(v["mixed_blocks"], 0.0);
    // A 2D canvas and per-head windows.
    let v = json("--pattern sta --canvas 16,16 --tile 4,4 --window 1,3 --window 3,3");
    assert_eq!(v["canvas"], serde_json::json!([1, 16, 16]));
    assert_eq!(v["heads"], 2);
}

#[test]
fn the_table_is_readable() {
    let out = run("--pattern sta --canvas 30,48,80 --tile 6,8,8 --window 3,3,3 --text 256").unwrap();
    for want in [
        "sta (tile-major order)",
        "115200 video tokens",
        "3 x 3 x 3 tiles",
        "256 tokens after",
        " 91.00 %",
        "dense blocks         9.00 %",
    ] {
        assert!(out.contains(want), "table lacks {want:?}:\n{out}");
    }
}

#[test]
fn the_picture_shows_the_block_map() {
    let dir = std::env::temp_dir().join(format!("mask_stats_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sta.png");
    // 5 x 6 x 10 tiles: 300 blocks drawn 3 pixels each.
    run(&format!(
        "--pattern sta --canvas 30,48,80 --tile 6,8,8 --window 3,3,3 --png {} --png-size 900",
        path.display()
    ))
    .unwrap();
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (900, 900));
    let px = &buf[..info.buffer_size()];
    let dark = px.chunks(3).filter(|p| p[0] < 100 && p[2] > 80).count() as f64;
    let white = px.chunks(3).filter(|p| p == &[255, 255, 255]).count() as f64;
    // 9% of the blocks are dense, the rest empty.
    assert!((dark / (900.0 * 900.0) - 0.09).abs() < 1e-9, "dark fraction {}", dark / 810000.0);
    assert!((white / (900.0 * 900.0) - 0.91).abs() < 1e-9);
    // Downsampled: a 2000-block map in at most 512 pixels.
    run(&format!(
        "--pattern natten --canvas 1,1,2000 --tile 1 --window 101 --block 1 --png {} --png-size 512",
        path.display()
    ))
    .unwrap();
    let reader = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap())).read_info().unwrap();
    assert!(reader.info().width <= 512 && reader.info().width >= 400);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_arguments_are_named() {
    let e = run("--pattern sta --canvas 30,48,80 --tile 6,8,8 --window 3,4,3").unwrap_err();
    assert!(e.contains("odd") && e.contains('4'), "{e}");
    let e = run("--pattern natten --canvas 30,48,80").unwrap_err();
    assert!(e.contains("--window"), "{e}");
    let e = run("--pattern clear --canvas 30,48,80").unwrap_err();
    assert!(e.contains("--radius"), "{e}");
    let e = run("--pattern natten --canvas 4,48,80 --window 5,3,3").unwrap_err();
    assert!(e.contains("window 5") && e.contains("canvas length 4"), "{e}");
    let e = run("--pattern sta --canvas 30,48,80 --window 3,3,3 --png x.png --head 2").unwrap_err();
    assert!(e.contains("--head 2"), "{e}");
}
