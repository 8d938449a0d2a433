//! Fine-tunes the dense-trained tiny DiT (`train_dit`'s weights) with Sliding Tile Attention in
//! every layer, through the engine's backward (the block-sparse backward kernels on `--device
//! wgpu` / `cuda`, the reference composite on `ndarray`): rectified-flow loss plus distillation
//! towards the frozen dense model, as STA's "w. training" recipe. It prints the loss as it goes,
//! and before and after: the STA model's held-out velocity error, and its distance to the dense
//! model's predictions (the fidelity the sparse model loses and fine-tuning wins back).
//!
//! ```text
//! cargo run --release --example finetune_sta -- --steps 60
//! cargo run --release --features wgpu --example finetune_sta -- --device wgpu --steps 60
//! ```

#[path = "common/device.rs"]
mod device;
#[path = "common/flow.rs"]
mod flow;
#[path = "common/shapes.rs"]
mod shapes;

use std::path::PathBuf;
use std::time::Instant;

use burn::backend::{Autodiff, NdArray};
use burn::config::Config;
use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor};
use clap::Parser;
use device::{DeviceKind, not_built};
use dit_attention::dit::{AttentionContext, AttentionSchedule, AttentionScheduleConfig, VideoDit, VideoDitConfig};
use dit_attention::{DenseAttentionConfig, SlidingTileAttentionConfig, SparseAttentionBackend, VideoAttentionConfig};
use flow::batch;
use shapes::{Rng, WORDS};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

#[derive(Parser)]
struct Args {
    /// Backend.
    #[arg(long, value_enum, default_value = "ndarray")]
    device: DeviceKind,
    /// Optimiser steps.
    #[arg(long, default_value_t = 60)]
    steps: usize,
    /// Clips per step.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Learning rate (Adam).
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// STA window in tiles of 2x2x2 (odd per dimension).
    #[arg(long, value_delimiter = ',', default_value = "1,1,1")]
    window: Vec<usize>,
    /// Frames and frame size of the clips (as trained).
    #[arg(long, default_value_t = 8)]
    frames: usize,
    #[arg(long, default_value_t = 16)]
    size: usize,
    /// Trained dense weights, without extension (from `train_dit`).
    #[arg(long, default_value = "assets/tiny_dit")]
    weights: PathBuf,
    /// Where to write the fine-tuned weights (optional), without extension.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> Res<()> {
    let args = Args::parse();
    match args.device {
        DeviceKind::Ndarray => run::<Autodiff<NdArray<f32>>>(&args, Default::default()),
        #[cfg(feature = "wgpu")]
        DeviceKind::Wgpu => run::<Autodiff<burn::backend::Wgpu>>(&args, Default::default()),
        #[cfg(feature = "cuda")]
        DeviceKind::Cuda => run::<Autodiff<burn::backend::Cuda>>(&args, Default::default()),
        #[allow(unreachable_patterns)]
        other => Err(not_built(other)),
    }
}

/// Held-out numbers on one fixed batch: the STA model's velocity MSE, and the mean squared
/// distance of its predictions to the dense teacher's, relative to the teacher's mean square.
fn held_out<B: AutodiffBackend + SparseAttentionBackend>(
    student: &VideoDit<B>,
    teacher_pred: &Tensor<B, 5>,
    sta: &AttentionSchedule,
    data: &(Tensor<B, 5>, Tensor<B, 1>, Tensor<B, 3>, Tensor<B, 5>),
) -> Res<(f64, f64)> {
    let (xt, t, text, v) = data.clone();
    let pred = student.forward(xt, t, text, &mut AttentionContext::new(sta))?.detach();
    let mse = (pred.clone() - v).square().mean().into_scalar().elem::<f64>();
    let gap = (pred - teacher_pred.clone()).square().mean().into_scalar().elem::<f64>();
    let norm = teacher_pred.clone().square().mean().into_scalar().elem::<f64>();
    Ok((mse, gap / norm))
}

fn run<B: AutodiffBackend + SparseAttentionBackend>(args: &Args, device: B::Device) -> Res<()> {
    let window: [usize; 3] = args
        .window
        .clone()
        .try_into()
        .map_err(|w: Vec<usize>| format!("--window needs 3 values (t,h,w), got {}", w.len()))?;
    let config = VideoDitConfig::load(args.weights.with_extension("json")).map_err(|e| {
        format!(
            "{e}: no trained weights at {} (run `cargo run --release --example train_dit` first)",
            args.weights.display()
        )
    })?;
    let recorder = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
    let load =
        || -> Res<VideoDit<B>> { Ok(config.init(&device)?.load_file(args.weights.clone(), &recorder, &device)?) };
    let teacher = load()?.no_grad();
    let mut student = load()?;
    let canvas = student.canvas([args.frames, args.size, args.size])?;
    let text = student.text_spec(WORDS);
    let dense = AttentionScheduleConfig::new(VideoAttentionConfig::Dense(DenseAttentionConfig::new())).init()?;
    let sta_config = SlidingTileAttentionConfig::new(canvas, [2, 2, 2], vec![window]).with_text(text);
    let sta = AttentionScheduleConfig::new(VideoAttentionConfig::SlidingTile(sta_config)).init()?;
    println!(
        "canvas {canvas:?} + {WORDS} text tokens; STA window {window:?} tiles of 2x2x2; {} steps of {} clips on {:?} ({})",
        args.steps,
        args.batch,
        args.device,
        B::sparse_attention_path(&device, burn::tensor::DType::F32, 12, 12)
    );

    let held = batch::<B>(&mut Rng::new(u64::MAX), 16, args.frames, args.size, &device);
    let teacher_held = {
        let (xt, t, text, _) = held.clone();
        teacher.forward(xt, t, text, &mut AttentionContext::new(&dense))?.detach()
    };
    let dense_mse = (teacher_held.clone() - held.3.clone()).square().mean().into_scalar().elem::<f64>();
    let (mse0, gap0) = held_out(&student, &teacher_held, &sta, &held)?;
    println!(
        "held-out velocity MSE: dense {dense_mse:.4}; STA before fine-tuning {mse0:.4}, distance to dense {gap0:.4}"
    );

    let mut optim = AdamConfig::new().init();
    let mut rng = Rng::new(7);
    let start = Instant::now();
    let mut ema: Option<f64> = None;
    for step in 0..args.steps {
        let (xt, t, text_feats, v) = batch::<B>(&mut rng, args.batch, args.frames, args.size, &device);
        let target =
            teacher.forward(xt.clone(), t.clone(), text_feats.clone(), &mut AttentionContext::new(&dense))?.detach();
        let pred = student.forward(xt, t, text_feats, &mut AttentionContext::new(&sta))?;
        // Flow matching on the data plus distillation towards the dense model.
        let (flow, distill) = ((pred.clone() - v).square().mean(), (pred - target).square().mean());
        let parts = [flow.clone(), distill.clone()].map(|t| t.into_scalar().elem::<f64>());
        let loss = flow + distill;
        let value = parts[0] + parts[1];
        ema = Some(ema.map_or(value, |e| 0.9 * e + 0.1 * value));
        let grads = GradientsParams::from_grads(loss.backward(), &student);
        student = optim.step(args.lr, student, grads);
        if step % 10 == 0 || step + 1 == args.steps {
            println!(
                "step {step:>4}  loss {value:.4} (flow {:.4}, distillation {:.4})  ema {:.4}  {:.0} s",
                parts[0],
                parts[1],
                ema.unwrap_or(value),
                start.elapsed().as_secs_f64()
            );
        }
    }
    let (mse1, gap1) = held_out(&student, &teacher_held, &sta, &held)?;
    println!(
        "held-out velocity MSE: dense {dense_mse:.4}; STA after fine-tuning {mse1:.4}, distance to dense {gap1:.4}"
    );
    println!(
        "fine-tuning with STA: velocity MSE {mse0:.4} -> {mse1:.4}, distance to dense {gap0:.4} -> {gap1:.4} ({:.0} s)",
        start.elapsed().as_secs_f64()
    );
    if let Some(out) = &args.out {
        student.save_file(out.clone(), &recorder)?;
        println!("wrote {}.mpk", out.display());
    }
    Ok(())
}
