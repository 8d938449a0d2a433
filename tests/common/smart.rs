//! Smart attention (spec section 7) written straight from the spec in plain f64 Rust: the two
//! masks from canvas coordinates (the token-major order by sorting), the profiling on the
//! sampled rows, the per-head choice and the masked attention. Independent of the crate's band,
//! block-map and permutation code.
#![allow(dead_code)]

use burn::tensor::{Tensor, TensorData};
use dit_attention::smart::{BandSpec, HeadClass, SmartAttentionConfig};
use dit_attention::{Canvas, SparseAttentionBackend, TextSpec, TileShape, TokenOrder};
use proptest::prelude::*;

use super::merge::fopts;
use super::{SeedRng, brute_attention, brute_tokens};

/// One random smart-attention problem.
#[derive(Debug, Clone)]
pub struct SmartCase {
    pub canvas: Canvas,
    pub text: TextSpec,
    pub width: usize,
    pub sink: bool,
    pub samples: usize,
    pub seed: u64,
    pub batch: usize,
    pub heads: usize,
    pub dims: (usize, usize),
    /// A random per-key bias `[b or 1, h or 1, n]`: `Some([per batch, per head])`.
    pub bias: Option<[bool; 2]>,
    pub data_seed: u64,
}

pub fn smart_case() -> impl Strategy<Value = SmartCase> {
    let text = prop_oneof![
        Just(TextSpec::none()),
        (1usize..=4).prop_map(TextSpec::before),
        (1usize..=4).prop_map(TextSpec::after)
    ];
    ((2usize..=5, 1usize..=3, 1usize..=4), text, any::<bool>(), any::<u64>(), 1usize..=2, 1usize..=3, any::<u64>())
        .prop_flat_map(|(c, text, sink, seed, batch, heads, data_seed)| {
            let video = c.0 * c.1 * c.2;
            (
                Just((c, text, sink, seed, batch, heads, data_seed)),
                0..c.0,
                1..=video.min(8),
                2usize..=8,
                2usize..=6,
                any::<Option<[bool; 2]>>(),
            )
        })
        .prop_map(|((c, text, sink, seed, batch, heads, data_seed), width, samples, d, dv, bias)| SmartCase {
            canvas: Canvas::new(c.0, c.1, c.2).unwrap(),
            text,
            width,
            sink,
            samples,
            seed,
            batch,
            heads,
            dims: (d, dv),
            bias,
            data_seed,
        })
}

/// Random q, k, v of a case, with their values.
pub struct SmartInputs<B: SparseAttentionBackend> {
    pub q: Tensor<B, 4>,
    pub k: Tensor<B, 4>,
    pub v: Tensor<B, 4>,
    pub bias: Option<Tensor<B, 3>>,
    /// q, k, v and the bias (empty without one).
    pub values: [Vec<f64>; 4],
}

impl SmartCase {
    pub fn n(&self) -> usize {
        self.canvas.len() + self.text.len
    }

    pub fn config(&self) -> SmartAttentionConfig {
        SmartAttentionConfig::new(self.canvas.dims())
            .with_text(self.text)
            .with_band(BandSpec::Width(self.width))
            .with_sink(self.sink)
            .with_samples(self.samples)
            .with_seed(self.seed)
    }

    pub fn inputs<B: SparseAttentionBackend>(&self, device: &B::Device) -> SmartInputs<B> {
        let mut rng = SeedRng::new(self.data_seed);
        let (d, dv) = self.dims;
        let (b, h, n) = (self.batch, self.heads, self.n());
        let mut make = |c: usize| {
            let v = rng.normals(b * h * n * c);
            (Tensor::<B, 4>::from_data(TensorData::new(v.clone(), [b, h, n, c]), fopts::<B>(device)), v)
        };
        let (q, qv) = make(d);
        let (k, kv) = make(d);
        let (v, vv) = make(dv);
        // The bias in its broadcast shape; the brute force gets it expanded to `[b, h, n]`.
        let (bias, bv) = super::random_bias::<B>(&mut rng, [b, h, n], self.bias, device);
        SmartInputs { q, k, v, bias, values: [qv, kv, vv, bv] }
    }
}

/// The brute force of one call: per (batch, head) row-major the class, the errors
/// `[spatial, temporal]`, and the output and LSE `[b, h, n, dv]`, `[b, h, n]` of the chosen masks.
pub struct BruteSmart {
    pub heads: Vec<HeadClass>,
    pub errors: Vec<[f64; 2]>,
    pub output: Vec<f64>,
    pub lse: Vec<f64>,
    /// The outputs under each class for every head, to check a kernel's output whatever it chose.
    pub by_class: [(Vec<f64>, Vec<f64>); 2],
}

/// Group of each sequence position (`None` = text) under `class`: frames in natural order, runs of
/// `H * W` tokens of the token-major order `(h, w, t)` for temporal heads.
fn groups(canvas: Canvas, text: TextSpec, class: HeadClass) -> Vec<Option<usize>> {
    let [t, h, w] = canvas.dims();
    let natural = brute_tokens(canvas, TileShape::new(1, 1, 1).unwrap(), text, TokenOrder::Natural);
    let mut token_major: Vec<[usize; 3]> = natural.iter().flatten().copied().collect();
    token_major.sort_by_key(|c| (c[1], c[2], c[0]));
    natural
        .iter()
        .map(|c| {
            c.map(|c| match class {
                HeadClass::Spatial => c[0],
                HeadClass::Temporal => token_major.iter().position(|x| *x == c).unwrap() / (h * w),
            })
        })
        .inspect(|g| assert!(g.is_none_or(|g| g < t)))
        .collect()
}

/// `values`: q, k, v and the bias (empty without one), as [`SmartCase::inputs`] makes them.
pub fn brute_smart(case: &SmartCase, values: &[Vec<f64>; 4], rows: &[usize], scale: f64) -> BruteSmart {
    let (b, h, n) = (case.batch, case.heads, case.n());
    let (d, dv) = case.dims;
    let shape = [b, h, n, n, d, dv];
    let attend = |allowed: &dyn Fn(usize, usize) -> bool| {
        brute_attention(&values[0], &values[1], &values[2], &values[3], shape, scale, |_, i, j| allowed(i, j))
    };
    let (dense, _) = attend(&|_, _| true);
    let by_class = [HeadClass::Spatial, HeadClass::Temporal].map(|class| {
        let g = groups(case.canvas, case.text, class);
        attend(&|i, j| match (g[i], g[j]) {
            (Some(a), Some(c)) => a.abs_diff(c) <= case.width || (case.sink && c == 0),
            _ => true,
        })
    });
    let mut heads = vec![];
    let mut errors = vec![];
    let (mut output, mut lse) = (vec![0.0; b * h * n * dv], vec![0.0; b * h * n]);
    for bh in 0..b * h {
        let mse = |out: &[f64]| {
            let mut sum = 0.0;
            for &r in rows {
                for x in 0..dv {
                    let i = (bh * n + r) * dv + x;
                    sum += (out[i] - dense[i]).powi(2);
                }
            }
            sum / (rows.len() * dv) as f64
        };
        let e = [mse(&by_class[0].0), mse(&by_class[1].0)];
        let class = if e[0] < e[1] { 0 } else { 1 };
        heads.push([HeadClass::Spatial, HeadClass::Temporal][class]);
        errors.push(e);
        output[bh * n * dv..(bh + 1) * n * dv].copy_from_slice(&by_class[class].0[bh * n * dv..(bh + 1) * n * dv]);
        lse[bh * n..(bh + 1) * n].copy_from_slice(&by_class[class].1[bh * n..(bh + 1) * n]);
    }
    BruteSmart { heads, errors, output, lse, by_class }
}

impl BruteSmart {
    /// The expected output and LSE for the classes another implementation chose.
    pub fn for_classes(&self, heads: &[HeadClass], n: usize, dv: usize) -> (Vec<f64>, Vec<f64>) {
        let (mut out, mut lse) = (vec![0.0; self.output.len()], vec![0.0; self.lse.len()]);
        for (bh, class) in heads.iter().enumerate() {
            let c = &self.by_class[(*class == HeadClass::Temporal) as usize];
            out[bh * n * dv..(bh + 1) * n * dv].copy_from_slice(&c.0[bh * n * dv..(bh + 1) * n * dv]);
            lse[bh * n..(bh + 1) * n].copy_from_slice(&c.1[bh * n..(bh + 1) * n]);
        }
        (out, lse)
    }

    /// Heads whose brute-force errors are apart by more than `gap` (relative): where a
    /// lower-precision implementation must make the same choice.
    pub fn clear(&self, gap: f64) -> Vec<bool> {
        self.errors.iter().map(|[s, t]| (s - t).abs() > gap * s.max(*t).max(1e-300)).collect()
    }
}

/// Per (batch, head) `[spatial, temporal]` inputs where head 0 of each batch element is
/// clearly spatial and head 1 clearly temporal: queries and keys are one-hot on the frame
/// (head 0) or on the spatial position (head 1), scaled so a match dominates the softmax.
pub fn two_class_inputs(canvas: Canvas, text: usize, batch: usize, seed: u64) -> [Vec<f64>; 3] {
    let [t, h, w] = canvas.dims();
    let d = t.max(h * w);
    let n = text + t * h * w;
    let mut rng = SeedRng::new(seed);
    let (mut q, mut k) = (vec![0.0; batch * 2 * n * d], vec![0.0; batch * 2 * n * d]);
    let big = (12.0 * (d as f64).sqrt()).sqrt();
    for b in 0..batch {
        for head in 0..2 {
            for p in 0..n {
                let base = ((b * 2 + head) * n + p) * d;
                for x in 0..d {
                    q[base + x] = 0.05 * rng.normal();
                    k[base + x] = 0.05 * rng.normal();
                }
                if p >= text {
                    let c = canvas.coords(p - text);
                    let axis = if head == 0 { c[0] } else { c[1] * w + c[2] };
                    q[base + axis] += big;
                    k[base + axis] += big;
                }
            }
        }
    }
    let v = rng.normals(batch * 2 * n * 3);
    [q, k, v]
}

/// Smart attention on a kernel backend (fused and unfused, `Autodiff`, half precision where
/// given) against the brute force. `$half`: the half dtypes the device runs.
#[macro_export]
macro_rules! gpu_smart_suite {
    ($fused:ty, $cube:ty, $device:expr, $half:expr) => {
        mod smart_kernels {
            #[allow(unused_imports)]
            use super::*;
            use burn::backend::Autodiff;
            use burn::tensor::{DType, Tensor, TensorData};
            use dit_attention::smart::SmartAttentionConfig;
            use dit_attention::{Canvas, SparseAttentionBackend, TextSpec};
            #[allow(unused_imports)]
            use proptest::prelude::*;

            use super::common::merge::fopts;
            use super::common::smart::{SmartCase, brute_smart, smart_case, two_class_inputs};
            use super::common::{B64, cases, rel_err, values};

            type Fused = $fused;
            type Cube = $cube;

            fn gpu() -> <Fused as burn::tensor::backend::BackendTypes>::Device {
                $device
            }

            fn cpu() -> burn::backend::ndarray::NdArrayDevice {
                Default::default()
            }

            /// The module on backend `B` (inputs cast to `dtype`) against the brute force: the same
            /// choice wherever the brute force's errors are clearly apart, and the output of the
            /// masks it chose.
            fn check<B: SparseAttentionBackend>(
                case: &SmartCase,
                dtype: Option<DType>,
                tol: f64,
            ) -> Result<(), TestCaseError> {
                let module = case.config().init().unwrap();
                let x = case.inputs::<B>(&gpu_of::<B>());
                let cast = |t: Tensor<B, 4>| match dtype {
                    Some(d) => t.cast(d),
                    None => t,
                };
                let rows = module.sampled_rows(None);
                let brute = brute_smart(case, &x.values, &rows, 1.0 / (case.dims.0 as f64).sqrt());
                let out = module.forward_at(cast(x.q), cast(x.k), cast(x.v), x.bias, None).unwrap();
                let clear = brute.clear(if dtype.is_some() { 0.5 } else { 1e-3 });
                for (i, &got) in out.heads.iter().enumerate() {
                    prop_assert!(
                        !clear[i] || got == brute.heads[i],
                        "head {} chose {:?}, the brute force {:?} ({:?} vs {:?})",
                        i,
                        got,
                        brute.heads[i],
                        out.errors[i],
                        brute.errors[i]
                    );
                }
                let heads = if out.heads.is_empty() { brute.heads.clone() } else { out.heads.clone() };
                let (want, want_lse) = brute.for_classes(&heads, case.n(), case.dims.1);
                let (got, got_lse) = (values(out.output), values(out.lse));
                prop_assert!(rel_err(&got, &want) < tol, "output error {}", rel_err(&got, &want));
                prop_assert!(rel_err(&got_lse, &want_lse) < tol, "lse error {}", rel_err(&got_lse, &want_lse));
                Ok(())
            }

            fn gpu_of<B: SparseAttentionBackend>() -> B::Device {
                // Both backends of the suite share the runtime's default device.
                Default::default()
            }

            /// Random cases with one head size: every new shape compiles kernels (slow on lavapipe).
            fn gpu_case() -> impl Strategy<Value = SmartCase> {
                smart_case().prop_map(|mut c| {
                    c.dims = (8, 4);
                    c
                })
            }

            proptest! {
                #![proptest_config(cases(3))]

                #[test]
                fn fused_smart_attention_matches_the_brute_force(case in gpu_case()) {
                    check::<Fused>(&case, None, 2e-4)?;
                }

                #[test]
                fn unfused_smart_attention_matches_the_brute_force(case in gpu_case()) {
                    check::<Cube>(&case, None, 2e-4)?;
                }
            }

            /// Half precision: the same choices where they are clear, output within half-precision error.
            #[test]
            fn half_precision_smart_attention() {
                let halves: Vec<DType> = $half;
                let mut runner = proptest::test_runner::TestRunner::new(cases(4));
                for dtype in halves {
                    runner.run(&gpu_case(), |case| check::<Fused>(&case, Some(dtype), 3e-2)).unwrap();
                }
            }

            /// Spatial and temporal heads in one call (the per-class head selection, the
            /// token-major gather in the kernel's loads), blocks longer than a kernel tile; and
            /// `Autodiff` differentiates it like the f64 reference backend.
            #[test]
            fn mixed_classes_and_gradients() {
                let canvas = Canvas::new(6, 4, 5).unwrap();
                let (text, batch, d) = (5, 2, 20);
                let n = text + canvas.len();
                let [q, k, v] = two_class_inputs(canvas, text, batch, 9);
                let module = SmartAttentionConfig::new([6, 4, 5])
                    .with_text(TextSpec::before(text))
                    .with_samples(16)
                    .init()
                    .unwrap();
                fn run<B: SparseAttentionBackend>(
                    m: &dit_attention::SmartAttention,
                    x: [&[f64]; 3],
                    shape: [usize; 3],
                    device: &B::Device,
                ) -> (Vec<dit_attention::HeadClass>, Vec<f64>, Vec<f64>) {
                    let [b, n, d] = shape;
                    let t = |v: &[f64], c| {
                        Tensor::<B, 4>::from_data(TensorData::new(v.to_vec(), [b, 2, n, c]), fopts::<B>(device))
                    };
                    let out = m.forward_at(t(x[0], d), t(x[1], d), t(x[2], 3), None, None).unwrap();
                    (out.heads, values(out.output), values(out.lse))
                }
                let (heads, want, want_lse) = run::<B64>(&module, [&q, &k, &v], [batch, n, d], &cpu());
                let (got_heads, got, got_lse) = run::<Fused>(&module, [&q, &k, &v], [batch, n, d], &gpu());
                assert_eq!(got_heads, heads);
                assert!(
                    heads.contains(&dit_attention::HeadClass::Spatial)
                        && heads.contains(&dit_attention::HeadClass::Temporal)
                );
                assert!(rel_err(&got, &want) < 2e-4, "output error {}", rel_err(&got, &want));
                assert!(rel_err(&got_lse, &want_lse) < 2e-4, "lse error {}", rel_err(&got_lse, &want_lse));
                let case = SmartCase {
                    canvas,
                    text: TextSpec::before(text),
                    width: 1,
                    sink: true,
                    samples: 16,
                    seed: 0,
                    batch,
                    heads: 2,
                    dims: (d, 3),
                    bias: None,
                    data_seed: 0,
                };
                let brute = brute_smart(
                    &case,
                    &[q.clone(), k.clone(), v.clone(), vec![]],
                    &module.sampled_rows(None),
                    1.0 / (d as f64).sqrt(),
                );
                assert_eq!(brute.heads, heads);
                assert!(rel_err(&got, &brute.output) < 2e-4);

                fn key_grad<B: SparseAttentionBackend>(
                    m: &dit_attention::SmartAttention,
                    x: [&[f64]; 3],
                    shape: [usize; 3],
                    device: &B::Device,
                ) -> Vec<f64> {
                    let [b, n, d] = shape;
                    let t = |v: &[f64], c| {
                        Tensor::<Autodiff<B>, 4>::from_data(
                            TensorData::new(v.to_vec(), [b, 2, n, c]),
                            fopts::<Autodiff<B>>(device),
                        )
                    };
                    let k = t(x[1], d).require_grad();
                    let out = m.forward(t(x[0], d), k.clone(), t(x[2], 3)).unwrap();
                    let grads = out.powi_scalar(2).sum().backward();
                    values(k.grad(&grads).expect("keys have a gradient"))
                }
                let want = key_grad::<B64>(&module, [&q, &k, &v], [batch, n, d], &cpu());
                let got = key_grad::<Fused>(&module, [&q, &k, &v], [batch, n, d], &gpu());
                assert!(want.iter().any(|x| *x != 0.0));
                // The gradient runs through burn matmuls, TF32 on CUDA (about 1e-3 relative).
                assert!(rel_err(&got, &want) < 1e-2, "key gradient error {}", rel_err(&got, &want));
            }
        }
    };
}
