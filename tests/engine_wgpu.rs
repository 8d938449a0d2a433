//! The engine's CubeCL kernel through burn on wgpu (Mesa lavapipe on a CPU-only machine):
//! `Wgpu` (= `Fusion<CubeBackend>`), the unfused `CubeBackend`, and `Autodiff<Wgpu>`, against
//! the f64 oracle with the plain-low-precision error rule. Run with `--features wgpu`.
#![cfg(all(feature = "wgpu", feature = "ndarray"))]

mod common;

use burn::backend::wgpu::{CubeBackend, WgpuDevice, WgpuRuntime};
use burn::tensor::DType;
use dit_attention_kernels::attention::KernelElem;
use dit_attention_kernels::cubecl::Runtime;

fn supported(dtype: DType) -> bool {
    let elem = if dtype == DType::F16 { KernelElem::F16 } else { KernelElem::BF16 };
    elem.supported(&WgpuRuntime::client(&WgpuDevice::default()))
}

gpu_engine_suite!(burn::backend::Wgpu<f32, i32, u32>, CubeBackend<WgpuRuntime, f32, i32, u32>, WgpuDevice::default(), supported, "portable CubeCL kernel");

// Lavapipe has no bf16 and the f16 path is the portable one there: f32 only.
gpu_smart_suite!(burn::backend::Wgpu<f32, i32, u32>, CubeBackend<WgpuRuntime, f32, i32, u32>, WgpuDevice::default(), vec![]);

gpu_dynamic_suite!(burn::backend::Wgpu<f32, i32, u32>, CubeBackend<WgpuRuntime, f32, i32, u32>, WgpuDevice::default(), vec![], 1e-4);

gpu_combined_test!(burn::backend::Wgpu<f32, i32, u32>, 1e-4);

// Lavapipe: f32 only (no bf16, and no tensor cores for f16).
gpu_matmul_test!(burn::backend::Wgpu<f32, i32, u32>, CubeBackend<WgpuRuntime, f32, i32, u32>, vec![]);
