//! Shared checks of the engine's public API on any backend: random STA / pattern problems, the
//! f64 brute-force oracle, and a plain low-precision implementation as the error yardstick.
#![allow(dead_code)]

use burn::tensor::{DType, Tensor, TensorData};
use dit_attention::{
    AttentionOutput, BlockPartition, Canvas, PatternSpec, SlidingTileAttentionConfig, SparseAttentionBackend, TextSpec,
    TileShape, TokenOrder,
};
use proptest::prelude::*;

use super::strategies::{canvas_and_tile, odd_window, text};
use super::{SeedRng, brute_attention, brute_tokens, pattern_allows, values};

/// One random STA problem.
#[derive(Debug, Clone)]
pub struct StaCase {
    pub canvas: Canvas,
    pub tile: TileShape,
    pub windows: Vec<[usize; 3]>,
    pub text: TextSpec,
    pub order: TokenOrder,
    pub batch: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub value_dim: usize,
    pub bias: bool,
    pub seed: u64,
}

/// Small STA problems: 1D/2D/3D ragged canvases, shared or per-head windows (sometimes covering
/// everything: the dense fast path), text before or after, both token orders, head dims 64 and
/// 128 (and a small odd value dim now and then), with or without bias.
pub fn sta_case() -> impl Strategy<Value = StaCase> {
    (canvas_and_tile(), text(), any::<bool>(), 1usize..=2, 1usize..=3, any::<bool>(), any::<u64>())
        .prop_flat_map(|((canvas, tile), text, tile_major, batch, heads, per_head, seed)| {
            let c = canvas.dims();
            let n = [0, 1, 2].map(|d| c[d].div_ceil(tile.dims()[d]));
            let windows =
                prop::collection::vec(odd_window([n[0] + 1, n[1] + 1, n[2] + 1]), if per_head { heads } else { 1 });
            let dims = prop::sample::select(vec![(64usize, 64usize), (128, 128), (64, 3)]);
            (Just((canvas, tile, text, tile_major, batch, heads, seed)), windows, dims, any::<bool>())
        })
        .prop_map(|((canvas, tile, text, tile_major, batch, heads, seed), windows, (head_dim, value_dim), bias)| {
            StaCase {
                canvas,
                tile,
                windows,
                text,
                order: if tile_major { TokenOrder::TileMajor } else { TokenOrder::Natural },
                batch,
                heads,
                head_dim,
                value_dim,
                bias,
                seed,
            }
        })
}

/// A fixed natural-order STA problem whose tile permutation moves most tokens (ragged tiles,
/// per-head windows, text after, bias).
pub fn natural_order_sta_case() -> StaCase {
    StaCase {
        canvas: Canvas::new(3, 5, 7).unwrap(),
        tile: TileShape::new(2, 2, 3).unwrap(),
        windows: vec![[1, 1, 1], [1, 3, 1]],
        text: TextSpec::after(3),
        order: TokenOrder::Natural,
        batch: 1,
        heads: 2,
        head_dim: 64,
        value_dim: 64,
        bias: true,
        seed: 11,
    }
}

impl StaCase {
    pub fn config(&self) -> SlidingTileAttentionConfig {
        SlidingTileAttentionConfig::new(self.canvas.dims(), self.tile.dims(), self.windows.clone())
            .with_text(self.text)
            .with_order(self.order)
    }

    pub fn seq_len(&self) -> usize {
        self.canvas.len() + self.text.len
    }

    pub fn spec(&self) -> PatternSpec {
        PatternSpec::Sta { windows: self.windows.clone() }
    }
}

/// Inputs on a backend in a dtype, with the values they actually hold (after rounding).
pub struct Inputs<BK: SparseAttentionBackend> {
    pub q: Tensor<BK, 4>,
    pub k: Tensor<BK, 4>,
    pub v: Tensor<BK, 4>,
    pub bias: Option<Tensor<BK, 3>>,
    pub qv: Vec<f64>,
    pub kv: Vec<f64>,
    pub vv: Vec<f64>,
    pub biasv: Vec<f64>,
}

/// A tensor from f64 values, created in f32 and cast to `dtype`, with the values it holds.
pub fn tensor_in<BK: SparseAttentionBackend, const D: usize>(
    v: Vec<f64>,
    shape: [usize; D],
    device: &BK::Device,
    dtype: DType,
) -> (Tensor<BK, D>, Vec<f64>) {
    let v32: Vec<f32> = v.iter().map(|&x| x as f32).collect();
    let t = Tensor::<BK, D>::from_data(TensorData::new(v32, shape), (device, DType::F32)).cast(dtype);
    let held = values(t.clone());
    (t, held)
}

pub fn inputs<BK: SparseAttentionBackend>(
    seed: u64,
    [b, h, n, d, dv]: [usize; 5],
    with_bias: bool,
    device: &BK::Device,
    dtype: DType,
) -> Inputs<BK> {
    let mut rng = SeedRng::new(seed);
    let (q, qv) = tensor_in::<BK, 4>(rng.normals(b * h * n * d), [b, h, n, d], device, dtype);
    let (k, kv) = tensor_in::<BK, 4>(rng.normals(b * h * n * d), [b, h, n, d], device, dtype);
    let (v, vv) = tensor_in::<BK, 4>(rng.normals(b * h * n * dv), [b, h, n, dv], device, dtype);
    let (bias, biasv) = if with_bias {
        let (t, v) = tensor_in::<BK, 3>(rng.normals(b * h * n), [b, h, n], device, dtype);
        (Some(t), v)
    } else {
        (None, Vec::new())
    };
    Inputs { q, k, v, bias, qv, kv, vv, biasv }
}

/// Rounding to a dtype's precision (f16 through the `half` crate).
pub fn round_to(dtype: DType) -> fn(f32) -> f32 {
    match dtype {
        DType::F16 => |x| half::f16::from_f32(x).to_f32(),
        DType::BF16 => |x| half::bf16::from_f32(x).to_f32(),
        _ => |x| x,
    }
}

/// Plain attention in low precision: f32 arithmetic, with scores, probabilities and outputs
/// rounded to the dtype the way an unfused implementation stores them. The yardstick.
#[allow(clippy::too_many_arguments)]
pub fn plain_attention(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    bias: &[f64],
    [b, h, n, d, dv]: [usize; 5],
    scale: f64,
    dtype: DType,
    allowed: impl Fn(usize, usize, usize) -> bool,
) -> (Vec<f64>, Vec<f64>) {
    let r = round_to(dtype);
    let mut out = vec![0.0; b * h * n * dv];
    let mut lse = vec![f64::NEG_INFINITY; b * h * n];
    for bh in 0..b * h {
        for i in 0..n {
            let keys: Vec<usize> = (0..n).filter(|&j| allowed(bh % h, i, j)).collect();
            if keys.is_empty() {
                continue;
            }
            let s: Vec<f32> = keys
                .iter()
                .map(|&j| {
                    let dot: f32 =
                        (0..d).map(|x| q[(bh * n + i) * d + x] as f32 * k[(bh * n + j) * d + x] as f32).sum();
                    r(r(dot * scale as f32) + if bias.is_empty() { 0.0 } else { bias[bh * n + j] as f32 })
                })
                .collect();
            let m = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let p: Vec<f32> = s.iter().map(|x| r((x - m).exp())).collect();
            let z: f32 = p.iter().sum();
            lse[bh * n + i] = (m + z.ln()) as f64;
            for x in 0..dv {
                let acc: f32 = keys.iter().zip(&p).map(|(&j, pj)| pj * v[(bh * n + j) * dv + x] as f32).sum();
                out[(bh * n + i) * dv + x] = r(acc / z) as f64;
            }
        }
    }
    (out, lse)
}

/// Largest absolute difference over entries where either side is finite; infinite entries must
/// match exactly.
pub fn max_abs_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            if x.is_finite() && y.is_finite() {
                (x - y).abs()
            } else if x == y {
                0.0
            } else {
                f64::INFINITY
            }
        })
        .fold(0.0, f64::max)
}

/// Machine epsilon of a dtype.
pub fn eps(dtype: DType) -> f64 {
    match dtype {
        DType::F16 => 2f64.powi(-10),
        DType::BF16 => 2f64.powi(-7),
        DType::F64 => f64::EPSILON,
        _ => f32::EPSILON as f64,
    }
}

/// Runs STA through the public API on `BK` and checks it against the f64 oracle: the error may
/// be at most 8 times the plain low-precision implementation's error (floored at a few ulps).
pub fn check_sta<BK: SparseAttentionBackend>(
    c: &StaCase,
    device: &BK::Device,
    dtype: DType,
) -> Result<(), TestCaseError> {
    let n = c.seq_len();
    let shape = [c.batch, c.heads, n, c.head_dim, c.value_dim];
    let x = inputs::<BK>(c.seed, shape, c.bias, device, dtype);
    let got: AttentionOutput<BK> =
        dit_attention::sliding_tile_attention(x.q.clone(), x.k.clone(), x.v.clone(), &c.config(), x.bias.clone())
            .map_err(|e| TestCaseError::fail(format!("{e}")))?;
    let toks = brute_tokens(c.canvas, c.tile, c.text, c.order);
    let spec = c.spec();
    let allowed = |h: usize, i: usize, j: usize| pattern_allows(&spec, c.canvas, c.tile, h, toks[i], toks[j]);
    check_against_oracle(got, &x, shape, dtype, allowed)
}

/// Compares an engine result on inputs `x` with the f64 oracle over the pairs `allowed` lets
/// through: the error may be at most 8 times the plain low-precision implementation's error
/// (floored at a few ulps); every output element must be written and finite.
pub fn check_against_oracle<BK: SparseAttentionBackend>(
    got: AttentionOutput<BK>,
    x: &Inputs<BK>,
    shape: [usize; 5],
    dtype: DType,
    allowed: impl Fn(usize, usize, usize) -> bool + Copy,
) -> Result<(), TestCaseError> {
    let [b, h, n, d, dv] = shape;
    let scale = 1.0 / (d as f64).sqrt();
    let (out, lse) = (values(got.output), values(got.lse));
    prop_assert_eq!(out.len(), b * h * n * dv);
    prop_assert!(out.iter().all(|x| x.is_finite()), "every output element written and finite");
    let (want_o, want_l) = brute_attention(&x.qv, &x.kv, &x.vv, &x.biasv, [b, h, n, n, d, dv], scale, allowed);
    let (low_o, low_l) = plain_attention(&x.qv, &x.kv, &x.vv, &x.biasv, shape, scale, dtype, allowed);
    let bound_o = 8.0 * max_abs_err(&low_o, &want_o).max(4.0 * eps(dtype));
    let bound_l = 8.0 * max_abs_err(&low_l, &want_l).max(16.0 * eps(dtype));
    let (eo, el) = (max_abs_err(&out, &want_o), max_abs_err(&lse, &want_l));
    prop_assert!(eo <= bound_o, "output error {} > bound {} ({:?})", eo, bound_o, dtype);
    prop_assert!(el <= bound_l, "lse error {} > bound {} ({:?})", el, bound_l, dtype);
    Ok(())
}

/// One random local-pattern problem on a block map with partial blocks (any pattern, any
/// order, uniform blocks of 1..=40 tokens or one per tile).
#[derive(Debug, Clone)]
pub struct PatternCase {
    pub canvas: Canvas,
    pub tile: TileShape,
    pub spec: PatternSpec,
    pub text: TextSpec,
    pub order: TokenOrder,
    pub partition: BlockPartition,
    pub heads: usize,
    pub head_dim: usize,
    pub value_dim: usize,
    pub bias: bool,
    pub seed: u64,
}

pub fn pattern_case() -> impl Strategy<Value = PatternCase> {
    (canvas_and_tile(), text(), super::strategies::order())
        .prop_flat_map(|((canvas, tile), text, order)| {
            let partition = prop_oneof![
                (1usize..=40).prop_map(BlockPartition::Uniform),
                Just(if order == TokenOrder::TileMajor { BlockPartition::PerTile } else { BlockPartition::Uniform(7) }),
            ];
            let dims = prop::sample::select(vec![(64usize, 64usize), (128, 128), (64, 3)]);
            (
                Just((canvas, tile, text, order)),
                super::strategies::pattern(canvas, tile),
                partition,
                dims,
                (any::<bool>(), any::<u64>()),
            )
        })
        .prop_map(|((canvas, tile, text, order), spec, partition, (head_dim, value_dim), (bias, seed))| {
            let heads = match &spec {
                PatternSpec::Sta { windows } => windows.len(),
                _ => 2,
            };
            PatternCase { canvas, tile, spec, text, order, partition, heads, head_dim, value_dim, bias, seed }
        })
}

/// A local pattern through [`dit_attention::BlockSparseAttention`] (index lists, partial blocks
/// masked in the kernel) against the f64 oracle.
pub fn check_pattern<BK: SparseAttentionBackend>(
    c: &PatternCase,
    device: &BK::Device,
    dtype: DType,
) -> Result<(), TestCaseError> {
    use dit_attention::BlockSparseAttentionConfig;
    let n = c.canvas.len() + c.text.len;
    let shape = [1, c.heads, n, c.head_dim, c.value_dim];
    let x = inputs::<BK>(c.seed, shape, c.bias, device, dtype);
    let module = BlockSparseAttentionConfig::new(c.canvas.dims(), c.tile.dims(), c.spec.clone())
        .with_text(c.text)
        .with_order(c.order)
        .with_partition(c.partition)
        .init()
        .map_err(|e| TestCaseError::fail(format!("{e}")))?;
    let got = module
        .forward_with(x.q.clone(), x.k.clone(), x.v.clone(), x.bias.clone())
        .map_err(|e| TestCaseError::fail(format!("{e}")))?;
    let toks = brute_tokens(c.canvas, c.tile, c.text, c.order);
    let allowed = |h: usize, i: usize, j: usize| pattern_allows(&c.spec, c.canvas, c.tile, h, toks[i], toks[j]);
    check_against_oracle(got, &x, shape, dtype, allowed)
}

/// The block partition STA uses (for tests that build the map themselves).
pub const STA_PARTITION: BlockPartition = BlockPartition::PerTile;

/// Gradients through `Autodiff<BK>` (kernel forward, reference-composite backward) in f32
/// against burn's autodiff through the reference on f64 ndarray. The yardstick is burn's autodiff
/// through the reference on `BK` itself in f32 (on CUDA its matmuls may run in TF32).
#[cfg(feature = "ndarray")]
pub fn check_autodiff<BK>(c: &StaCase, device: &BK::Device) -> Result<(), TestCaseError>
where
    BK: burn::tensor::backend::AutodiffBackend + SparseAttentionBackend,
{
    use burn::backend::Autodiff;
    use dit_attention::reference::block_sparse_attention_reference;
    use dit_attention::{AttentionMask, AttentionOptions, BlockMap, VideoLayout, block_sparse_attention};

    fn grads<A: burn::tensor::backend::AutodiffBackend + SparseAttentionBackend>(
        c: &StaCase,
        map: &BlockMap,
        shape: [usize; 5],
        device: &A::Device,
        dtype: DType,
        engine: bool,
    ) -> Vec<Vec<f64>> {
        let x = inputs::<A>(c.seed, shape, c.bias, device, dtype);
        let (q, k, v) = (x.q.require_grad(), x.k.require_grad(), x.v.require_grad());
        let bias = x.bias.map(|t| t.require_grad());
        let options = AttentionOptions::default();
        let r = if engine {
            block_sparse_attention(q.clone(), k.clone(), v.clone(), map, bias.clone(), options).unwrap()
        } else {
            block_sparse_attention_reference(q.clone(), k.clone(), v.clone(), map, bias.clone(), options).unwrap()
        };
        let w = Tensor::<A, 4>::ones(r.output.dims(), (device, dtype)).mul_scalar(0.5);
        let loss = (r.output * w).sum() + r.lse.cast(dtype).sum();
        let g = loss.backward();
        let mut out = vec![values(q.grad(&g).unwrap()), values(k.grad(&g).unwrap()), values(v.grad(&g).unwrap())];
        out.extend(bias.map(|t| values(t.grad(&g).unwrap())));
        out
    }

    let layout = VideoLayout::new(c.canvas, c.tile, c.text).unwrap();
    let map = BlockMap::from_mask(&AttentionMask::new(layout, c.spec()).unwrap(), TokenOrder::TileMajor, STA_PARTITION)
        .unwrap();
    let shape = [c.batch, c.heads, c.seq_len(), 16, 8];
    let got = grads::<BK>(c, &map, shape, device, DType::F32, true);
    let yardstick = grads::<BK>(c, &map, shape, device, DType::F32, false);
    let want = grads::<Autodiff<super::B64>>(c, &map, shape, &Default::default(), DType::F64, false);
    for (i, name) in ["q", "k", "v", "bias"].iter().enumerate().take(want.len()) {
        let err = super::rel_err(&got[i], &want[i]);
        let bound = 8.0 * super::rel_err(&yardstick[i], &want[i]).max(1e-6);
        prop_assert!(err <= bound, "gradient of {}: relative error {} > bound {}", name, err, bound);
    }
    Ok(())
}

/// Dense attention with different query and key lengths and a bias, against the f64 oracle.
pub fn check_dense_cross<BK: SparseAttentionBackend>(device: &BK::Device) {
    use dit_attention::{AttentionOptions, dense_attention};
    let (b, h, nq, nk, d, dv) = (2, 2, 70, 300, 64, 64);
    let x = inputs::<BK>(5, [b, h, nk, d, dv], true, device, DType::F32);
    let q = x.q.clone().narrow(2, 0, nq);
    let qv: Vec<f64> = values(q.clone());
    let r = dense_attention(q, x.k, x.v, x.bias, AttentionOptions::default()).unwrap();
    let scale = 1.0 / (d as f64).sqrt();
    let (want_o, want_l) = brute_attention(&qv, &x.kv, &x.vv, &x.biasv, [b, h, nq, nk, d, dv], scale, |_, _, _| true);
    assert!(max_abs_err(&values(r.output), &want_o) < 1e-4);
    assert!(max_abs_err(&values(r.lse), &want_l) < 1e-4);
}

/// Errors on the kernel path: a head dim beyond it, an integer dtype, a float type the runtime
/// does not report (checked without creating such tensors, which burn itself cannot hold there).
pub fn check_kernel_errors<BK: SparseAttentionBackend>(device: &BK::Device, unsupported: &[DType]) {
    use dit_attention::{AttentionOptions, DitAttentionError, dense_attention};
    let x = inputs::<BK>(1, [1, 1, 8, 512, 8], false, device, DType::F32);
    let err = dense_attention(x.q, x.k, x.v, None, AttentionOptions::default()).unwrap_err();
    assert!(matches!(&err, DitAttentionError::Unsupported { what, .. } if what.contains("512")), "{err}");
    for &dtype in unsupported.iter().chain(&[DType::I32]) {
        let err = BK::sparse_attention_support(device, dtype, 64, 64).unwrap_err();
        assert!(
            matches!(&err, DitAttentionError::Unsupported { what, .. } if what.contains(&format!("{dtype:?}"))),
            "{err}"
        );
    }
}

/// The GPU suite for one runtime: `$fused` (burn's default backend type), `$unfused`
/// (`CubeBackend`), a device, whether f16 / bf16 are reported by the runtime, and the path the
/// runtime must take for half-precision head dims 64 and 128.
#[macro_export]
macro_rules! gpu_engine_suite {
    ($fused:ty, $unfused:ty, $device:expr, $supported:expr, $half_path:expr) => {
        #[test]
        fn the_path_follows_the_runtime_features() {
            use dit_attention::SparseAttentionBackend;
            let path = |dtype, d| <$fused as SparseAttentionBackend>::sparse_attention_path(&$device, dtype, d, d);
            assert_eq!(path(DType::F32, 64), "portable CubeCL kernel");
            assert_eq!(path(DType::F16, 256), "portable CubeCL kernel");
            for dtype in float_types().0 {
                for d in [64, 128] {
                    assert_eq!(path(dtype, d), $half_path, "{dtype:?} d{d}");
                }
            }
        }

        use common::engine::*;
        use proptest::prelude::*;

        fn float_types() -> (Vec<DType>, Vec<DType>) {
            [DType::F16, DType::BF16].into_iter().partition(|&t| $supported(t))
        }

        proptest! {
            #![proptest_config(common::cases(16))]

            #[test]
            fn sta_kernel_on_the_default_fused_backend_f32(c in sta_case()) {
                check_sta::<$fused>(&c, &$device, DType::F32)?;
            }

            #[test]
            fn sta_kernel_in_half_precision(c in sta_case()) {
                for dtype in float_types().0 {
                    check_sta::<$fused>(&c, &$device, dtype)?;
                }
            }

            #[test]
            fn partial_blocks_are_masked_in_the_kernel(c in pattern_case()) {
                check_pattern::<$fused>(&c, &$device, DType::F32)?;
                for dtype in float_types().0 {
                    check_pattern::<$fused>(&c, &$device, dtype)?;
                }
            }
        }

        proptest! {
            #![proptest_config(common::cases(3))]

            #[test]
            fn sta_kernel_on_the_unfused_cube_backend(c in sta_case()) {
                check_sta::<$unfused>(&c, &$device, DType::F32)?;
            }

            #[test]
            fn autodiff_gradients_equal_the_f64_reference(c in sta_case()) {
                check_autodiff::<burn::backend::Autodiff<$fused>>(&c, &$device)?;
            }

            #[test]
            fn backward_kernels_on_the_unfused_cube_backend(c in sta_case(), up in common::backward::upstream()) {
                common::backward::check_sta_gradients::<burn::backend::Autodiff<$unfused>>(&c, up, &$device, DType::F32)?;
            }
        }

        proptest! {
            #![proptest_config(common::cases(12))]

            #[test]
            fn sta_backward_kernels_equal_the_brute_force_chain_rule(c in sta_case(), up in common::backward::upstream()) {
                common::backward::check_sta_gradients::<burn::backend::Autodiff<$fused>>(&c, up, &$device, DType::F32)?;
                // Half precision takes the tensor-core backward where the runtime has one.
                for dtype in float_types().0 {
                    common::backward::check_sta_gradients::<burn::backend::Autodiff<$fused>>(&c, up, &$device, dtype)?;
                }
            }

            #[test]
            fn backward_kernels_mask_partial_blocks(c in pattern_case(), up in common::backward::upstream()) {
                common::backward::check_pattern_gradients::<burn::backend::Autodiff<$fused>>(&c, up, &$device, DType::F32)?;
                for dtype in float_types().0 {
                    common::backward::check_pattern_gradients::<burn::backend::Autodiff<$fused>>(&c, up, &$device, dtype)?;
                }
            }
        }

        #[test]
        fn sta_kernel_gathers_natural_order_in_its_loads() {
            check_sta::<$fused>(&natural_order_sta_case(), &$device, DType::F32).unwrap();
        }

        #[test]
        fn dense_kernel_with_cross_lengths_and_bias() {
            check_dense_cross::<$fused>(&$device);
        }

        #[test]
        fn unsupported_inputs_get_errors_on_the_kernel_path() {
            check_kernel_errors::<$fused>(&$device, &float_types().1);
        }
    };
}
