//! Denoises synthetic-clip prompts with the trained host DiT under dense attention and every
//! sparse variant, and reports per variant: wall time, attention share, speedup over dense, and
//! fidelity against the dense result (PSNR and cosine of the final latent and of the decoded
//! frames); writes a PNG with one row of frames per variant.
//!
//! ```text
//! cargo run --release --example train_dit          # once: writes assets/tiny_dit.{mpk,json}
//! cargo run --release --example generate -- --steps 20 --out generate.png
//! ```
//!
//! The STA row uses windows found by the STA mask search (spec section 6) on calibration prompts
//! that are not the ones generated.
//!
//! `--device ndarray|wgpu|cuda` picks the backend (wgpu and cuda need the example built with that
//! feature). `--hunyuan-blocks N` times a stack of N HunyuanVideo-width blocks (random weights, the
//! real sequence length) with dense attention against STA, for the GPU:
//!
//! ```text
//! cargo run --release --features cuda --example generate -- --device cuda --hunyuan-blocks 2
//! ```

#[path = "common/device.rs"]
mod device;
#[path = "common/shapes.rs"]
mod shapes;

use std::path::PathBuf;
use std::time::Instant;

use burn::backend::NdArray;
use burn::config::Config;
use burn::module::Module;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};
use burn::tensor::{Tensor, TensorData};
use clap::Parser;
use device::{DeviceKind, not_built};
use dit_attention::dit::{
    AttentionContext, AttentionProbe, AttentionScheduleConfig, StaSearchConfig, StaWindowSchedule, VideoDit,
    VideoDitConfig, euler_sample,
};
use dit_attention::{
    BlockSparseAttentionConfig, CombinedAttentionConfig, DenseAttentionConfig, DynamicSparseAttentionConfig,
    KernelPlan, MergeAmount, PatternSpec, SlidingTileAttentionConfig, SmartAttentionConfig, SparseAttentionBackend,
    TokenMergeAttentionConfig, VideoAttentionConfig,
};
use shapes::{CHANNELS, Prompt, Rng, VOCAB, WORDS};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

#[derive(Parser)]
struct Args {
    /// Backend.
    #[arg(long, value_enum, default_value_t = DeviceKind::Ndarray)]
    device: DeviceKind,
    /// Instead of the trained model: time this many HunyuanVideo-width blocks (hidden 3072, 24 heads
    /// of 128, random weights; bf16 on cuda) at `--hunyuan-tokens`, dense against STA, over
    /// `--steps` timed evaluations per variant (at least 3) after one warm-up.
    #[arg(long)]
    hunyuan_blocks: Option<usize>,
    /// Latent token grid (frames, height, width after the 1x2x2 patch) of `--hunyuan-blocks`.
    #[arg(long, value_delimiter = ',', default_value = "30,48,80")]
    hunyuan_tokens: Vec<usize>,
    /// Text tokens of `--hunyuan-blocks` (after the video, as in HunyuanVideo).
    #[arg(long, default_value_t = 256)]
    hunyuan_text: usize,
    /// Trained weights and config, without extension (`<weights>.mpk`, `<weights>.json`).
    #[arg(long, default_value = "assets/tiny_dit")]
    weights: PathBuf,
    /// Denoising steps (Euler, rectified flow).
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Clips generated per variant (one batch).
    #[arg(long, default_value_t = 4)]
    clips: usize,
    /// Frames and frame size (as trained).
    #[arg(long, default_value_t = 8)]
    frames: usize,
    #[arg(long, default_value_t = 16)]
    size: usize,
    /// Seed of the prompts and the noise.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The PNG of frames, one row per variant.
    #[arg(long, default_value = "generate.png")]
    out: PathBuf,
    /// Where the STA search writes its schedule (JSON), which the "STA searched" row then loads.
    #[arg(long, default_value = "sta_schedule.json")]
    sta_schedule: PathBuf,
    /// STA search tolerance (relative to the output's mean square).
    #[arg(long, default_value_t = 0.02)]
    tolerance: f64,
}

/// One row of the report.
struct Row {
    name: String,
    wall: f64,
    attention: f64,
    latent: Vec<f32>,
}

fn sample<B: SparseAttentionBackend>(
    model: &VideoDit<B>,
    schedule: &AttentionScheduleConfig,
    noise: &Tensor<B, 5>,
    text: &Tensor<B, 3>,
    steps: usize,
    probe: Option<&mut dyn AttentionProbe<B>>,
    label: &str,
) -> Res<(Tensor<B, 5>, f64, f64)> {
    let schedule = schedule.init()?;
    let mut ctx = AttentionContext::new(&schedule).with_timing();
    if let Some(p) = probe {
        ctx = ctx.with_probe(p);
    }
    let device = noise.device();
    let n = noise.dims()[0];
    let start = Instant::now();
    let x = euler_sample(noise.clone(), steps, |x, t, step| {
        eprint!("\r{label:<22} step {:>3}/{steps}", step + 1);
        ctx.set_step(step);
        let tt = Tensor::<B, 1>::from_data(TensorData::new(vec![t as f32; n], [n]), &device);
        model.forward(x, tt, text.clone(), &mut ctx)
    })?;
    B::sync(&device).map_err(|e| format!("{e:?}"))?;
    eprintln!();
    let wall = start.elapsed().as_secs_f64();
    let attention = ctx.timing().map_or(0.0, |t| t.elapsed.as_secs_f64());
    Ok((x, wall, attention))
}

/// PSNR (peak-to-peak `peak`) and cosine of `a` against `b`.
fn fidelity(a: &[f32], b: &[f32], peak: f64) -> (f64, f64) {
    let (mut se, mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64, y as f64);
        se += (x - y) * (x - y);
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    let mse = se / a.len() as f64;
    let psnr = if mse == 0.0 { f64::INFINITY } else { 10.0 * (peak * peak / mse).log10() };
    (psnr, ab / (aa.sqrt() * bb.sqrt()).max(f64::MIN_POSITIVE))
}

/// Pixels of the decoded clip in `0..=255` (the latent is the RGB clip itself).
fn decode(latent: &[f32]) -> Vec<u8> {
    latent.iter().map(|v| (((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round()) as u8).collect()
}

/// One row per variant: the first clip's frames side by side, scaled up, a gap between frames.
fn write_png(path: &PathBuf, rows: &[Row], frames: usize, size: usize) -> Res<()> {
    let (scale, gap) = (4, 2);
    let cell = size * scale + gap;
    let (w, h) = (frames * cell, rows.len() * cell);
    let mut img = vec![255u8; w * h * 3];
    for (r, row) in rows.iter().enumerate() {
        let px = decode(&row.latent[..CHANNELS * frames * size * size]);
        for f in 0..frames {
            for y in 0..size * scale {
                for x in 0..size * scale {
                    let o = ((r * cell + y) * w + f * cell + x) * 3;
                    for c in 0..CHANNELS {
                        img[o + c] = px[((c * frames + f) * size + y / scale) * size + x / scale];
                    }
                }
            }
        }
    }
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(std::fs::File::create(path)?), w as u32, h as u32);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.write_header()?.write_image_data(&img)?;
    Ok(())
}

fn main() -> Res<()> {
    let args = Args::parse();
    if args.clips == 0 || args.steps == 0 {
        return Err(format!("--clips and --steps must be at least 1 (got {} and {})", args.clips, args.steps).into());
    }
    match (args.device, args.hunyuan_blocks) {
        (DeviceKind::Ndarray, None) => run::<NdArray<f32>>(&args, Default::default()),
        (DeviceKind::Ndarray, Some(n)) => hunyuan::<NdArray<f32>>(&args, n, Default::default()),
        #[cfg(feature = "wgpu")]
        (DeviceKind::Wgpu, None) => run::<burn::backend::Wgpu>(&args, Default::default()),
        #[cfg(feature = "wgpu")]
        (DeviceKind::Wgpu, Some(n)) => hunyuan::<burn::backend::Wgpu>(&args, n, Default::default()),
        #[cfg(feature = "cuda")]
        (DeviceKind::Cuda, None) => run::<burn::backend::Cuda>(&args, Default::default()),
        #[cfg(feature = "cuda")]
        (DeviceKind::Cuda, Some(n)) => hunyuan::<burn::backend::Cuda<half::bf16>>(&args, n, Default::default()),
        #[allow(unreachable_patterns)]
        (other, _) => Err(not_built(other)),
    }
}

/// Median of `runs` (sorted in place).
fn median(runs: &mut [f64]) -> f64 {
    runs.sort_by(f64::total_cmp);
    runs[runs.len() / 2]
}

/// HunyuanVideo-width blocks with random weights at the real sequence length: one denoising
/// evaluation per step, dense attention against STA windows (tiles of 6x8x8), after a warm-up
/// evaluation per variant. Reports the median step, its attention time and the speedups.
fn hunyuan<B: SparseAttentionBackend>(args: &Args, blocks: usize, device: B::Device) -> Res<()> {
    let [t, h, w]: [usize; 3] = args.hunyuan_tokens.as_slice().try_into().map_err(|_| {
        format!("--hunyuan-tokens takes three sizes (frames, height, width), got {:?}", args.hunyuan_tokens)
    })?;
    // Random (not zero) gates, so that every block's attention feeds the next one.
    let config = VideoDitConfig::hunyuan_width(blocks).with_zero_init(false);
    config.validate()?;
    let model: VideoDit<B> = config.init(&device)?;
    let [pt, ph, pw] = config.patch;
    let latent_dims = [t * pt, h * ph, w * pw];
    let canvas = model.canvas(latent_dims)?;
    let text = model.text_spec(args.hunyuan_text);
    let mut rng = Rng::new(args.seed);
    let mut normal = |shape: Vec<usize>| {
        let values: Vec<f32> = (0..shape.iter().product::<usize>()).map(|_| rng.normal() as f32).collect();
        TensorData::new(values, shape)
    };
    let latent = Tensor::<B, 5>::from_data(
        normal(vec![1, config.channels, latent_dims[0], latent_dims[1], latent_dims[2]]),
        &device,
    );
    let text_feats = Tensor::<B, 3>::from_data(normal(vec![1, args.hunyuan_text, config.text_dim]), &device);
    let time = Tensor::<B, 1>::from_data(TensorData::new(vec![0.5f32], [1]), &device);
    let n = (t * h * w) as f64;
    println!(
        "{blocks} HunyuanVideo-width blocks ({} heads x {}), {t}x{h}x{w} = {} video tokens + {} text after, {:?}",
        config.heads,
        config.head_dim(),
        t * h * w,
        args.hunyuan_text,
        latent.dtype()
    );

    let tile = [6, 8, 8];
    let mut variants = vec![("dense".to_string(), VideoAttentionConfig::Dense(DenseAttentionConfig::new()), 1.0)];
    for window in [[3, 3, 3], [3, 5, 5], [5, 5, 9]] {
        let sta = SlidingTileAttentionConfig::new(canvas, tile, vec![window]).with_text(text);
        let density = match sta.init()?.block_map() {
            Some(map) => KernelPlan::from_map(std::sync::Arc::new(map.clone()), 1.0).allowed_pairs(0) as f64,
            None => (n + text.len as f64).powi(2),
        } / (n + text.len as f64).powi(2);
        let name = format!("STA {}x{}x{} tiles", window[0], window[1], window[2]);
        variants.push((name, VideoAttentionConfig::SlidingTile(sta), density));
    }

    let steps = args.steps.max(3);
    let mut rows: Vec<(String, f64, f64, f64)> = Vec::new();
    for (name, attention, density) in variants {
        let schedule = AttentionScheduleConfig::new(attention).init()?;
        let (mut walls, mut attn) = (Vec::new(), Vec::new());
        for step in 0..=steps {
            eprint!("\r{name:<22} step {step:>3}/{steps}");
            let mut ctx = AttentionContext::new(&schedule).with_timing();
            B::sync(&device).map_err(|e| format!("{e:?}"))?;
            let start = Instant::now();
            let out = model.forward(latent.clone(), time.clone(), text_feats.clone(), &mut ctx)?;
            B::sync(&device).map_err(|e| format!("{e:?}"))?;
            drop(out);
            // Step 0 compiles the kernels and fills the autotune caches.
            if step > 0 {
                walls.push(start.elapsed().as_secs_f64());
                attn.push(ctx.timing().map_or(0.0, |t| t.elapsed.as_secs_f64()));
            }
        }
        eprintln!();
        rows.push((name, median(&mut walls), median(&mut attn), density));
    }
    let (dense_wall, dense_attn) = (rows[0].1, rows[0].2);
    println!(
        "\n{:<18} {:>8} {:>10} {:>10} {:>10} {:>12} {:>14}",
        "variant", "density", "step ms", "attn ms", "attn share", "step speedup", "attn speedup"
    );
    for (name, wall, attention, density) in &rows {
        println!(
            "{:<18} {:>7.1}% {:>10.1} {:>10.1} {:>9.0}% {:>11.2}x {:>13.2}x",
            name,
            100.0 * density,
            1e3 * wall,
            1e3 * attention,
            100.0 * attention / wall,
            dense_wall / wall,
            dense_attn / attention
        );
    }
    println!("(median of {steps} steps after one warm-up step; attention timed with a device sync around each call)");
    Ok(())
}

fn run<B: SparseAttentionBackend>(args: &Args, device: B::Device) -> Res<()> {
    let config = VideoDitConfig::load(args.weights.with_extension("json")).map_err(|e| {
        format!(
            "{e}: no trained weights at {} (run `cargo run --release --example train_dit` first)",
            args.weights.display()
        )
    })?;
    let recorder = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
    let model: VideoDit<B> = config.init(&device)?.load_file(args.weights.clone(), &recorder, &device)?;
    let canvas = model.canvas([args.frames, args.size, args.size])?;
    let text = model.text_spec(WORDS);

    // Prompts and noise for the generated clips, and for the search's calibration clips.
    let batch = |seed: u64, n: usize| {
        let mut rng = Rng::new(seed);
        let prompts: Vec<Prompt> = (0..n).map(|_| Prompt::nth(rng.next_u64() as usize)).collect();
        let feats: Vec<f32> = prompts.iter().flat_map(|p| p.features()).collect();
        let pixels = n * CHANNELS * args.frames * args.size * args.size;
        let noise: Vec<f32> = (0..pixels).map(|_| rng.normal() as f32).collect();
        let shape = [n, CHANNELS, args.frames, args.size, args.size];
        (
            prompts,
            Tensor::<B, 5>::from_data(TensorData::new(noise, shape), &device),
            Tensor::<B, 3>::from_data(TensorData::new(feats, [n, WORDS, VOCAB]), &device),
        )
    };
    let (prompts, noise, text_feats) = batch(args.seed, args.clips);
    println!("prompts: {}", prompts.iter().map(Prompt::text).collect::<Vec<_>>().join(", "));
    println!("canvas {canvas:?} + {WORDS} text tokens, {} steps, {} clips", args.steps, args.clips);

    let dense = AttentionScheduleConfig::new(VideoAttentionConfig::Dense(DenseAttentionConfig::new()));
    let tile = [2, 2, 2];
    let sta_base = SlidingTileAttentionConfig::new(canvas, tile, vec![[3, 3, 3]]).with_text(text);

    // STA mask search on two calibration clips (other seeds), dense run with the search attached.
    let mut search = StaSearchConfig::new(
        sta_base.clone(),
        vec![[1, 1, 1], [3, 1, 1], [1, 3, 3], [3, 3, 1], [3, 1, 3], [3, 3, 3], [5, 5, 5]],
    )
    .with_skip_steps(args.steps / 4)
    .with_tolerance(args.tolerance)
    .init()?;
    let (_, cal_noise, cal_text) = batch(args.seed + 1000, 2);
    sample(&model, &dense, &cal_noise, &cal_text, args.steps, Some(&mut search), "STA search (dense)")?;
    std::fs::write(&args.sta_schedule, serde_json::to_string_pretty(&search.schedule()?)?)?;
    let found: StaWindowSchedule = serde_json::from_str(&std::fs::read_to_string(&args.sta_schedule)?)?;
    println!(
        "STA search: {} windows, sparsity {:.1}%, written to {}",
        found.windows.len(),
        100.0 * found.sparsity.unwrap_or(f64::NAN),
        args.sta_schedule.display()
    );

    let warm = (args.steps / 10).max(1);
    let uniform = |a: VideoAttentionConfig| AttentionScheduleConfig::new(a);
    let variants: Vec<(String, AttentionScheduleConfig)> = vec![
        ("dense".into(), dense.clone()),
        ("STA 3x3x3 tiles".into(), uniform(VideoAttentionConfig::SlidingTile(sta_base.clone()))),
        ("STA searched".into(), AttentionScheduleConfig::from_sta_windows(&found, &sta_base)?),
        (
            "NATTEN 5x5x5".into(),
            uniform(VideoAttentionConfig::BlockSparse(
                BlockSparseAttentionConfig::new(canvas, tile, PatternSpec::Natten { window: [5, 5, 5] })
                    .with_text(text),
            )),
        ),
        (
            "ToMe KV 50%".into(),
            uniform(VideoAttentionConfig::TokenMerge(
                TokenMergeAttentionConfig::new(canvas, MergeAmount::Ratio(0.5)).with_text(text),
            )),
        ),
        (
            "smart".into(),
            uniform(VideoAttentionConfig::Smart(
                SmartAttentionConfig::new(canvas).with_text(text).with_first_steps(warm),
            )),
        ),
        (
            "dynamic".into(),
            uniform(VideoAttentionConfig::Dynamic(
                DynamicSparseAttentionConfig::new(canvas).with_text(text).with_block(32).with_sink_blocks(1),
            )),
        ),
        (
            "combined".into(),
            uniform(VideoAttentionConfig::Combined(
                CombinedAttentionConfig::new(canvas)
                    .with_text(text)
                    .with_block(32)
                    .with_sink_blocks(1)
                    .with_warmup_steps(warm),
            )),
        ),
    ];

    let mut rows = Vec::new();
    for (name, schedule) in variants {
        let (x, wall, attention) = sample(&model, &schedule, &noise, &text_feats, args.steps, None, &name)?;
        let latent: Vec<f32> = x.into_data().convert::<f32>().to_vec().map_err(|e| format!("{e:?}"))?;
        rows.push(Row { name, wall, attention, latent });
    }

    let base = &rows[0];
    let base_px: Vec<f32> = decode(&base.latent).into_iter().map(f32::from).collect();
    println!(
        "\n{:<18} {:>9} {:>10} {:>8} {:>11} {:>8} {:>11} {:>8}",
        "variant", "wall s", "attention", "speedup", "latent dB", "cos", "frames dB", "cos"
    );
    for row in &rows {
        let (lp, lc) = fidelity(&row.latent, &base.latent, 2.0);
        let px: Vec<f32> = decode(&row.latent).into_iter().map(f32::from).collect();
        let (fp, fc) = fidelity(&px, &base_px, 255.0);
        println!(
            "{:<18} {:>9.2} {:>9.0}% {:>7.2}x {:>11.1} {:>8.4} {:>11.1} {:>8.4}",
            row.name,
            row.wall,
            100.0 * row.attention / row.wall,
            base.wall / row.wall,
            lp,
            lc,
            fp,
            fc
        );
    }
    write_png(&args.out, &rows, args.frames, args.size)?;
    println!(
        "wrote {} (rows: {})",
        args.out.display(),
        rows.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(", ")
    );
    Ok(())
}
