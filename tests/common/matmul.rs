//! The bounds-checked matmul (`SparseAttentionBackend::checked_matmul`) against f64: ragged
//! shapes past one output tile, a strided right operand, and the half dtypes a runtime runs on
//! tensor cores.

use burn::tensor::{DType, Tensor, TensorData};
use dit_attention::SparseAttentionBackend;
use proptest::prelude::*;

use super::merge::fopts;
use super::{SeedRng, values};

/// The product of row-major `a [z, m, k]` and `b [z, k, n]` in f64.
pub fn product(a: &[f64], b: &[f64], [z, m, n, k]: [usize; 4]) -> Vec<f64> {
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

/// Unit roundoff of the output's type (the products accumulate in f32 everywhere).
fn output_rounding(dtype: DType) -> f64 {
    match dtype {
        DType::BF16 => 2f64.powi(-8),
        DType::F16 => 2f64.powi(-11),
        _ => 0.0,
    }
}

/// `checked_matmul` on `B` in `dtype` against the f64 product of the inputs as `B` holds them
/// (rounded to `dtype`): every element written, within f32 accumulation error plus one
/// rounding of the output.
pub fn check<B: SparseAttentionBackend>(
    dims: [usize; 5],
    seed: u64,
    transposed: bool,
    dtype: DType,
) -> Result<(), TestCaseError> {
    let [bt, h, m, n, k] = dims;
    let device = Default::default();
    let mut rng = SeedRng::new(seed);
    let (av, bv) = (rng.normals(bt * h * m * k), rng.normals(bt * h * k * n));
    let a = Tensor::<B, 4>::from_data(TensorData::new(av, [bt, h, m, k]), fopts::<B>(&device)).cast(dtype);
    // A strided right operand, as the backward and Combined pass them (`swap_dims` of `[.., n, k]`).
    let b = if transposed {
        let mut t = vec![0.0; bv.len()];
        for z in 0..bt * h {
            for l in 0..k {
                for j in 0..n {
                    t[(z * n + j) * k + l] = bv[(z * k + l) * n + j];
                }
            }
        }
        Tensor::<B, 4>::from_data(TensorData::new(t, [bt, h, n, k]), fopts::<B>(&device)).cast(dtype).swap_dims(2, 3)
    } else {
        Tensor::<B, 4>::from_data(TensorData::new(bv, [bt, h, k, n]), fopts::<B>(&device)).cast(dtype)
    };
    let (ar, br) = (values(a.clone()), values(b.clone()));
    let got = values(B::checked_matmul(a, b));
    let want = product(&ar, &br, [bt * h, m, n, k]);
    prop_assert_eq!(got.len(), want.len());
    let abs = |v: &[f64]| v.iter().map(|x| x.abs()).collect::<Vec<_>>();
    let bound = product(&abs(&ar), &abs(&br), [bt * h, m, n, k]);
    let out_eps = output_rounding(dtype);
    for (i, ((g, w), e)) in got.iter().zip(&want).zip(&bound).enumerate() {
        let tol = 1e-6 * (k as f64 + 2.0) * e + out_eps * w.abs();
        prop_assert!((g - w).abs() <= tol, "element {} is {} not {} ({:?}, {:?})", i, g, w, dims, dtype);
    }
    Ok(())
}

pub fn dims() -> impl Strategy<Value = [usize; 5]> {
    // k around and at multiples of the tiles (16 and 32 deep; the stage counts burn's
    // double-buffered matmul got wrong), and Combined's 64.
    let k = prop_oneof![1usize..=40, Just(8), Just(16), Just(48), Just(64)];
    // Rows and columns past one output tile (32 x 128 scalar, 64 x 128 tensor cores) and ragged.
    let n = prop_oneof![1usize..=37, 120usize..=300];
    (1usize..=2, 1usize..=3, 1usize..=140, n, k).prop_map(|(b, h, m, n, k)| [b, h, m, n, k])
}

/// The matmul test for a GPU runtime: `$fused` and `$cube` in f32 and in each of `$half` (on
/// CUDA with `DIT_ATTENTION_MATMUL_TENSOR_CORES=1` set, the half dtypes take the tensor-core
/// kernel).
#[macro_export]
macro_rules! gpu_matmul_test {
    ($fused:ty, $cube:ty, $half:expr) => {
        mod checked_matmul {
            #[allow(unused_imports)]
            use super::*;
            use burn::tensor::DType;
            #[allow(unused_imports)]
            use proptest::prelude::*;

            use super::common::matmul::{check, dims};

            proptest! {
                #![proptest_config(ProptestConfig::with_cases(12))]

                /// The bounds-checked matmul (the reference backward's, Combined's sampled
                /// scores) against f64, fused and not, with ragged shapes and a strided right
                /// operand.
                #[test]
                fn matches_f64_on_ragged_shapes(dims in dims(), seed in any::<u64>(), transposed in any::<bool>()) {
                    let half: Vec<DType> = $half;
                    for dtype in std::iter::once(DType::F32).chain(half) {
                        check::<$fused>(dims, seed, transposed, dtype)?;
                        check::<$cube>(dims, seed, transposed, dtype)?;
                    }
                }
            }
        }
    };
}
