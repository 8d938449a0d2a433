//! Forward and forward+backward of STA and dense attention on `Autodiff<burn::backend::Cuda>`
//! in bf16 (the backward kernels of issue 8), at the Hunyuan shape (B1 H24, 30x48x80 video + 256
//! text tokens after, d128, tiles 6x8x8, tile-major) and with `--frames` fewer frames for the
//! dense comparison. Times are medians of `--runs` device-synchronised calls after one warm-up;
//! `scripts/bench_backward.py` times FlexAttention on the same shapes and block masks.
//!
//! ```sh
//! CUDARC_CUDA_VERSION=13000 cargo build --release --features cuda --example backward_device
//! ./backward_device --out /tmp/bw.json   # on the GPU machine
//! ```

#[path = "common/timing.rs"]
mod timing;

use std::sync::Arc;

use burn::backend::cuda::CudaDevice;
use burn::backend::{Autodiff, Cuda};
use burn::tensor::{DType, Distribution, Tensor};
use clap::Parser;
use dit_attention::{
    AttentionOptions, KernelPlan, SlidingTileAttentionConfig, SparseAttentionBackend, TextSpec, dense_attention,
};
use timing::{Res, time_ms};

#[derive(Parser)]
struct Args {
    /// Where the JSON rows go.
    #[arg(long)]
    out: std::path::PathBuf,
    /// Timed runs after the warm-up.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Frames of the smaller canvas the dense backward runs at (with STA at the same canvas).
    #[arg(long, default_value_t = 6)]
    frames: usize,
}

type B = Autodiff<Cuda<f32, i32>>;
const TILE: [usize; 3] = [6, 8, 8];
const HEADS: usize = 24;
const D: usize = 128;
const TEXT: usize = 256;

fn main() -> Res<()> {
    let args = Args::parse();
    let device = CudaDevice::default();
    let path = <B as SparseAttentionBackend>::sparse_attention_path(&device, DType::BF16, D, D);
    println!("forward path: {path}; backward: portable CubeCL kernels");
    let mut rows = Vec::new();
    for (canvas, variants) in
        [([30, 48, 80], vec![Some([3, 3, 3])]), ([args.frames, 48, 80], vec![Some([3, 3, 3]), Some([3, 5, 5]), None])]
    {
        let n = canvas.iter().product::<usize>() + TEXT;
        let dims = [1, HEADS, n, D];
        let rand = || Tensor::<B, 4>::random(dims, Distribution::Normal(0.0, 1.0), &device).cast(DType::BF16);
        let (q, k, v, g) = (rand().require_grad(), rand().require_grad(), rand().require_grad(), rand());
        for window in variants {
            let text = TextSpec::after(TEXT);
            let (name, pairs, attend): (String, u64, Box<dyn Fn() -> Res<Tensor<B, 4>>>) = match window {
                Some(w) => {
                    let module = SlidingTileAttentionConfig::new(canvas, TILE, vec![w]).with_text(text).init()?;
                    let pairs = match module.block_map() {
                        Some(map) => KernelPlan::from_map(Arc::new(map.clone()), 1.0).allowed_pairs(0),
                        None => (n * n) as u64,
                    };
                    let (q, k, v) = (q.clone(), k.clone(), v.clone());
                    let f = move || Ok(module.forward(q.clone(), k.clone(), v.clone())?);
                    (format!("sta{}x{}x{}", w[0], w[1], w[2]), pairs, Box::new(f))
                }
                None => {
                    let (q, k, v) = (q.clone(), k.clone(), v.clone());
                    let f = move || {
                        let r = dense_attention(q.clone(), k.clone(), v.clone(), None, AttentionOptions::default())?;
                        Ok(r.output)
                    };
                    ("dense".into(), (n * n) as u64, Box::new(f))
                }
            };
            let fwd = time_ms(&device, args.runs, &|| attend().map(drop))?;
            let both = time_ms(&device, args.runs, &|| {
                let loss = (attend()? * g.clone()).sum();
                drop(loss.backward());
                Ok(())
            })?;
            // FLOPs as FlashAttention counts them: 4 n^2 d forward, 2.5x that backward.
            let flop = 4.0 * pairs as f64 * D as f64 * HEADS as f64;
            let row = serde_json::json!({
                "canvas": canvas, "text": TEXT, "heads": HEADS, "d": D, "tile": TILE, "variant": name,
                "window": window, "density": pairs as f64 / (n * n) as f64,
                "fwd_ms": fwd, "fwd_bwd_ms": both, "bwd_ms": both - fwd,
                "fwd_tflops": flop / fwd / 1e9, "bwd_tflops": 2.5 * flop / (both - fwd) / 1e9,
            });
            println!("{row}");
            rows.push(row);
        }
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&rows)?)?;
    Ok(())
}
