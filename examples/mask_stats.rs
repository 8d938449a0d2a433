//! Sparsity and block statistics of a local attention pattern, and a picture of its block map.
//!
//! ```text
//! cargo run --release --example mask_stats -- --pattern sta --canvas 30,48,80 --tile 6,8,8 --window 3,3,3
//! cargo run --release --example mask_stats -- --pattern natten --canvas 30,48,80 --window 17,25,25 --json
//! cargo run --release --example mask_stats -- --pattern sta --canvas 30,48,80 --window 3,3,3 --png sta.png
//! ```

use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, ValueEnum};
use dit_attention::canvas::pad_dims;
use dit_attention::mask::draw_block_map;
use dit_attention::{
    AttentionMask, BlockMap, BlockPartition, Canvas, MaskStats, PatternSpec, TextPlacement, TextSpec, TileShape,
    TokenOrder, VideoLayout,
};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Pattern {
    Sta,
    Natten,
    TiledNatten,
    Swin,
    Clear,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Order {
    Natural,
    TileMajor,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum At {
    Before,
    After,
}

/// Sparsity, dense / mixed / empty block fractions and a picture of an attention pattern's block map.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Args {
    /// Attention pattern.
    #[arg(long, value_enum)]
    pattern: Pattern,
    /// Canvas `T,H,W` (or `H,W` for an image, `N` for a sequence).
    #[arg(long, value_delimiter = ',', required = true)]
    canvas: Vec<usize>,
    /// Tile `T,H,W` (default 6,8,8 cut down to the canvas).
    #[arg(long, value_delimiter = ',')]
    tile: Option<Vec<usize>>,
    /// Window: in tiles for `sta`, in tokens for `natten`, `tiled-natten` and `swin`. For `sta`,
    /// repeat it once per head to give each head its own window.
    #[arg(long, action = clap::ArgAction::Append)]
    window: Vec<String>,
    /// Swin shift `T,H,W` in tokens.
    #[arg(long, value_delimiter = ',')]
    shift: Option<Vec<usize>>,
    /// CLEAR radius in tokens.
    #[arg(long)]
    radius: Option<f64>,
    /// Block size in tokens (default: the tile volume; in tile-major order, one block per tile,
    /// which is the same where tiles divide the canvas and keeps ragged STA blocks dense).
    #[arg(long)]
    block: Option<usize>,
    /// Token order of the video (default: tile-major for sta and tiled-natten, natural otherwise).
    #[arg(long, value_enum)]
    order: Option<Order>,
    /// Text tokens.
    #[arg(long, default_value_t = 0)]
    text: usize,
    /// Where the text sits.
    #[arg(long, value_enum, default_value = "after")]
    text_at: At,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Draw the block map into this PNG file.
    #[arg(long)]
    png: Option<std::path::PathBuf>,
    /// Largest side of the picture in pixels.
    #[arg(long, default_value_t = 1024)]
    png_size: usize,
    /// Which head to draw (per-head windows).
    #[arg(long, default_value_t = 0)]
    head: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// Computes the statistics, writes the picture if asked, and returns what to print.
pub fn run(args: &Args) -> Result<String, Box<dyn std::error::Error>> {
    let canvas = Canvas::from_slice(&args.canvas)?;
    let tile = match &args.tile {
        Some(t) => TileShape::from_slice(t)?,
        None => {
            let c = canvas.dims();
            TileShape::new(6.min(c[0]), 8.min(c[1]), 8.min(c[2]))?
        }
    };
    let placement = match args.text_at {
        At::Before => TextPlacement::Before,
        At::After => TextPlacement::After,
    };
    let layout = VideoLayout::new(canvas, tile, TextSpec { len: args.text, placement })?;
    let windows = args
        .window
        .iter()
        .map(|w| {
            let v = w.split(',').map(|x| x.trim().parse::<usize>()).collect::<Result<Vec<_>, _>>()?;
            Ok(pad_dims("window", &v, 1)?)
        })
        .collect::<Result<Vec<[usize; 3]>, Box<dyn std::error::Error>>>()?;
    let one_window = || -> Result<[usize; 3], String> {
        match windows.as_slice() {
            [w] => Ok(*w),
            [] => Err("--window is required for this pattern".into()),
            _ => Err(format!("per-head windows are for sta only; got {} windows", windows.len())),
        }
    };
    let spec = match args.pattern {
        Pattern::Sta if windows.is_empty() => return Err("--window is required for sta".into()),
        Pattern::Sta => PatternSpec::Sta { windows: windows.clone() },
        Pattern::Natten => PatternSpec::Natten { window: one_window()? },
        Pattern::TiledNatten => PatternSpec::TiledNatten { window: one_window()? },
        Pattern::Swin => {
            let shift = match &args.shift {
                Some(v) => pad_dims("shift", v, 0)?,
                None => [0; 3],
            };
            PatternSpec::Swin { window: one_window()?, shift }
        }
        Pattern::Clear => PatternSpec::Clear { radius: args.radius.ok_or("--radius is required for clear")? },
    };
    let order = match args.order {
        Some(Order::Natural) => TokenOrder::Natural,
        Some(Order::TileMajor) => TokenOrder::TileMajor,
        None => spec.default_order(),
    };
    let partition = match (args.block, order) {
        (Some(b), _) => BlockPartition::Uniform(b),
        (None, TokenOrder::TileMajor) => BlockPartition::PerTile,
        (None, TokenOrder::Natural) => BlockPartition::Uniform(tile.volume()),
    };

    let mask = AttentionMask::new(layout, spec)?;
    let start = Instant::now();
    let map = BlockMap::from_mask(&mask, order, partition)?;
    let stats = MaskStats::from_map(&mask, &map);
    let elapsed = start.elapsed();

    if let Some(path) = &args.png {
        if args.head >= mask.heads() {
            return Err(format!("--head {} but the pattern has {} head(s)", args.head, mask.heads()).into());
        }
        draw_block_map(&map, args.head, args.png_size)?.write_png(path)?;
    }
    if args.json {
        let mut v = serde_json::to_value(&stats)?;
        v["window"] = serde_json::to_value(&windows)?;
        v["build_ms"] = serde_json::to_value(elapsed.as_secs_f64() * 1e3)?;
        return Ok(format!("{}\n", serde_json::to_string(&v)?));
    }
    let mut out = table(args, &layout, &windows, &stats, elapsed.as_secs_f64() * 1e3);
    if let Some(path) = &args.png {
        out += &format!("picture            {} (dense = dark blue, mixed = orange, empty = white)\n", path.display());
    }
    Ok(out)
}

fn table(args: &Args, layout: &VideoLayout, windows: &[[usize; 3]], s: &MaskStats, ms: f64) -> String {
    let mut out = String::new();
    macro_rules! row {
        ($($arg:tt)*) => {{
            out += &format!($($arg)*);
            out.push('\n');
        }};
    }
    let x = |d: [usize; 3]| format!("{} x {} x {}", d[0], d[1], d[2]);
    let pct = |f: f64| format!("{:6.2} %", 100.0 * f);
    let order = match s.order {
        TokenOrder::Natural => "natural",
        TokenOrder::TileMajor => "tile-major",
    };
    row!("pattern            {} ({order} order)", s.pattern);
    row!("canvas             {} = {} video tokens", x(s.canvas), s.video_tokens);
    row!("tile               {} ({} tiles)", x(s.tile), x(layout.tiling().counts()));
    let unit = if matches!(args.pattern, Pattern::Sta) { "tiles" } else { "tokens" };
    match (args.pattern, windows) {
        (Pattern::Clear, _) => row!("radius             {} tokens", args.radius.unwrap_or_default()),
        (_, [w]) => row!("window             {} {unit}", x(*w)),
        (_, ws) => {
            row!("windows            {} heads: {}", ws.len(), ws.iter().map(|w| x(*w)).collect::<Vec<_>>().join(", "))
        }
    }
    match s.text {
        0 => row!("text               none"),
        n => row!("text               {n} tokens {}", format!("{:?}", layout.text().placement).to_lowercase()),
    }
    match s.per_tile {
        false => row!("blocks             {} tokens: {} blocks ({} video)", s.block, s.blocks, s.video_blocks),
        true => {
            row!("blocks             one per tile ({} tokens): {} blocks ({} video)", s.block, s.blocks, s.video_blocks)
        }
    }
    row!("sparsity           {}   (density {})", pct(s.sparsity), pct(1.0 - s.sparsity).trim());
    if s.heads > 1 {
        let hs: Vec<String> = s.head_sparsity.iter().map(|h| format!("{:.1}%", 100.0 * h)).collect();
        row!("per head           {}", hs.join(" "));
    }
    row!("dense blocks       {}", pct(s.dense_blocks));
    row!("mixed blocks       {}", pct(s.mixed_blocks));
    row!("empty blocks       {}", pct(s.empty_blocks));
    row!("visited blocks     {}   (all blocks, text included)", pct(s.visited_blocks));
    row!("build time         {ms:.1} ms");
    out
}
