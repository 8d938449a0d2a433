//! Token merging at the CogVideoX-2B attention shape on a GPU (B2, H30, 13x30x45 video + 226
//! text tokens before, d64, bf16) through the public API on `burn::backend::Cuda`:
//!
//! - our dense attention on the same inputs, the baseline;
//! - per `r` and mode (KV-only, full): the whole merged call with a fresh matching (matching +
//!   merge + attention + unmerge), the matching alone, the call reusing a matching, and the
//!   amortised call with the matching recomputed every `--gap` calls (measured: rounds of `gap`
//!   calls on one state);
//! - the matching's parts: the unit metric (plus one sum that forces it), the fused matching
//!   from it (best destinations and the plan), and the two-pass matching (bf16 score matrix,
//!   then row argmax) that the fused matching replaces;
//! - correctness at full size: the two-pass kernels' plan equals the burn-tensor reference's
//!   plan on the same scores; the fused plan's largest gap to each merged source's best score
//!   and its top-r violation on those scores; the merged call's output against dense attention
//!   (relative error, which merging is expected to raise: reported, not asserted).
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
use burn::tensor::{DType, Distribution, Int, Tensor, TensorData};
use clap::Parser;
use dit_attention::merge::reference::match_reference;
use dit_attention::merge::{
    MergeAmount, MergeLayout, MergeMode, MergeState, TokenMergeAttentionConfig, cosine_scores, unit_metric, unit_scores,
};
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
            // The matching's parts: the unit metric alone, and the two-pass matching (score
            // matrix, then row argmax) that the fused kernel replaces.
            let metric_ms = time(&|| {
                let unit = module.unit_similarity_metric(&k, &v, None)?;
                let _sum: f32 = unit.sum().into_scalar();
                Ok(())
            })?;
            let unit = module.unit_similarity_metric(&k, &v, None)?;
            let fused_ms = time(&|| {
                drop(<B as SparseAttentionBackend>::merge_match_metric(unit.clone(), module.layout()));
                Ok(())
            })?;
            let two_pass_ms = time(&|| {
                let scores = cosine_scores(module.similarity_metric(&k, &v, None)?, module.layout());
                drop(<B as SparseAttentionBackend>::merge_match(scores, module.layout()));
                Ok(())
            })?;
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
            // Correctness at full size, on the bf16 score matrix: the two-pass kernels' plan
            // equals the burn-tensor reference's on the same scores; the fused plan (f32 scores
            // from the same unit metric) is checked for optimality on them.
            let unit = unit_metric(module.similarity_metric(&k, &v, None)?);
            let scores = unit_scores(unit.clone(), module.layout());
            let kernel = <B as SparseAttentionBackend>::merge_match(scores.clone(), module.layout());
            let fused = <B as SparseAttentionBackend>::merge_match_metric(unit, module.layout());
            let reference = match_reference(scores.clone(), module.layout());
            let ints = |t: Tensor<B, 2, Int>| -> Vec<i64> { t.into_data().iter::<i64>().collect() };
            let (a, b) = (ints(kernel.slot_of_token), ints(reference.slot_of_token));
            let mismatched = a.iter().zip(&b).filter(|(x, y)| x != y).count();
            let fused_slots = fused.slot_of_token;
            let fused_vs_two_pass = ints(fused_slots.clone()).iter().zip(&a).filter(|(x, y)| x != y).count();
            let (gap, top_r_violation) = fused_optimality(scores, fused_slots, module.layout());
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
                "r={r:>5} {mode_name:>4}: call {call_ms:8.3} ms ({:.2}x dense), matching {match_ms:7.3} ms ({:.1}% of the call), reusing {reuse_ms:8.3} ms ({:.2}x), gap {} amortised {amortised_ms:8.3} ms ({:.2}x); compute {:.3} of dense; plan mismatches vs reference {mismatched}; rel. diff vs dense {rel_vs_dense:.4}; unit metric {metric_ms:.3} ms (plus one sum), fused matching from it {fused_ms:.3} ms, two-pass matching {two_pass_ms:.3} ms; fused plan: {fused_vs_two_pass} slots differ from the two-pass plan, largest score gap to the best destination {gap:.4}, top-r violation {top_r_violation:.4}",
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
                "unit_metric_ms": metric_ms, "fused_from_unit_ms": fused_ms, "two_pass_matching_ms": two_pass_ms,
                "fused_vs_two_pass_slots": fused_vs_two_pass, "fused_max_gap": gap,
                "fused_top_r_violation": top_r_violation,
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

/// On the score matrix `[b, m, sources, >= dsts]`, for a plan's slots `[groups, n]`: the largest
/// gap between a merged source's best score and the score of the destination it went to, and
/// by how much the best unmerged source beats the worst merged one (0 when the top `r` are
/// exactly the merged ones).
fn fused_optimality(scores: Tensor<B, 4>, slots: Tensor<B, 2, Int>, layout: &MergeLayout) -> (f32, f32) {
    let [b, m, s, _] = scores.dims();
    let dsts = layout.dst_token.len();
    let device = scores.device();
    let scores = scores.slice([0..b, 0..m, 0..s, 0..dsts]).cast(DType::F32);
    let src: Vec<i64> = layout.src_token.iter().map(|&t| t as i64).collect();
    let src = Tensor::<B, 1, Int>::from_data(TensorData::new(src, [s]), &device);
    // Slots of the sources; merged ones are destination slots.
    let slot = slots.select(1, src).reshape([b, m, s, 1]) - layout.dst_slot0() as i64;
    let merged = slot.clone().lower_elem(dsts as i64).float();
    let chosen = scores.clone().gather(3, slot.clamp(0, dsts as i64 - 1));
    let best = scores.max_dim(3);
    let gap = ((best.clone() - chosen) * merged.clone()).max().into_scalar();
    let merged_min = (best.clone() + (merged.clone().neg() + 1.0) * 1e9).min().into_scalar();
    let kept_max = (best - merged * 1e9).max().into_scalar();
    (gap, (kept_max - merged_min).max(0.0))
}
