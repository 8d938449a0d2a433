//! Token merging at the CogVideoX-2B attention shape on a GPU (B2, H30, 13x30x45 video + 226
//! text tokens before, d64, bf16) through the public API on `burn::backend::Cuda`:
//!
//! - our dense attention on the same inputs, the baseline;
//! - per `r` and mode (KV-only, full): the whole merged call with a fresh matching (matching +
//!   merge + attention + unmerge), the matching alone, the call reusing a matching, and the
//!   amortised call with the matching recomputed every `--gap` calls (measured: rounds of `gap`
//!   calls on one state);
//! - correctness at full size: the kernels' plan equals the burn-tensor reference's plan on the
//!   same scores, and the merged call's output is compared with dense attention (relative error,
//!   which merging is expected to raise: reported, not asserted).
//!
//! Writes `merge.json` into `--out`, which `scripts/bench_vs_torch.py` reads to add ratios
//! against torch SDPA (cuDNN) timed in the same run.
//!
//! ```sh
//! CUDARC_CUDA_VERSION=13000 cargo build --release --features cuda --example merge_device
//! ./merge_device --out /tmp/bench   # on the GPU machine
//! ```

use std::cell::RefCell;
#[path = "common/timing.rs"]
mod timing;

use burn::backend::Cuda;
use burn::backend::cuda::CudaDevice;
use burn::tensor::{DType, Distribution, Tensor};
use clap::Parser;
use dit_attention::merge::reference::match_reference;
use dit_attention::merge::{MergeAmount, MergeMode, MergeState, TokenMergeAttentionConfig, cosine_scores};
use dit_attention::{AttentionOptions, SparseAttentionBackend, TextSpec};
use timing::{Res, time_ms};

#[derive(Parser)]
struct Args {
    /// Folder for merge.json.
    #[arg(long)]
    out: std::path::PathBuf,
    /// Timed runs after the warm-up.
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Comma-separated merge counts.
    #[arg(long, default_value = "1000,4000,8000")]
    r: String,
    /// Matching reuse: recompute every `gap` calls.
    #[arg(long, default_value_t = 5)]
    gap: usize,
}

type B = Cuda<f32, i32>;

fn main() -> Res<()> {
    let args = Args::parse();
    let device = CudaDevice::default();
    let (batch, heads, canvas, text, d) = (2, 30, [13, 30, 45], TextSpec::before(226), 64);
    let n = canvas.iter().product::<usize>() + text.len;
    let dims = [batch, heads, n, d];
    let rand = || Tensor::<B, 4>::random(dims, Distribution::Normal(0.0, 1.0), &device).cast(DType::BF16);
    let (q, k, v) = (rand(), rand(), rand());
    let time = |f: &dyn Fn() -> Res<()>| time_ms(&device, args.runs, f);
    let values = |t: Tensor<B, 4>| -> Vec<f32> { t.cast(DType::F32).into_data().iter::<f32>().collect() };

    let dense = || dit_attention::dense_attention(q.clone(), k.clone(), v.clone(), None, AttentionOptions::default());
    let dense_ms = time(&|| dense().map(drop).map_err(Into::into))?;
    let dense_out = values(dense()?.output);
    println!("cogvideox-2b dense (ours): {dense_ms:.3} ms");
    let mut entries = vec![];
    for r in args.r.split(',').map(str::parse::<usize>) {
        let r = r?;
        for mode in [MergeMode::KeysValues, MergeMode::Full] {
            let config = TokenMergeAttentionConfig::new(canvas, MergeAmount::Count(r)).with_text(text).with_mode(mode);
            let module = config.init()?;
            let reuse = config.clone().with_gap(usize::MAX).init()?;
            let amortised = config.clone().with_gap(args.gap).init()?;
            let fresh_call =
                || module.forward_with_state(q.clone(), k.clone(), v.clone(), None, &mut MergeState::new());
            let call_ms = time(&|| fresh_call().map(drop).map_err(Into::into))?;
            let match_ms = time(&|| module.matching(&k, &v, None).map(drop).map_err(Into::into))?;
            let state = RefCell::new(MergeState::new());
            let reuse_ms = time(&|| {
                reuse.forward_with_state(q.clone(), k.clone(), v.clone(), None, &mut state.borrow_mut()).map(drop)?;
                Ok(())
            })?;
            // Rounds of `gap` calls on a fresh state: the first matches, the others reuse.
            let round_ms = time(&|| {
                let mut s = MergeState::new();
                for _ in 0..args.gap {
                    amortised.forward_with_state(q.clone(), k.clone(), v.clone(), None, &mut s).map(drop)?;
                }
                Ok(())
            })?;
            let amortised_ms = round_ms / args.gap as f64;
            // Correctness at full size: kernel plan = reference plan on the same scores.
            let metric = module.similarity_metric(&k, &v, None)?;
            let scores = cosine_scores(metric, module.layout());
            let kernel = <B as SparseAttentionBackend>::merge_match(scores.clone(), module.layout());
            let reference = match_reference(scores, module.layout());
            let a: Vec<i64> = kernel.slot_of_token.into_data().iter::<i64>().collect();
            let b: Vec<i64> = reference.slot_of_token.into_data().iter::<i64>().collect();
            let mismatched = a.iter().zip(&b).filter(|(x, y)| x != y).count();
            let out = values(fresh_call()?.output);
            let (mut num, mut den) = (0.0f64, 0.0f64);
            for (o, w) in out.iter().zip(&dense_out) {
                num += ((o - w) as f64).powi(2);
                den += (*w as f64).powi(2);
            }
            let rel_vs_dense = (num / den).sqrt();
            let mode_name = if mode == MergeMode::Full { "full" } else { "kv" };
            let n_kept = module.layout().n_kept();
            let pairs = if mode == MergeMode::Full { n_kept * n_kept } else { n * n_kept };
            println!(
                "r={r:>5} {mode_name:>4}: call {call_ms:8.3} ms ({:.2}x dense), matching {match_ms:7.3} ms ({:.1}% of the call), reusing {reuse_ms:8.3} ms ({:.2}x), gap {} amortised {amortised_ms:8.3} ms ({:.2}x); compute {:.3} of dense; plan mismatches vs reference {mismatched}; rel. diff vs dense {rel_vs_dense:.4}",
                dense_ms / call_ms,
                100.0 * match_ms / call_ms,
                dense_ms / reuse_ms,
                args.gap,
                dense_ms / amortised_ms,
                pairs as f64 / (n * n) as f64,
            );
            entries.push(serde_json::json!({
                "r": r, "mode": mode_name, "call_ms": call_ms, "matching_ms": match_ms, "reuse_ms": reuse_ms,
                "amortised_ms": amortised_ms, "gap": args.gap, "pairs_fraction": pairs as f64 / (n * n) as f64,
                "plan_mismatches": mismatched, "rel_diff_vs_dense": rel_vs_dense, "n_kept": n_kept,
            }));
        }
    }
    std::fs::create_dir_all(&args.out)?;
    let meta = serde_json::json!({
        "shape": "cogvideox-2b", "batch": batch, "heads": heads, "n": n, "d": d, "dense_ms": dense_ms,
        "runs": args.runs, "entries": entries,
    });
    std::fs::write(args.out.join("merge.json"), serde_json::to_string_pretty(&meta)?)?;
    Ok(())
}
