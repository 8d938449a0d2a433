//! The Hunyuan-shape check on a GPU: STA (3x3x3 tiles of 6x8x8, 256 text tokens after the video,
//! B1 H24 d128) through the public API on `burn::backend::Cuda` in bf16 (f16 with `--dtype f16`).
//! Writes q, k, v and our output as raw little-endian files for `scripts/hunyuan_vs_torch.py`,
//! which compares against FlexAttention with the same mask, and prints our median time.
//!
//! ```sh
//! CUDARC_CUDA_VERSION=13000 cargo build --release --features cuda --example engine_device
//! ./engine_device --out /tmp/hunyuan   # on the GPU machine
//! ```

use std::time::Instant;

use burn::backend::Cuda;
use burn::backend::cuda::CudaDevice;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Distribution, Tensor};
use clap::Parser;
use dit_attention::{SlidingTileAttentionConfig, SparseAttentionBackend, TextSpec, TokenOrder};

#[derive(Parser)]
struct Args {
    /// Folder for q.bin, k.bin, v.bin, out.bin and meta.json.
    #[arg(long)]
    out: std::path::PathBuf,
    /// bf16 or f16.
    #[arg(long, default_value = "bf16")]
    dtype: String,
    /// Timed runs after the warm-up.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Canvas `T,H,W`.
    #[arg(long, default_value = "30,48,80")]
    canvas: String,
    /// Heads.
    #[arg(long, default_value_t = 24)]
    heads: usize,
    /// Also time our dense attention on the same inputs.
    #[arg(long)]
    dense: bool,
}

type B = Cuda<f32, i32>;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let device = CudaDevice::default();
    let dtype = match args.dtype.as_str() {
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        other => return Err(format!("--dtype must be bf16 or f16, got {other}").into()),
    };
    let canvas: Vec<usize> = args.canvas.split(',').map(|s| s.parse()).collect::<Result<_, _>>()?;
    let canvas: [usize; 3] = canvas.try_into().map_err(|c| format!("--canvas needs T,H,W, got {c:?}"))?;
    let (heads, d, text) = (args.heads, 128, 256);
    let config = SlidingTileAttentionConfig::new(canvas, [6, 8, 8], vec![[3, 3, 3]])
        .with_text(TextSpec::after(text))
        .with_order(TokenOrder::TileMajor);
    let module = config.init()?;
    let n = canvas.iter().product::<usize>() + text;
    let plan_pairs = {
        let map = module.block_map().ok_or("the window covers the canvas: no block map")?;
        dit_attention::KernelPlan::from_map(std::sync::Arc::new(map.clone()), 1.0).allowed_pairs(0)
    };
    let rand = || Tensor::<B, 4>::random([1, heads, n, d], Distribution::Normal(0.0, 1.0), &device).cast(dtype);
    let (q, k, v) = (rand(), rand(), rand());
    println!("path: {}", <B as SparseAttentionBackend>::sparse_attention_path(&device, dtype, d, d));

    // Median of `runs` device-synchronised calls after one warm-up (compiling) call.
    let time = |f: &dyn Fn() -> dit_attention::Result<Tensor<B, 4>>| -> Result<f64, Box<dyn std::error::Error>> {
        let warm = Instant::now();
        drop(f()?);
        B::sync(&device)?;
        println!("  first call (compiles the kernel): {:.1} ms", warm.elapsed().as_secs_f64() * 1e3);
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
    let tflops = |pairs: f64, ms: f64| 4.0 * pairs * d as f64 * heads as f64 / ms / 1e9;
    let out = module.forward(q.clone(), k.clone(), v.clone())?;
    let median = time(&|| module.forward(q.clone(), k.clone(), v.clone()))?;
    println!(
        "ours STA {canvas:?} +{text} text, H{heads} d{d} {:?}: median {median:.2} ms over {} runs, {:.1} TFLOP/s effective, density {:.4}",
        dtype,
        args.runs,
        tflops(plan_pairs as f64, median),
        plan_pairs as f64 / (n * n) as f64
    );
    // The same STA with natural-order input: the tile permutation fused into the kernel's loads.
    let natural = config.clone().with_order(TokenOrder::Natural).init()?;
    let natural_ms = time(&|| natural.forward(q.clone(), k.clone(), v.clone()))?;
    println!(
        "ours STA natural order (gathered loads): median {natural_ms:.2} ms, {:.1} TFLOP/s effective",
        tflops(plan_pairs as f64, natural_ms)
    );
    let dense_ms = if args.dense {
        let options = dit_attention::AttentionOptions::default();
        let ms =
            time(&|| dit_attention::dense_attention(q.clone(), k.clone(), v.clone(), None, options).map(|r| r.output))?;
        println!("ours dense: median {ms:.2} ms, {:.1} TFLOP/s", tflops((n * n) as f64, ms));
        Some(ms)
    } else {
        None
    };

    std::fs::create_dir_all(&args.out)?;
    for (name, t) in [("q", q), ("k", k), ("v", v), ("out", out)] {
        std::fs::write(args.out.join(format!("{name}.bin")), t.into_data().as_bytes())?;
    }
    let meta = serde_json::json!({
        "heads": heads, "n": n, "d": d, "canvas": canvas, "tile": [6, 8, 8], "window": [3, 3, 3], "text_after": text,
        "order": "tile-major", "dtype": args.dtype, "path": <B as SparseAttentionBackend>::sparse_attention_path(&device, dtype, d, d), "median_ms": median, "natural_median_ms": natural_ms, "dense_median_ms": dense_ms, "runs": args.runs, "allowed_pairs_per_head": plan_pairs,
    });
    std::fs::write(args.out.join("meta.json"), serde_json::to_string_pretty(&meta)?)?;
    Ok(())
}
