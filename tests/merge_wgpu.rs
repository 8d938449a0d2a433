//! The token-merging kernels on wgpu (Mesa lavapipe on a CPU-only machine): `Wgpu`
//! (= `Fusion<CubeBackend>`), the unfused `CubeBackend` and `Autodiff<Wgpu>`, against the
//! brute-force matching and the f64 reference backend. Run with `--features wgpu`.
#![cfg(all(feature = "wgpu", feature = "ndarray"))]

mod common;

use burn::backend::wgpu::{CubeBackend, WgpuDevice, WgpuRuntime};

// Lavapipe has no bf16 and the f16 path is the portable one there: f32 only.
gpu_merge_suite!(burn::backend::Wgpu<f32, i32, u32>, CubeBackend<WgpuRuntime, f32, i32, u32>, WgpuDevice::default(), vec![]);
