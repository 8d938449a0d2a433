//! The benchmark shapes of BENCHMARKS.md on a GPU, through the public API on
//! `burn::backend::Cuda` (bf16, or f16 with `--dtype f16`):
//!
//! - `hunyuan`: B1 H24, 30x48x80 video + 256 text tokens after, d128; STA with tiles of 6x8x8 and
//!   windows 3x3x3, 3x5x5 and 5x5x9 tiles (densities 9%, 25%, 75%), tile-major input, the 3x3x3
//!   window also with natural-order input; dense.
//! - `cogvideox-2b`: B2 H30, 13x30x45 + 226 text before, d64; dense.
//! - `cogvideox15-5b`: B2 H48, 11x48x85 + 224 text before, d64; dense.
//!
//! Per shape it writes q, k, v and each variant's output as raw little-endian files, and one
//! `meta.json` for all, which `scripts/bench_vs_torch.py` reads to check our outputs against torch
//! and to time the peers on the same inputs. Times are medians of `--runs` device-synchronised
//! calls after one warm-up (compiling) call; the plan build (block map, token permutation) is
//! timed separately, as a median of `--runs` module inits.
//!
//! ```sh
//! CUDARC_CUDA_VERSION=13000 cargo build --release --features cuda --example engine_device
//! ./engine_device --out /tmp/bench   # on the GPU machine
//! ```

use std::time::Instant;

use burn::backend::Cuda;
use burn::backend::cuda::CudaDevice;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Distribution, Tensor};
use clap::Parser;
use dit_attention::{
    AttentionOptions, KernelPlan, SlidingTileAttentionConfig, SparseAttentionBackend, TextSpec, TokenOrder,
};

#[derive(Parser)]
struct Args {
    /// Folder for the shape folders and meta.json.
    #[arg(long)]
    out: std::path::PathBuf,
    /// bf16 or f16.
    #[arg(long, default_value = "bf16")]
    dtype: String,
    /// Timed runs after the warm-up.
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Comma-separated shapes (hunyuan, cogvideox-2b, cogvideox15-5b).
    #[arg(long, default_value = "hunyuan,cogvideox-2b,cogvideox15-5b")]
    shapes: String,
    /// Skip the dense runs (the slowest part).
    #[arg(long)]
    no_dense: bool,
}

type B = Cuda<f32, i32>;

/// One benchmark shape.
struct Shape {
    name: &'static str,
    batch: usize,
    heads: usize,
    canvas: [usize; 3],
    text: TextSpec,
    text_len: usize,
    text_after: bool,
    d: usize,
    /// STA windows (tiles of 6x8x8) timed at this shape.
    windows: &'static [[usize; 3]],
}

const TILE: [usize; 3] = [6, 8, 8];

fn shapes() -> Vec<Shape> {
    vec![
        Shape {
            name: "hunyuan",
            batch: 1,
            heads: 24,
            canvas: [30, 48, 80],
            text: TextSpec::after(256),
            text_len: 256,
            text_after: true,
            d: 128,
            windows: &[[3, 3, 3], [3, 5, 5], [5, 5, 9]],
        },
        Shape {
            name: "cogvideox-2b",
            batch: 2,
            heads: 30,
            canvas: [13, 30, 45],
            text: TextSpec::before(226),
            text_len: 226,
            text_after: false,
            d: 64,
            windows: &[],
        },
        Shape {
            name: "cogvideox15-5b",
            batch: 2,
            heads: 48,
            canvas: [11, 48, 85],
            text: TextSpec::before(224),
            text_len: 224,
            text_after: false,
            d: 64,
            windows: &[],
        },
    ]
}

type Timed = Result<f64, Box<dyn std::error::Error>>;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let device = CudaDevice::default();
    let dtype = match args.dtype.as_str() {
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        other => return Err(format!("--dtype must be bf16 or f16, got {other}").into()),
    };
    let wanted: Vec<&str> = args.shapes.split(',').collect();
    let mut entries = Vec::new();

    // Median of `runs` device-synchronised calls after one warm-up (compiling) call.
    let time = |f: &dyn Fn() -> dit_attention::Result<Tensor<B, 4>>| -> Timed {
        drop(f()?);
        B::sync(&device)?;
        let mut times = Vec::new();
        for _ in 0..args.runs {
            let t = Instant::now();
            drop(f()?);
            B::sync(&device)?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        Ok(times[times.len() / 2])
    };
    let median_of = |f: &dyn Fn() -> dit_attention::Result<()>| -> Timed {
        let mut times = Vec::new();
        for _ in 0..args.runs.max(3) {
            let t = Instant::now();
            f()?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        Ok(times[times.len() / 2])
    };

    for shape in shapes().into_iter().filter(|s| wanted.contains(&s.name)) {
        let n = shape.canvas.iter().product::<usize>() + shape.text_len;
        let (bh, d) = ((shape.batch * shape.heads) as f64, shape.d);
        let dims = [shape.batch, shape.heads, n, d];
        let rand = || Tensor::<B, 4>::random(dims, Distribution::Normal(0.0, 1.0), &device).cast(dtype);
        let (q, k, v) = (rand(), rand(), rand());
        let path = <B as SparseAttentionBackend>::sparse_attention_path(&device, dtype, d, d);
        let folder = args.out.join(shape.name);
        std::fs::create_dir_all(&folder)?;
        let tflops = |pairs: f64, ms: f64| 4.0 * pairs * d as f64 * bh / ms / 1e9;
        let mut save = |variant: String, out: Tensor<B, 4>, ms: f64, pairs: u64, extra: serde_json::Value| {
            let file = format!("out_{variant}.bin");
            std::fs::write(folder.join(&file), out.into_data().as_bytes())?;
            println!(
                "{:>15} {variant:>22}: {ms:9.2} ms, {:6.1} TF/s effective, density {:.4}",
                shape.name,
                tflops(pairs as f64, ms),
                pairs as f64 / (n * n) as f64
            );
            let mut entry = serde_json::json!({
                "shape": shape.name, "variant": variant, "file": file, "median_ms": ms,
                "allowed_pairs_per_head": pairs, "path": path,
            });
            entry.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            entries.push(entry);
            Ok::<(), Box<dyn std::error::Error>>(())
        };

        for &window in shape.windows {
            let orders: &[TokenOrder] = if window == [3, 3, 3] {
                &[TokenOrder::TileMajor, TokenOrder::Natural]
            } else {
                &[TokenOrder::TileMajor]
            };
            for &order in orders {
                let config = SlidingTileAttentionConfig::new(shape.canvas, TILE, vec![window])
                    .with_text(shape.text)
                    .with_order(order);
                let plan_ms = median_of(&|| config.init().map(drop))?;
                let module = config.init()?;
                let pairs = match module.block_map() {
                    Some(map) => KernelPlan::from_map(std::sync::Arc::new(map.clone()), 1.0).allowed_pairs(0),
                    None => (n * n) as u64,
                };
                let ms = time(&|| module.forward(q.clone(), k.clone(), v.clone()))?;
                let out = module.forward(q.clone(), k.clone(), v.clone())?;
                let order_name = if order == TokenOrder::Natural { "natural" } else { "tile-major" };
                let variant = format!("sta{}x{}x{}-{order_name}", window[0], window[1], window[2]);
                println!("{:>15} {variant:>22}: plan build (map + permutation, at init) {plan_ms:.3} ms", shape.name);
                save(
                    variant,
                    out,
                    ms,
                    pairs,
                    serde_json::json!({"window": window, "tile": TILE, "order": order_name, "plan_ms": plan_ms}),
                )?;
            }
        }
        if !args.no_dense {
            let options = AttentionOptions::default();
            let dense =
                || dit_attention::dense_attention(q.clone(), k.clone(), v.clone(), None, options).map(|r| r.output);
            let ms = time(&dense)?;
            save("dense".into(), dense()?, ms, (n * n) as u64, serde_json::json!({}))?;
        }
        for (name, t) in [("q", q), ("k", k), ("v", v)] {
            std::fs::write(folder.join(format!("{name}.bin")), t.into_data().as_bytes())?;
        }
        let shape_meta = serde_json::json!({
            "shape": shape.name, "batch": shape.batch, "heads": shape.heads, "n": n, "d": d,
            "canvas": shape.canvas, "text": shape.text_len, "text_after": shape.text_after,
        });
        std::fs::write(folder.join("shape.json"), serde_json::to_string_pretty(&shape_meta)?)?;
    }
    let meta = serde_json::json!({ "dtype": args.dtype, "runs": args.runs, "entries": entries });
    std::fs::write(args.out.join("meta.json"), serde_json::to_string_pretty(&meta)?)?;
    Ok(())
}
