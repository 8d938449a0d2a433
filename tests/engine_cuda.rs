//! The engine's CubeCL kernel through burn on CUDA: `Cuda` (= `Fusion<CubeBackend>`), the
//! unfused `CubeBackend`, `Autodiff<Cuda>`, in f32, f16 and bf16, against the f64 oracle.
//! Build with `--features cuda` on any machine; run where there is a GPU (see the README).
#![cfg(all(feature = "cuda", feature = "ndarray"))]

mod common;

use burn::backend::cuda::CudaDevice;
use burn::tensor::DType;
use burn_cubecl::CubeBackend;
use dit_attention_kernels::attention::KernelElem;
use dit_attention_kernels::cubecl::{Runtime, cuda::CudaRuntime};

fn supported(dtype: DType) -> bool {
    let elem = if dtype == DType::F16 { KernelElem::F16 } else { KernelElem::BF16 };
    elem.supported(&CudaRuntime::client(&CudaDevice::default()))
}

gpu_engine_suite!(burn::backend::Cuda<f32, i32>, CubeBackend<CudaRuntime, f32, i32, u8>, CudaDevice::default(), supported, "tensor-core (mma.sync) CubeCL kernel");

gpu_merge_suite!(
    burn::backend::Cuda<f32, i32>,
    CubeBackend<CudaRuntime, f32, i32, u8>,
    CudaDevice::default(),
    [DType::F16, DType::BF16].into_iter().filter(|&t| supported(t)).collect()
);

gpu_smart_suite!(
    burn::backend::Cuda<f32, i32>,
    CubeBackend<CudaRuntime, f32, i32, u8>,
    CudaDevice::default(),
    [DType::F16, DType::BF16].into_iter().filter(|&t| supported(t)).collect()
);

gpu_dynamic_suite!(
    burn::backend::Cuda<f32, i32>,
    CubeBackend<CudaRuntime, f32, i32, u8>,
    CudaDevice::default(),
    [DType::F16, DType::BF16].into_iter().filter(|&t| supported(t)).collect(),
    2e-2
);

gpu_combined_test!(burn::backend::Cuda<f32, i32>, 1e-2);

gpu_matmul_test!(
    burn::backend::Cuda<f32, i32>,
    CubeBackend<CudaRuntime, f32, i32, u8>,
    [DType::F16, DType::BF16].into_iter().filter(|&t| supported(t)).collect()
);
