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

mod checked_matmul {
    use burn::tensor::{Tensor, TensorData};
    use dit_attention::SparseAttentionBackend;
    use proptest::prelude::*;

    use super::common::SeedRng;
    use super::common::merge::fopts;

    /// The product of row-major `a [z, m, k]` and `b [z, k, n]` in f64.
    fn product(a: &[f64], b: &[f64], [z, m, n, k]: [usize; 4]) -> Vec<f64> {
        let mut out = vec![0.0; z * m * n];
        for (zi, rows) in out.chunks_mut(m * n).enumerate() {
            for i in 0..m {
                for j in 0..n {
                    rows[i * n + j] = (0..k).map(|l| a[(zi * m + i) * k + l] * b[(zi * k + l) * n + j]).sum();
                }
            }
        }
        out
    }

    fn check<B: SparseAttentionBackend>(dims: [usize; 5], seed: u64, transposed: bool) -> Result<(), TestCaseError> {
        let [bt, h, m, n, k] = dims;
        let device = Default::default();
        let mut rng = SeedRng::new(seed);
        let (av, bv) = (rng.normals(bt * h * m * k), rng.normals(bt * h * k * n));
        let a = Tensor::<B, 4>::from_data(TensorData::new(av.clone(), [bt, h, m, k]), fopts::<B>(&device));
        // A strided right operand, as the backward passes them (`swap_dims` of `[.., n, k]`).
        let b = if transposed {
            let mut t = vec![0.0; bv.len()];
            for z in 0..bt * h {
                for l in 0..k {
                    for j in 0..n {
                        t[(z * n + j) * k + l] = bv[(z * k + l) * n + j];
                    }
                }
            }
            Tensor::<B, 4>::from_data(TensorData::new(t, [bt, h, n, k]), fopts::<B>(&device)).swap_dims(2, 3)
        } else {
            Tensor::<B, 4>::from_data(TensorData::new(bv.clone(), [bt, h, k, n]), fopts::<B>(&device))
        };
        let got: Vec<f64> = B::checked_matmul(a, b).into_data().convert::<f64>().to_vec().unwrap();
        let want = product(&av, &bv, [bt * h, m, n, k]);
        prop_assert_eq!(got.len(), want.len());
        let abs = |v: &[f64]| v.iter().map(|x| x.abs()).collect::<Vec<_>>();
        let bound = product(&abs(&av), &abs(&bv), [bt * h, m, n, k]);
        for (i, ((g, w), e)) in got.iter().zip(&want).zip(&bound).enumerate() {
            // Every element written and right: f32 rounding of the inputs and of k additions.
            prop_assert!((g - w).abs() <= 1e-6 * (k as f64 + 2.0) * e, "element {} is {} not {} ({:?})", i, g, w, dims);
        }
        Ok(())
    }

    fn dims() -> impl Strategy<Value = [usize; 5]> {
        // k around and at multiples of the tile (the stage counts burn's double-buffered matmul got wrong).
        let k = prop_oneof![1usize..=40, Just(8), Just(16), Just(48)];
        // Rows and columns past one output tile (32 x 128) and ragged within it.
        let n = prop_oneof![1usize..=37, 120usize..=300];
        (1usize..=2, 1usize..=3, 1usize..=70, n, k).prop_map(|(b, h, m, n, k)| [b, h, m, n, k])
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(12))]

        /// The bounds-checked matmul of the reference backward against f64, fused and not, with
        /// ragged shapes and a strided right operand.
        #[test]
        fn matches_f64_on_ragged_shapes(dims in dims(), seed in any::<u64>(), transposed in any::<bool>()) {
            check::<burn::backend::Wgpu<f32, i32, u32>>(dims, seed, transposed)?;
            check::<super::CubeBackend<super::WgpuRuntime, f32, i32, u32>>(dims, seed, transposed)?;
        }
    }
}
