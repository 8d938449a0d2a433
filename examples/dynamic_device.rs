//! Dynamic block-sparse attention at the CogVideoX attention shapes on a GPU (bf16, d64, text
//! before) through the public API on `burn::backend::Cuda`:
//!
//! - our dense attention on the same inputs, the baseline;
//! - two kinds of inputs: `random` (Gaussian q, k: attention nearly uniform, so the selection
//!   keeps most blocks) and `local` (q and k carry smooth random Fourier features of the token's
//!   canvas coordinates plus noise: nearby tokens attend to each other, as in video DiTs);
//! - per input kind, the spec's thresholds at the first step (`tau` 0.98, ratios [0.12, 1.0]) and
//!   at the last (0.90, [0.10, 0.8]): the whole call, the estimate and selection alone, the
//!   attention over the kept blocks alone, and the achieved density; the selection's rows (kept
//!   blocks a row, the share adjacent query blocks have in common) and the attention over a band
//!   with every row keeping the mean count, and (first step) over every block listed: the
//!   list-driven kernel against dense on the same pairs. The attention on the selection is timed
//!   through `forward_selected` (with its check of a foreign selection: device work and one value
//!   read back) and `forward_selected_unchecked` (the band and every-block rows too); the kernels
//!   alone: run under `scripts/cupti` and `python3 scripts/cupti/kernels.py TRACE block_sparse --order`;
//! - the target of the issue: call <= 1.15 x (density x dense) + estimate, estimate <= 10%;
//! - Combined attention past its warm-up on the same inputs (pattern or dynamic per head), alone
//!   and with token merging of the dynamic heads' keys and values stacked on top (`--merge`, a
//!   share of the video tokens).
//!
//! Writes `dynamic.json` into `--out`; `scripts/bench_vs_torch.py` adds torch SDPA (cuDNN) on
//! the same shapes, timed in the same run.
//!
//! ```sh
//! CUDARC_CUDA_VERSION=13000 cargo build --release --features cuda --example dynamic_device
//! ./dynamic_device --out /tmp/bench   # on the GPU machine
//! ```

#[path = "common/timing.rs"]
mod timing;

use burn::backend::Cuda;
use burn::backend::cuda::CudaDevice;
use burn::tensor::{DType, Distribution, Tensor, TensorData};
use clap::Parser;
use dit_attention::combined::{CombinedAttentionConfig, HeadChoice, KvMergeConfig};
use dit_attention::dynamic::{DynamicSparseAttentionConfig, ThresholdSchedule, Thresholds};
use dit_attention::glue::BlockSelection;
use dit_attention::{AttentionOptions, CallPosition, Canvas, MergeAmount, TextSpec};
use timing::{Res, stream_ms, time_ms, time_ms_on};

#[derive(Parser)]
struct Args {
    /// Folder for dynamic.json.
    #[arg(long)]
    out: std::path::PathBuf,
    /// Timed runs after the warm-up.
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Comma-separated shapes: cogvideox-2b, cogvideox1.5-5b.
    #[arg(long, default_value = "cogvideox-2b,cogvideox1.5-5b")]
    shapes: String,
    /// Share of the video tokens merged in the "combined + KV merge" rows (0: no such rows).
    #[arg(long, default_value_t = 0.45)]
    merge: f64,
    /// Only the Combined rows (no dense baseline, no dynamic rows): for profiling one of them.
    #[arg(long)]
    combined_only: bool,
    /// Only the dynamic estimate and selection (local inputs, the last step): for profiling it.
    #[arg(long)]
    estimate_only: bool,
}

type B = Cuda<f32, i32>;

/// `[n, d]` features: per token, `sqrt(2) cos(w_j . (t, h, w) + phi_j)` with frequencies of about
/// one radian per three tokens (text tokens: random phases only), seeded.
fn local_features(canvas: Canvas, text: usize, d: usize) -> Vec<f32> {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut uniform = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut normal = || (-2.0 * uniform().max(1e-300).ln()).sqrt() * (std::f64::consts::TAU * uniform()).cos();
    let freqs: Vec<[f64; 3]> = (0..d).map(|_| [normal() / 3.0, normal() / 3.0, normal() / 3.0]).collect();
    let phases: Vec<f64> = (0..d).map(|_| std::f64::consts::TAU * uniform()).collect();
    let mut out = Vec::with_capacity((text + canvas.len()) * d);
    for _ in 0..text {
        let phase: Vec<f64> = (0..d).map(|_| std::f64::consts::TAU * uniform()).collect();
        out.extend(phase.iter().map(|p| (2f64.sqrt() * p.cos()) as f32));
    }
    for i in 0..canvas.len() {
        let c = canvas.coords(i).map(|x| x as f64);
        for j in 0..d {
            let arg = freqs[j][0] * c[0] + freqs[j][1] * c[1] + freqs[j][2] * c[2] + phases[j];
            out.push((2f64.sqrt() * arg.cos()) as f32);
        }
    }
    out
}

/// What every synchronised timing carries: a call with no work, and one with one tiny kernel.
fn sync_floor(device: &CudaDevice, runs: usize) -> Res<(f64, f64)> {
    let empty = time_ms(device, runs, &|| Ok(()))?;
    let tiny = Tensor::<B, 1>::ones([8], device);
    let add = time_ms(device, runs, &|| {
        let _ = tiny.clone() + 1.0;
        Ok(())
    })?;
    Ok((empty, add))
}

/// burn's CUDA backend without its fusion layer.
type Unfused = burn_cubecl::CubeBackend<dit_attention_kernels::cubecl::cuda::CudaRuntime, f32, i32, u8>;

/// `x` on [`Unfused`] (same device, same dtype).
fn unfused(x: &Tensor<B, 4>) -> Tensor<Unfused, 4> {
    Tensor::from_data(x.to_data(), &x.device())
}

/// A selection's rows (kept blocks per row: min, mean, max; the share of their kept blocks that
/// adjacent query blocks have in common) and a banded selection with every row keeping the mean
/// count (the blocks nearest its own; `count` instead where given, at most every block) with its
/// density: attention on it shows what the rows' uneven counts cost.
fn uniform_band(selection: &BlockSelection<B>, count: Option<usize>) -> Res<(String, BlockSelection<B>, f64)> {
    let counts: Vec<i64> = selection.counts.to_data().iter::<i64>().collect();
    let indices: Vec<i64> = selection.indices.to_data().iter::<i64>().collect();
    let rows = counts.len();
    let nkb = indices.len() / rows;
    let row = |r: usize| &indices[r * nkb..r * nkb + counts[r] as usize];
    let min = counts.iter().min().copied().unwrap_or(0);
    let max = counts.iter().max().copied().unwrap_or(0);
    let mean = counts.iter().sum::<i64>() as f64 / rows as f64;
    let (mut shared, mut listed) = (0usize, 0usize);
    for r in (0..rows).filter(|r| (r % nkb).is_multiple_of(2) && r % nkb + 1 < nkb) {
        let next: std::collections::HashSet<i64> = row(r + 1).iter().copied().collect();
        shared += row(r).iter().filter(|x| next.contains(x)).count();
        listed += row(r).len() + row(r + 1).len();
    }
    let k = count.unwrap_or(mean.round() as usize).clamp(1, nkb);
    let mut band = Vec::with_capacity(rows * nkb);
    for r in 0..rows {
        let lo = (r % nkb).saturating_sub(k / 2).min(nkb - k);
        band.extend((0..nkb).map(|i| if i < k { (lo + i) as i32 } else { nkb as i32 }));
    }
    let device = selection.counts.device();
    let uniform = BlockSelection {
        masses: selection.masses.clone(),
        counts: Tensor::from_data(TensorData::new(vec![k as i32; rows], [rows]), &device),
        indices: Tensor::from_data(TensorData::new(band, [rows, nkb]), &device),
    };
    let note = format!(
        "kept blocks a row min {min} mean {mean:.1} max {max}; adjacent query blocks share {:.2} of theirs",
        2.0 * shared as f64 / listed.max(1) as f64
    );
    Ok((note, uniform, k as f64 / nkb as f64))
}

fn main() -> Res<()> {
    let args = Args::parse();
    let device = CudaDevice::default();
    let time = |f: &dyn Fn() -> Res<()>| time_ms(&device, args.runs, f);
    let stream = |f: &dyn Fn() -> Res<()>| stream_ms(&device, args.runs, f);
    let mut shapes = vec![];
    for name in args.shapes.split(',') {
        let (batch, heads, canvas, text) = match name {
            "cogvideox-2b" => (2, 30, [13, 30, 45], TextSpec::before(226)),
            "cogvideox1.5-5b" => (2, 48, [11, 48, 85], TextSpec::before(224)),
            other => return Err(format!("unknown shape {other}").into()),
        };
        let d = 64;
        let n = canvas.iter().product::<usize>() + text.len;
        let noise = || Tensor::<B, 4>::random([batch, heads, n, d], Distribution::Normal(0.0, 1.0), &device);
        let base = local_features(Canvas::from_slice(&canvas)?, text.len, d);
        let base = Tensor::<B, 4>::from_data(TensorData::new(base, [1, 1, n, d]), &device).expand([batch, heads, n, d]);
        let mut entries = vec![];
        let mut dense_ms = f64::NAN;
        let mut dense_stream = f64::NAN;
        for inputs in ["random", "local"] {
            let make = || match inputs {
                "random" => noise().cast(DType::BF16),
                _ => (base.clone() + noise().mul_scalar(0.3)).cast(DType::BF16),
            };
            let (q, k, v) = (make(), make(), noise().cast(DType::BF16));
            if args.estimate_only {
                if inputs == "random" {
                    continue;
                }
                let module = DynamicSparseAttentionConfig::new(canvas)
                    .with_text(text)
                    .with_schedule(ThresholdSchedule::Constant(Thresholds { tau: 0.9, min_ratio: 0.1, max_ratio: 0.8 }))
                    .init()?;
                let estimate_ms = time(&|| {
                    module.select(&q, &k, &v, None, None)?;
                    Ok(())
                })?;
                let (empty_ms, tiny_ms) = sync_floor(&device, args.runs)?;
                println!("synchronised floor: no work {empty_ms:.3} ms, one 8-element add {tiny_ms:.3} ms");
                // Host time of a call alone: enqueued without a sync (the device catches up after).
                let sync = || <B as burn::tensor::backend::Backend>::sync(&device).map_err(|e| format!("{e:?}"));
                let mut host = vec![];
                for _ in 0..args.runs {
                    sync()?;
                    let t0 = std::time::Instant::now();
                    module.select(&q, &k, &v, None, None)?;
                    host.push(t0.elapsed().as_secs_f64() * 1e3);
                }
                sync()?;
                host.sort_by(f64::total_cmp);
                let estimate_stream = stream(&|| {
                    module.select(&q, &k, &v, None, None)?;
                    Ok(())
                })?;
                println!(
                    "{name} {inputs} last step: estimate {estimate_ms:.3} ms (host {:.3} ms), in a stream {estimate_stream:.3} ms",
                    host[host.len() / 2]
                );
                // The same estimate on the unfused backend (no fusion queue between the host and
                // the kernels): how much of a synchronised estimate is burn's fusion layer.
                let (qu, ku, vu) = (unfused(&q), unfused(&k), unfused(&v));
                let unfused_ms = time_ms_on::<Unfused>(&device, args.runs, &|| {
                    module.select(&qu, &ku, &vu, None, None)?;
                    Ok(())
                })?;
                println!("{name} {inputs} last step: estimate on the unfused backend {unfused_ms:.3} ms");
                // Its kernels one by one: run this mode under scripts/cupti (a GPU timeline).
                continue;
            }
            if inputs == "random" {
                let dense = || {
                    dit_attention::dense_attention(q.clone(), k.clone(), v.clone(), None, AttentionOptions::default())?;
                    Ok(())
                };
                dense_ms = time(&dense)?;
                dense_stream = stream(&dense)?;
                println!("{name} dense (ours): {dense_ms:.3} ms, in a stream {dense_stream:.3} ms");
                let (_, floor_ms) = sync_floor(&device, args.runs)?;
                println!("{name} synchronised floor (one 8-element add): {floor_ms:.3} ms");
            }
            let steps = [
                ("first step", Thresholds { tau: 0.98, min_ratio: 0.12, max_ratio: 1.0 }),
                ("last step", Thresholds { tau: 0.90, min_ratio: 0.10, max_ratio: 0.8 }),
            ];
            for (step, t) in steps.into_iter().filter(|_| !args.combined_only) {
                let module = DynamicSparseAttentionConfig::new(canvas)
                    .with_text(text)
                    .with_schedule(ThresholdSchedule::Constant(t))
                    .init()?;
                let call_ms = time(&|| {
                    module.forward_at(q.clone(), k.clone(), v.clone(), None, None)?;
                    Ok(())
                })?;
                let estimate_ms = time(&|| {
                    module.select(&q, &k, &v, None, None)?;
                    Ok(())
                })?;
                // The same two back to back, one sync per batch: the estimate's share of a call in
                // a model's forward pass, free of the per-call sync.
                let call_stream = stream(&|| {
                    module.forward_at(q.clone(), k.clone(), v.clone(), None, None)?;
                    Ok(())
                })?;
                let estimate_stream = stream(&|| {
                    module.select(&q, &k, &v, None, None)?;
                    Ok(())
                })?;
                let (_, selection) = module.select(&q, &k, &v, None, None)?;
                let selection = selection.ok_or("thresholds below 1 select")?;
                let attention_ms = time(&|| {
                    module.forward_selected(q.clone(), k.clone(), v.clone(), None, &selection)?;
                    Ok(())
                })?;
                // The same without the check of a foreign selection: the list-driven kernel's
                // own time per pair (synchronised). The lists below are valid by construction.
                let unchecked = |sel: &BlockSelection<B>| {
                    time(&|| {
                        // SAFETY: the module's own selection, or a band / every block built from it.
                        unsafe { module.forward_selected_unchecked(q.clone(), k.clone(), v.clone(), None, sel)? };
                        Ok(())
                    })
                };
                let attention_unchecked_ms = unchecked(&selection)?;
                if step == "first step" {
                    // Every block listed: the list-driven kernel against dense on the same pairs.
                    let all = uniform_band(&selection, Some(usize::MAX))?.1;
                    let all_ms = unchecked(&all)?;
                    println!("  every block listed: attention {all_ms:.3} ms ({:.2} of dense)", dense_ms / all_ms);
                }
                let (rows_note, band, band_density) = uniform_band(&selection, None)?;
                let band_ms = unchecked(&band)?;
                println!(
                    "  rows: {rows_note}; every row the mean count (a band, density {band_density:.3}): attention {band_ms:.3} ms ({:.2} of dense per pair)",
                    band_density * dense_ms / band_ms
                );
                let out = module.forward_at(q.clone(), k.clone(), v.clone(), None, None)?;
                let density = out.density();
                println!(
                    "  attention on the selection: {attention_ms:.3} ms checked, {attention_unchecked_ms:.3} ms unchecked ({:.2} of dense per pair)",
                    density * dense_ms / attention_unchecked_ms
                );
                let budget = 1.15 * density * dense_ms + estimate_ms;
                // What the estimate adds to a synchronised call: the call less its attention on a
                // given selection (each timing carries the sync's latency once).
                let estimate_in_call = call_ms - attention_ms;
                println!(
                    "{name} {inputs} {step}: density {density:.3}; call {call_ms:.3} ms ({:.2}x dense; target <= {budget:.3} ms: {}), estimate {estimate_ms:.3} ms ({:.1}% of the call; in the call {estimate_in_call:.3} ms, {:.1}%), attention {attention_ms:.3} ms ({:.2} of dense per pair)",
                    dense_ms / call_ms,
                    if call_ms <= budget { "met" } else { "NOT met" },
                    100.0 * estimate_ms / call_ms,
                    100.0 * estimate_in_call / call_ms,
                    density * dense_ms / attention_ms,
                );
                println!(
                    "  in a stream: call {call_stream:.3} ms ({:.2}x dense {dense_stream:.3}), estimate {estimate_stream:.3} ms ({:.1}% of the call)",
                    dense_stream / call_stream,
                    100.0 * estimate_stream / call_stream,
                );
                entries.push(serde_json::json!({
                    "inputs": inputs, "step": step, "tau": t.tau, "min_ratio": t.min_ratio, "max_ratio": t.max_ratio,
                    "density": density, "call_ms": call_ms, "estimate_ms": estimate_ms,
                    "attention_ms": attention_ms, "target_ms": budget, "estimate_in_call_ms": estimate_in_call,
                    "call_stream_ms": call_stream, "estimate_stream_ms": estimate_stream, "dense_stream_ms": dense_stream,
                }));
            }
            // Combined attention past its warm-up, the last step's thresholds for dynamic heads;
            // then with the dynamic heads' keys and values merged.
            let merges = if args.merge > 0.0 { vec![None, Some(args.merge)] } else { vec![None] };
            for merge in merges {
                let combined = CombinedAttentionConfig::new(canvas)
                    .with_text(text)
                    .with_schedule(ThresholdSchedule::Constant(steps[1].1))
                    .with_kv_merge(merge.map(|x| KvMergeConfig::new(MergeAmount::Ratio(x))))
                    .init()?;
                let at = Some(CallPosition::new(0, 10));
                let call_ms = time(&|| {
                    combined.forward_at(q.clone(), k.clone(), v.clone(), at)?;
                    Ok(())
                })?;
                let out = combined.forward_at(q.clone(), k.clone(), v.clone(), at)?;
                let pattern = out.heads.iter().filter(|&&c| c == HeadChoice::Pattern).count();
                let density = out.density.iter().sum::<f64>() / out.density.len() as f64;
                let (step, merged) = match (merge, &out.merge) {
                    (Some(x), Some(plan)) => {
                        (format!("combined + KV merge {x} (last step)"), plan.layout().r.to_string())
                    }
                    _ => ("combined (last step)".to_string(), "0".to_string()),
                };
                // What the call spends deciding: the head statistics (one read back), and the
                // dynamic heads' estimate (every head here: on these inputs none is pattern).
                let stats_ms = time(&|| {
                    combined.statistics_at(&q, &k, at)?;
                    Ok(())
                })?;
                let estimate_ms = time(&|| {
                    combined.dynamic().select(&q, &k, &v, None, at)?;
                    Ok(())
                })?;
                let deciding = stats_ms + if pattern < out.heads.len() { estimate_ms } else { 0.0 };
                println!(
                    "{name} {inputs} {step}: {pattern} of {} heads pattern, {merged} keys merged, density {density:.3}; call {call_ms:.3} ms ({:.2}x dense); statistics {stats_ms:.3} ms + estimate {estimate_ms:.3} ms = {:.1}% of the call",
                    out.heads.len(),
                    dense_ms / call_ms,
                    100.0 * deciding / call_ms,
                );
                entries.push(serde_json::json!({
                    "inputs": inputs, "step": step, "tau": steps[1].1.tau, "min_ratio": steps[1].1.min_ratio,
                    "max_ratio": steps[1].1.max_ratio, "density": density, "call_ms": call_ms, "estimate_ms": estimate_ms,
                    "statistics_ms": stats_ms,
                    "attention_ms": f64::NAN, "target_ms": 1.15 * density * dense_ms, "pattern_heads": pattern,
                }));
            }
        }
        shapes.push(serde_json::json!({
            "shape": name, "batch": batch, "heads": heads, "n": n, "d": d, "dense_ms": dense_ms, "entries": entries,
        }));
    }
    std::fs::create_dir_all(&args.out)?;
    let meta = serde_json::json!({ "runs": args.runs, "shapes": shapes });
    std::fs::write(args.out.join("dynamic.json"), serde_json::to_string_pretty(&meta)?)?;
    Ok(())
}
