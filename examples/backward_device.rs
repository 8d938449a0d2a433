//! Forward and forward+backward of STA and dense attention on `Autodiff<burn::backend::Cuda>`
//! in bf16 (the backward kernels of issue 8), at the Hunyuan shape (B1 H24, 30x48x80 video + 256
//! text tokens after, d128, tiles 6x8x8, tile-major) and with `--frames` fewer frames for the
//! dense comparison. Times are medians of `--runs` device-synchronised calls after one warm-up;
//! `scripts/bench_backward.py` times FlexAttention on the same shapes and block masks. First, a
//! gradient check: the bf16 kernels against the f32 portable kernels on a smaller canvas.
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
/// A variant's forward, as the timing loop calls it.
type Attend<'a> = Box<dyn Fn() -> Res<Tensor<B, 4>> + 'a>;
const TILE: [usize; 3] = [6, 8, 8];
const HEADS: usize = 24;
const D: usize = 128;
const TEXT: usize = 256;

fn main() -> Res<()> {
    let args = Args::parse();
    let device = CudaDevice::default();
    let mut rows = Vec::new();
    let path = <B as SparseAttentionBackend>::sparse_attention_path(&device, DType::BF16, D, D);
    println!("path (forward and backward): {path}");
    rows.extend(check_gradients(&device)?);
    for (canvas, variants) in
        [([30, 48, 80], vec![Some([3, 3, 3])]), ([args.frames, 48, 80], vec![Some([3, 3, 3]), Some([3, 5, 5]), None])]
    {
        let n = canvas.iter().product::<usize>() + TEXT;
        let dims = [1, HEADS, n, D];
        let rand = || Tensor::<B, 4>::random(dims, Distribution::Normal(0.0, 1.0), &device).cast(DType::BF16);
        let (q, k, v, g) = (rand().require_grad(), rand().require_grad(), rand().require_grad(), rand());
        for window in variants {
            let text = TextSpec::after(TEXT);
            let (name, pairs, attend): (String, u64, Attend) = match window {
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

/// Gradients of the bf16 kernels (the path above) against the f32 portable kernels (themselves
/// tested against an f64 brute force) on the same bf16-rounded inputs, STA 3x3x3 and dense at a
/// 12x24x32 canvas with text: the largest error relative to the largest f32 gradient, per input.
fn check_gradients(device: &CudaDevice) -> Res<Vec<serde_json::Value>> {
    let canvas = [12, 24, 32];
    let n = canvas.iter().product::<usize>() + TEXT;
    let dims = [1, 2, n, D];
    let rand = || Tensor::<B, 4>::random(dims, Distribution::Normal(0.0, 1.0), device).cast(DType::BF16);
    let (q, k, v, g) = (rand(), rand(), rand(), rand());
    let mut rows = Vec::new();
    for window in [Some([3, 3, 3]), None] {
        let grads = |dtype: DType| -> Res<Vec<Vec<f32>>> {
            let [q, k, v] = [&q, &k, &v].map(|t| t.clone().cast(dtype).require_grad());
            let out = match window {
                Some(w) => SlidingTileAttentionConfig::new(canvas, TILE, vec![w])
                    .with_text(TextSpec::after(TEXT))
                    .init()?
                    .forward(q.clone(), k.clone(), v.clone())?,
                None => dense_attention(q.clone(), k.clone(), v.clone(), None, AttentionOptions::default())?.output,
            };
            let grads = (out.cast(DType::F32) * g.clone().cast(DType::F32)).sum().backward();
            let read = |t: &Tensor<B, 4>| -> Res<Vec<f32>> {
                let grad = t.grad(&grads).ok_or("missing gradient")?;
                Ok(grad.cast(DType::F32).into_data().convert::<f32>().to_vec::<f32>().map_err(|e| format!("{e:?}"))?)
            };
            Ok(vec![read(&q)?, read(&k)?, read(&v)?])
        };
        let (half, exact) = (grads(DType::BF16)?, grads(DType::F32)?);
        let err: Vec<f64> = half
            .iter()
            .zip(&exact)
            .map(|(a, b)| {
                let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-30) as f64;
                a.iter().zip(b).map(|(x, y)| (x - y).abs() as f64).fold(0.0, f64::max) / scale
            })
            .collect();
        let name = window.map_or("dense".to_string(), |w| format!("sta{}x{}x{}", w[0], w[1], w[2]));
        let row = serde_json::json!({
            "check": name, "canvas": canvas, "heads": 2, "d": D,
            "rel_err_dq": err[0], "rel_err_dk": err[1], "rel_err_dv": err[2],
        });
        println!("{row}");
        rows.push(row);
    }
    Ok(rows)
}
