//! Test helpers: a seeded generator, random tensors, and brute-force oracles written straight
//! from the spec, independent of the crate's geometry code.
#![allow(dead_code)]

pub mod backward;
pub mod combined;
pub mod dynamic;
pub mod engine;
pub mod matmul;
pub mod merge;
pub mod smart;
pub mod strategies;

use burn::tensor::{Tensor, TensorCreationOptions, TensorData, backend::Backend};
use dit_attention::{Canvas, TextPlacement, TextSpec, TileShape, TokenOrder};

/// The backend tests run on: f64 ndarray, so references are checked at high precision.
pub type B64 = burn::backend::NdArray<f64>;
/// The default f32 CPU backend.
pub type B32 = burn::backend::NdArray<f32>;

#[cfg(not(feature = "ndarray"))]
compile_error!("the tests need the default `ndarray` feature (their oracles run in f64 on it)");

/// splitmix64: tiny, seeded, good enough for test data.
pub struct SeedRng(u64);

impl SeedRng {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u = self.uniform().max(1e-300);
        let v = self.uniform();
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
    pub fn normals(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| self.normal()).collect()
    }
}

/// Creation options in the backend's own float type. burn keeps one default dtype per device,
/// shared by `NdArray<f32>` and `NdArray<f64>`, so tests never rely on it.
pub fn opts<BK: Backend>() -> TensorCreationOptions<BK> {
    TensorCreationOptions::float()
}

/// A random tensor (never zeros) and its values.
pub fn randn<BK: Backend, const D: usize>(rng: &mut SeedRng, shape: [usize; D]) -> (Tensor<BK, D>, Vec<f64>) {
    let v = rng.normals(shape.iter().product());
    (Tensor::from_data(TensorData::new(v.clone(), shape), opts::<BK>()), v)
}

pub fn values<BK: Backend, const D: usize>(t: Tensor<BK, D>) -> Vec<f64> {
    t.into_data().iter::<f64>().collect()
}

/// Largest |a - b| relative to the largest |b|.
pub fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0.0f64, |m, x| m.max(x.abs())).max(1e-30);
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max) / scale
}

/// Brute-force attention in f64 over an `allowed(q, k)` predicate: (output, lse), row-major
/// `[b, h, n, dv]` and `[b, h, n]`. `bias` is `[b, h, nk]` or empty.
#[allow(clippy::too_many_arguments)]
pub fn brute_attention(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    bias: &[f64],
    [b, h, nq, nk, d, dv]: [usize; 6],
    scale: f64,
    allowed: impl Fn(usize, usize, usize) -> bool,
) -> (Vec<f64>, Vec<f64>) {
    let mut out = vec![0.0; b * h * nq * dv];
    let mut lse = vec![f64::NEG_INFINITY; b * h * nq];
    for bh in 0..b * h {
        let head = bh % h;
        for i in 0..nq {
            let mut s = vec![f64::NEG_INFINITY; nk];
            for (j, sj) in s.iter_mut().enumerate() {
                if allowed(head, i, j) {
                    let dot: f64 = (0..d).map(|x| q[(bh * nq + i) * d + x] * k[(bh * nk + j) * d + x]).sum();
                    *sj = dot * scale + if bias.is_empty() { 0.0 } else { bias[bh * nk + j] };
                }
            }
            let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            if m == f64::NEG_INFINITY {
                continue;
            }
            let p: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
            let z: f64 = p.iter().sum();
            lse[bh * nq + i] = m + z.ln();
            for x in 0..dv {
                out[(bh * nq + i) * dv + x] = (0..nk).map(|j| p[j] * v[(bh * nk + j) * dv + x]).sum::<f64>() / z;
            }
        }
    }
    (out, lse)
}

/// Brute-force gradients in f64 of `(out, lse)` = attention over `allowed`, for upstream
/// gradients `d_out [b, h, nq, dv]` and `d_lse [b, h, nq]`: `(dq, dk, dv, dbias)`, the last
/// `[b, h, nk]` (empty without a bias). Written from the chain rule, pair by pair.
#[allow(clippy::too_many_arguments)]
pub fn brute_attention_grads(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    bias: &[f64],
    [b, h, nq, nk, d, dv]: [usize; 6],
    scale: f64,
    allowed: impl Fn(usize, usize, usize) -> bool,
    d_out: &[f64],
    d_lse: &[f64],
) -> [Vec<f64>; 4] {
    let (mut gq, mut gk, mut gv) = (vec![0.0; b * h * nq * d], vec![0.0; b * h * nk * d], vec![0.0; b * h * nk * dv]);
    let mut gb = vec![0.0; if bias.is_empty() { 0 } else { b * h * nk }];
    let (out, lse) = brute_attention(q, k, v, bias, [b, h, nq, nk, d, dv], scale, &allowed);
    for bh in 0..b * h {
        for i in 0..nq {
            let l = lse[bh * nq + i];
            if l == f64::NEG_INFINITY {
                continue;
            }
            let row = |a: &[f64], w: usize, r: usize| (r * w..(r + 1) * w).map(|x| a[x]).collect::<Vec<f64>>();
            let (qi, gi, oi) = (row(q, d, bh * nq + i), row(d_out, dv, bh * nq + i), row(&out, dv, bh * nq + i));
            // d lse / d s_j = p_j; d out / d s_j = p_j (v_j - out).
            let centre: f64 = (0..dv).map(|x| gi[x] * oi[x]).sum();
            for j in 0..nk {
                if !allowed(bh % h, i, j) {
                    continue;
                }
                let (kj, vj) = (row(k, d, bh * nk + j), row(v, dv, bh * nk + j));
                let s = scale * (0..d).map(|x| qi[x] * kj[x]).sum::<f64>()
                    + if bias.is_empty() { 0.0 } else { bias[bh * nk + j] };
                let p = (s - l).exp();
                let dp: f64 = (0..dv).map(|x| gi[x] * vj[x]).sum();
                let ds = p * (dp - centre) + p * d_lse[bh * nq + i];
                for x in 0..d {
                    gq[(bh * nq + i) * d + x] += scale * ds * kj[x];
                    gk[(bh * nk + j) * d + x] += scale * ds * qi[x];
                }
                for x in 0..dv {
                    gv[(bh * nk + j) * dv + x] += p * gi[x];
                }
                if !gb.is_empty() {
                    gb[bh * nk + j] += ds;
                }
            }
        }
    }
    [gq, gk, gv, gb]
}

/// Tile-major enumeration by sorting canvas coordinates by (tile coordinates, local coordinates).
pub fn brute_tile_major(canvas: Canvas, tile: TileShape) -> Vec<[usize; 3]> {
    let (c, t) = (canvas.dims(), tile.dims());
    let mut all: Vec<[usize; 3]> = Vec::new();
    for a in 0..c[0] {
        for b in 0..c[1] {
            for x in 0..c[2] {
                all.push([a, b, x]);
            }
        }
    }
    all.sort_by_key(|p| ([0, 1, 2].map(|d| p[d] / t[d]), *p));
    all
}

/// What sits at each sequence position: `None` = text, `Some(coords)` = video.
pub fn brute_tokens(canvas: Canvas, tile: TileShape, text: TextSpec, order: TokenOrder) -> Vec<Option<[usize; 3]>> {
    let video: Vec<Option<[usize; 3]>> = match order {
        TokenOrder::Natural => (0..canvas.len()).map(|i| Some(canvas.coords(i))).collect(),
        TokenOrder::TileMajor => brute_tile_major(canvas, tile).into_iter().map(Some).collect(),
    };
    let text_part = vec![None; text.len];
    match text.placement {
        TextPlacement::Before => text_part.into_iter().chain(video).collect(),
        TextPlacement::After => video.into_iter().chain(text_part).collect(),
    }
}

/// The spec's STA predicate on canvas coordinates (spec section 2).
pub fn sta_allows(canvas: Canvas, tile: TileShape, window: [usize; 3], q: [usize; 3], k: [usize; 3]) -> bool {
    (0..3).all(|d| {
        let n = canvas.dims()[d].div_ceil(tile.dims()[d]);
        let kd = window[d];
        if kd >= n {
            return true;
        }
        let (qt, kt) = (q[d] / tile.dims()[d], k[d] / tile.dims()[d]);
        let centre = qt.clamp(kd / 2, n - 1 - kd / 2);
        centre.abs_diff(kt) <= kd / 2
    })
}

/// The spec's NATTEN predicate (spec section 3).
pub fn natten_allows(canvas: Canvas, window: [usize; 3], q: [usize; 3], k: [usize; 3]) -> bool {
    (0..3).all(|d| {
        let (l, w) = (canvas.dims()[d], window[d]);
        let c = q[d].clamp(w / 2, l - 1 - w / 2);
        c.abs_diff(k[d]) <= w / 2
    })
}

/// The spec's Swin predicate.
pub fn swin_allows(window: [usize; 3], shift: [usize; 3], q: [usize; 3], k: [usize; 3]) -> bool {
    (0..3).all(|d| (q[d] + shift[d]) / window[d] == (k[d] + shift[d]) / window[d])
}

/// The spec's CLEAR predicate.
pub fn clear_allows(radius: f64, q: [usize; 3], k: [usize; 3]) -> bool {
    // In squares, as the spec's strict inequality reads for non-negative numbers.
    let d2: usize = (0..3).map(|d| q[d].abs_diff(k[d]).pow(2)).sum();
    (d2 as f64) < radius * radius
}

/// proptest settings: a fixed number of fresh cases, no regression files.
pub fn cases(n: u32) -> proptest::test_runner::Config {
    proptest::test_runner::Config { cases: n, failure_persistence: None, ..Default::default() }
}

/// The spec's predicate of `spec` on sequence positions (`None` = text: always allowed).
pub fn pattern_allows(
    spec: &dit_attention::PatternSpec,
    canvas: Canvas,
    tile: TileShape,
    head: usize,
    q: Option<[usize; 3]>,
    k: Option<[usize; 3]>,
) -> bool {
    use dit_attention::PatternSpec;
    let (Some(q), Some(k)) = (q, k) else { return true };
    match spec {
        PatternSpec::Sta { windows } => {
            sta_allows(canvas, tile, windows[if windows.len() == 1 { 0 } else { head }], q, k)
        }
        PatternSpec::Natten { window } | PatternSpec::TiledNatten { window } => natten_allows(canvas, *window, q, k),
        PatternSpec::Swin { window, shift } => swin_allows(*window, *shift, q, k),
        PatternSpec::Clear { radius } => clear_allows(*radius, q, k),
    }
}

/// A random per-key bias in its broadcast shape `[b or 1, h or 1, n]` (`Some([per batch, per
/// head])`), and its values expanded to `[b, h, n]` for a brute force (empty without a bias).
pub fn random_bias<B: dit_attention::SparseAttentionBackend>(
    rng: &mut SeedRng,
    [b, h, n]: [usize; 3],
    shape: Option<[bool; 2]>,
    device: &B::Device,
) -> (Option<Tensor<B, 3>>, Vec<f64>) {
    let Some([per_batch, per_head]) = shape else {
        return (None, vec![]);
    };
    let (bb, hb) = (if per_batch { b } else { 1 }, if per_head { h } else { 1 });
    let small = rng.normals(bb * hb * n);
    let t = Tensor::<B, 3>::from_data(TensorData::new(small.clone(), [bb, hb, n]), merge::fopts::<B>(device));
    let mut full = Vec::with_capacity(b * h * n);
    for bi in 0..b {
        for hi in 0..h {
            let row = (bi % bb) * hb + hi % hb;
            full.extend_from_slice(&small[row * n..(row + 1) * n]);
        }
    }
    (Some(t), full)
}
