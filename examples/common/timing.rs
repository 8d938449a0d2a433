//! Timing shared by the device examples: the median of device-synchronised calls after one
//! warm-up call (which compiles the kernels and runs autotune).

use std::time::Instant;

use burn::backend::Cuda;
use burn::backend::cuda::CudaDevice;
use burn::tensor::backend::Backend;

/// The examples' error type.
pub type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Median of `v` (the upper one of an even count).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Milliseconds of `f`: the median of `runs` calls, each followed by a device sync, after one
/// synchronised warm-up call.
pub fn time_ms(device: &CudaDevice, runs: usize, f: &dyn Fn() -> Res<()>) -> Res<f64> {
    time_ms_on::<Cuda<f32, i32>>(device, runs, f)
}

/// [`time_ms`] with the sync of backend `S` (another backend on the same CUDA device).
pub fn time_ms_on<S: Backend<Device = CudaDevice>>(
    device: &CudaDevice,
    runs: usize,
    f: &dyn Fn() -> Res<()>,
) -> Res<f64> {
    let sync = || S::sync(device).map_err(|e| format!("{e:?}"));
    f()?;
    sync()?;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        f()?;
        sync()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(median(times))
}

/// Milliseconds per call of `f` in a stream: `runs` calls enqueued back to back, one device sync
/// after them (the host ahead of the device, as in a model's forward pass, and the sync's own
/// cost shared by every call); the median of five such batches after one synchronised warm-up.
#[allow(dead_code)]
pub fn stream_ms(device: &CudaDevice, runs: usize, f: &dyn Fn() -> Res<()>) -> Res<f64> {
    let sync = || Cuda::<f32, i32>::sync(device).map_err(|e| format!("{e:?}"));
    f()?;
    sync()?;
    let mut times = Vec::with_capacity(5);
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..runs {
            f()?;
        }
        sync()?;
        times.push(t.elapsed().as_secs_f64() * 1e3 / runs as f64);
    }
    Ok(median(times))
}
