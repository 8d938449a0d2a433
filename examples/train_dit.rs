//! Trains the small host DiT on synthetic clips (coloured shapes that slide or spin) with
//! rectified flow, on the CPU with burn's autodiff, and saves its weights and config.
//!
//! ```text
//! cargo run --release --example train_dit -- --steps 600 --out assets/tiny_dit
//! ```
//!
//! The clip is its own latent (RGB, no VAE): `3 x 8 x 16 x 16` pixels, patch `1 x 2 x 2`, so the
//! attention sees an `8 x 8 x 8` canvas plus 3 text tokens (one-hot words) after the video.

#[path = "common/flow.rs"]
mod flow;
#[path = "common/shapes.rs"]
mod shapes;

use std::path::PathBuf;
use std::time::Instant;

use burn::backend::{Autodiff, NdArray};
use burn::config::Config;
use burn::module::{AutodiffModule, Module};
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};
use clap::Parser;
use dit_attention::dit::{AttentionContext, AttentionScheduleConfig, VideoDit, VideoDitConfig};
use dit_attention::{DenseAttentionConfig, SparseAttentionBackend, VideoAttentionConfig};
use flow::batch;
use shapes::{CHANNELS, Prompt, Rng, VOCAB};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

#[derive(Parser)]
struct Args {
    /// Optimiser steps.
    #[arg(long, default_value_t = 600)]
    steps: usize,
    /// Clips per step.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Learning rate (Adam).
    #[arg(long, default_value_t = 2e-3)]
    lr: f64,
    /// Frames and frame size of the clips.
    #[arg(long, default_value_t = 8)]
    frames: usize,
    #[arg(long, default_value_t = 16)]
    size: usize,
    /// Seed of the data and the noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output path without extension: writes `<out>.mpk` (weights) and `<out>.json` (config).
    #[arg(long, default_value = "assets/tiny_dit")]
    out: PathBuf,
    /// Start from the weights and config at `<out>` (a fresh optimiser, warm-up again).
    #[arg(long)]
    resume: bool,
}

/// The host model's config for the synthetic clips.
fn model_config() -> VideoDitConfig {
    VideoDitConfig::new(CHANNELS, 48, 4, 4, VOCAB).with_time_freq_dim(64)
}

/// Mean squared velocity error of `model` on a fixed held-out batch (and of predicting zero).
fn held_out<B: SparseAttentionBackend>(
    model: &VideoDit<B>,
    frames: usize,
    size: usize,
    device: &B::Device,
) -> Res<(f64, f64)> {
    let schedule = AttentionScheduleConfig::new(VideoAttentionConfig::Dense(DenseAttentionConfig::new())).init()?;
    let (xt, t, text, v) = batch::<B>(&mut Rng::new(u64::MAX), 16, frames, size, device);
    let pred = model.forward(xt, t, text, &mut AttentionContext::new(&schedule))?;
    let loss = (pred - v.clone()).square().mean().into_scalar();
    let zero = v.square().mean().into_scalar();
    Ok((num(loss), num(zero)))
}

fn num<E: burn::tensor::Element>(e: E) -> f64 {
    e.to_f64()
}

fn main() -> Res<()> {
    type B = Autodiff<NdArray<f32>>;
    let args = Args::parse();
    let device = Default::default();
    let recorder = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
    let (config, mut model): (VideoDitConfig, VideoDit<B>) = if args.resume {
        let config = VideoDitConfig::load(args.out.with_extension("json"))?;
        let model = config.init(&device)?.load_file(args.out.clone(), &recorder, &device)?;
        (config, model)
    } else {
        let config = model_config();
        let model = config.init(&device)?;
        (config, model)
    };
    let mut optim = AdamConfig::new().init();
    let schedule = AttentionScheduleConfig::new(VideoAttentionConfig::Dense(DenseAttentionConfig::new())).init()?;
    let mut rng = Rng::new(args.seed);
    println!(
        "96 prompts such as \"{}\"; clips {CHANNELS} x {} x {size} x {size}; {} steps of {} clips",
        Prompt::nth(13).text(),
        args.frames,
        args.steps,
        args.batch,
        size = args.size
    );
    let start = Instant::now();
    let mut ema = None;
    for step in 0..args.steps {
        let (xt, t, text, v) = batch::<B>(&mut rng, args.batch, args.frames, args.size, &device);
        let pred = model.forward(xt, t, text, &mut AttentionContext::new(&schedule))?;
        let loss = (pred - v).square().mean();
        let value = num(loss.clone().into_scalar());
        ema = Some(ema.map_or(value, |e: f64| 0.95 * e + 0.05 * value));
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        // Linear warm-up over the first 50 steps, cosine decay to a tenth after.
        let warm = ((step + 1) as f64 / 50.0).min(1.0);
        let progress = step as f64 / args.steps.max(1) as f64;
        let lr = args.lr * warm * (0.1 + 0.45 * (1.0 + (std::f64::consts::PI * progress).cos()));
        model = optim.step(lr, model, grads);
        if step % 25 == 0 || step + 1 == args.steps {
            println!(
                "step {step:>5}  loss {value:.4}  ema {:.4}  lr {lr:.2e}  {:.0} s",
                ema.unwrap(),
                start.elapsed().as_secs_f64()
            );
        }
    }
    let trained = model.valid();
    let (loss, zero) = held_out(&trained, args.frames, args.size, &device)?;
    println!(
        "held-out velocity MSE {loss:.4} (predicting zero: {zero:.4}) after {:.0} s",
        start.elapsed().as_secs_f64()
    );
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    trained.save_file(args.out.clone(), &recorder)?;
    config.save(args.out.with_extension("json"))?;
    println!("wrote {}.mpk and {}.json", args.out.display(), args.out.display());
    Ok(())
}
