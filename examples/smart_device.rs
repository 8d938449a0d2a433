//! Smart attention at the CogVideoX attention shapes on a GPU (bf16, d64, text before) through
//! the public API on `burn::backend::Cuda`:
//!
//! - our dense attention on the same inputs, the baseline;
//! - per band (width 1 with the frame-0 sink, the spec's default; width 0 with the sink): the
//!   whole call (profiling on 64 sampled rows + attention), the profiling alone, and the
//!   attention with every head spatial and with every head temporal (the token-major gather in
//!   the kernel's loads), with the density and the decisions of the call;
//! - the target of the issue: call <= 1.15 x (density x dense) + profiling, profiling <= 10%.
//!
//! Writes `smart.json` into `--out`; `scripts/bench_vs_torch.py` adds torch SDPA (cuDNN) on the
//! same shapes, timed in the same run.
//!
//! ```sh
//! CUDARC_CUDA_VERSION=13000 cargo build --release --features cuda --example smart_device
//! ./smart_device --out /tmp/bench   # on the GPU machine
//! ```

#[path = "common/timing.rs"]
mod timing;

use burn::backend::Cuda;
use burn::backend::cuda::CudaDevice;
use burn::tensor::{DType, Distribution, Tensor};
use clap::Parser;
use dit_attention::smart::{BandSpec, HeadClass, SmartAttentionConfig};
use dit_attention::{AttentionOptions, TextSpec, attention_with_plan};
use timing::{Res, time_ms};

#[derive(Parser)]
struct Args {
    /// Folder for smart.json.
    #[arg(long)]
    out: std::path::PathBuf,
    /// Timed runs after the warm-up.
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Comma-separated shapes: cogvideox-2b, cogvideox1.5-5b.
    #[arg(long, default_value = "cogvideox-2b,cogvideox1.5-5b")]
    shapes: String,
}

type B = Cuda<f32, i32>;

fn main() -> Res<()> {
    let args = Args::parse();
    let device = CudaDevice::default();
    let time = |f: &dyn Fn() -> Res<()>| time_ms(&device, args.runs, f);
    let mut shapes = vec![];
    for name in args.shapes.split(',') {
        let (batch, heads, canvas, text) = match name {
            "cogvideox-2b" => (2, 30, [13, 30, 45], TextSpec::before(226)),
            "cogvideox1.5-5b" => (2, 48, [11, 48, 85], TextSpec::before(224)),
            other => return Err(format!("unknown shape {other}").into()),
        };
        let d = 64;
        let n = canvas.iter().product::<usize>() + text.len;
        let rand =
            || Tensor::<B, 4>::random([batch, heads, n, d], Distribution::Normal(0.0, 1.0), &device).cast(DType::BF16);
        let (q, k, v) = (rand(), rand(), rand());
        let dense_ms = time(&|| {
            dit_attention::dense_attention(q.clone(), k.clone(), v.clone(), None, AttentionOptions::default())?;
            Ok(())
        })?;
        println!("{name} dense (ours): {dense_ms:.3} ms");
        let mut entries = vec![];
        for (band_name, width, sink) in [("width 1 + sink", 1, true), ("width 0 + sink", 0, true)] {
            let band = BandSpec::Width(width);
            let module = SmartAttentionConfig::new(canvas).with_text(text).with_band(band).with_sink(sink).init()?;
            let call_ms = time(&|| {
                module.forward_at(q.clone(), k.clone(), v.clone(), None, None)?;
                Ok(())
            })?;
            let profile_ms = time(&|| {
                module.classify(&q, &k, &v, None, None)?;
                Ok(())
            })?;
            let scale = 1.0 / (d as f64).sqrt();
            let mut class_ms = [0.0; 2];
            for (i, class) in [HeadClass::Spatial, HeadClass::Temporal].into_iter().enumerate() {
                let plan = module.plan(class).expect("a band narrower than the canvas").with_scale(scale);
                class_ms[i] = time(&|| {
                    attention_with_plan(q.clone(), k.clone(), v.clone(), None, &plan)?;
                    Ok(())
                })?;
            }
            let out = module.forward_at(q.clone(), k.clone(), v.clone(), None, None)?;
            let spatial = out.heads.iter().filter(|&&c| c == HeadClass::Spatial).count();
            let density = out.density;
            let budget = 1.15 * density * dense_ms + profile_ms;
            println!(
                "{name} {band_name}: density {density:.3}; call {call_ms:.3} ms ({:.2}x dense; target <= {budget:.3} ms: {}), profiling {profile_ms:.3} ms ({:.1}% of the call), all spatial {:.3} ms, all temporal {:.3} ms; {spatial} of {} heads spatial",
                dense_ms / call_ms,
                if call_ms <= budget { "met" } else { "NOT met" },
                100.0 * profile_ms / call_ms,
                class_ms[0],
                class_ms[1],
                out.heads.len(),
            );
            entries.push(serde_json::json!({
                "band": band_name, "density": density, "call_ms": call_ms, "profile_ms": profile_ms,
                "spatial_ms": class_ms[0], "temporal_ms": class_ms[1], "spatial_heads": spatial,
                "heads": out.heads.len(), "target_ms": budget, "width": width, "sink": sink,
            }));
        }
        shapes.push(serde_json::json!({
            "shape": name, "batch": batch, "heads": heads, "n": n, "d": d, "dense_ms": dense_ms, "entries": entries,
            "text": text.len, "group": canvas[1] * canvas[2],
        }));
    }
    std::fs::create_dir_all(&args.out)?;
    let meta = serde_json::json!({ "runs": args.runs, "shapes": shapes });
    std::fs::write(args.out.join("smart.json"), serde_json::to_string_pretty(&meta)?)?;
    Ok(())
}
