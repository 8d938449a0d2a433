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
            let windows = prop::collection::vec(odd_window([n[0] + 1, n[1] + 1, n[2] + 1]), if per_head { heads } else { 1 });
            let dims = prop::sample::select(vec![(64usize, 64usize), (128, 128), (64, 3)]);
            (Just((canvas, tile, text, tile_major, batch, heads, seed)), windows, dims, any::<bool>())
        })
        .prop_map(|((canvas, tile, text, tile_major, batch, heads, seed), windows, (head_dim, value_dim), bias)| StaCase {
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
        })
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
                    let dot: f32 = (0..d).map(|x| q[(bh * n + i) * d + x] as f32 * k[(bh * n + j) * d + x] as f32).sum();
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
        .map(|(x, y)| if x.is_finite() && y.is_finite() { (x - y).abs() } else if x == y { 0.0 } else { f64::INFINITY })
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
pub fn check_sta<BK: SparseAttentionBackend>(c: &StaCase, device: &BK::Device, dtype: DType) -> Result<(), TestCaseError> {
    let n = c.seq_len();
    let shape = [c.batch, c.heads, n, c.head_dim, c.value_dim];
    let x = inputs::<BK>(c.seed, shape, c.bias, device, dtype);
    let scale = 1.0 / (c.head_dim as f64).sqrt();
    let got: AttentionOutput<BK> = dit_attention::sliding_tile_attention(x.q, x.k, x.v, &c.config(), x.bias)
        .map_err(|e| TestCaseError::fail(format!("{e}")))?;
    let (out, lse) = (values(got.output), values(got.lse));
    prop_assert_eq!(out.len(), c.batch * c.heads * n * c.value_dim);
    prop_assert!(out.iter().all(|x| x.is_finite()), "every output element written and finite");

    let toks = brute_tokens(c.canvas, c.tile, c.text, c.order);
    let spec = c.spec();
    let allowed = |h: usize, i: usize, j: usize| pattern_allows(&spec, c.canvas, c.tile, h, toks[i], toks[j]);
    let (want_o, want_l) =
        brute_attention(&x.qv, &x.kv, &x.vv, &x.biasv, [c.batch, c.heads, n, n, c.head_dim, c.value_dim], scale, allowed);
    let (low_o, low_l) = plain_attention(&x.qv, &x.kv, &x.vv, &x.biasv, shape, scale, dtype, allowed);
    let bound_o = 8.0 * max_abs_err(&low_o, &want_o).max(4.0 * eps(dtype));
    let bound_l = 8.0 * max_abs_err(&low_l, &want_l).max(16.0 * eps(dtype));
    let (eo, el) = (max_abs_err(&out, &want_o), max_abs_err(&lse, &want_l));
    prop_assert!(eo <= bound_o, "output error {} > bound {} ({:?})", eo, bound_o, dtype);
    prop_assert!(el <= bound_l, "lse error {} > bound {} ({:?})", el, bound_l, dtype);
    Ok(())
}

/// The block partition STA uses (for tests that build the map themselves).
pub const STA_PARTITION: BlockPartition = BlockPartition::PerTile;
