//! Gradient checks of the engine through `Autodiff`: STA (the analytic map, natural order through
//! the fused gather) and local patterns (index lists with partial blocks) against the f64
//! brute-force chain rule, with the loss reading the output, the LSE, or both.
#![allow(dead_code)]

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{DType, Tensor};
use dit_attention::{AttentionOutput, SparseAttentionBackend};
use proptest::prelude::*;

use super::engine::{Inputs, PatternCase, StaCase, eps, inputs, tensor_in};
use super::{SeedRng, brute_attention_grads, brute_tokens, pattern_allows, values};

/// Which forward outputs the loss reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    Output,
    Lse,
    Both,
}

pub fn upstream() -> impl Strategy<Value = Upstream> {
    prop_oneof![Just(Upstream::Output), Just(Upstream::Lse), Just(Upstream::Both)]
}

/// Gradient bound relative to the largest exact gradient, or to 1 where every exact gradient is
/// smaller (e.g. a query with one key has dq = 0 exactly, and a relative error would divide
/// rounding noise by ~0): f32 math throughout, so a few ulps of the accumulated sums in f32; in
/// half precision the inputs, the saved output and the gradients are rounded to the dtype.
fn bound(dtype: DType) -> f64 {
    match dtype {
        DType::F64 => 1e-10,
        DType::F32 => 1e-4,
        _ => 16.0 * eps(dtype),
    }
}

/// Runs `forward` on tracked inputs, backpropagates `sum(out * W) + sum(lse * w)` (random `W`,
/// `w`, per `up`), and checks every gradient against the brute-force chain rule over `allowed`.
#[allow(clippy::too_many_arguments)]
fn check<A: AutodiffBackend + SparseAttentionBackend>(
    shape: [usize; 5],
    seed: u64,
    with_bias: bool,
    up: Upstream,
    device: &A::Device,
    dtype: DType,
    forward: impl Fn(&Inputs<A>) -> Result<AttentionOutput<A>, String>,
    allowed: impl Fn(usize, usize, usize) -> bool + Copy,
) -> Result<(), TestCaseError> {
    let [b, h, n, d, dv] = shape;
    let x = inputs::<A>(seed, shape, with_bias, device, dtype);
    let x = Inputs {
        q: x.q.require_grad(),
        k: x.k.require_grad(),
        v: x.v.require_grad(),
        bias: x.bias.map(|t| t.require_grad()),
        ..x
    };
    let got = forward(&x).map_err(TestCaseError::fail)?;
    let mut rng = SeedRng::new(seed ^ 0xD0);
    let (w_out, w_outv) = tensor_in::<A, 4>(rng.normals(b * h * n * dv), [b, h, n, dv], device, dtype);
    let (w_lse, w_lsev) = tensor_in::<A, 3>(rng.normals(b * h * n), [b, h, n], device, DType::F32);
    let lse = got.lse.cast(DType::F32);
    // Rows with no key have lse = -inf: no gradient flows there, keep the loss finite.
    let lse = lse.clone().mask_fill(lse.equal_elem(f64::NEG_INFINITY), 0.0);
    let (loss, d_out, d_lse) = match up {
        Upstream::Output => ((got.output * w_out).sum().cast(DType::F32), w_outv, vec![0.0; b * h * n]),
        Upstream::Lse => ((lse * w_lse).sum(), vec![0.0; b * h * n * dv], w_lsev),
        Upstream::Both => ((got.output * w_out).sum().cast(DType::F32) + (lse * w_lse).sum(), w_outv, w_lsev),
    };
    let g = loss.backward();
    let grad = |t: &Tensor<A, 4>| t.grad(&g).map(values).unwrap_or_else(|| vec![0.0; t.dims().iter().product()]);
    let mut got = vec![grad(&x.q), grad(&x.k), grad(&x.v)];
    if let Some(bias) = &x.bias {
        got.push(bias.grad(&g).map(values).unwrap_or_else(|| vec![0.0; b * h * n]));
    }
    let scale = 1.0 / (d as f64).sqrt();
    let want =
        brute_attention_grads(&x.qv, &x.kv, &x.vv, &x.biasv, [b, h, n, n, d, dv], scale, allowed, &d_out, &d_lse);
    for (i, name) in ["q", "k", "v", "bias"].iter().enumerate().take(got.len()) {
        prop_assert!(got[i].iter().all(|x| x.is_finite()), "gradient of {} has a non-finite element", name);
        let scale = want[i].iter().fold(1.0f64, |m, x| m.max(x.abs()));
        let err = got[i].iter().zip(&want[i]).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max) / scale;
        prop_assert!(
            err <= bound(dtype),
            "gradient of {}: relative error {} > {} ({:?}, {:?})",
            name,
            err,
            bound(dtype),
            dtype,
            up
        );
    }
    Ok(())
}

/// STA through `sliding_tile_attention` (analytic block map; natural order gathers in the loads).
pub fn check_sta_gradients<A: AutodiffBackend + SparseAttentionBackend>(
    c: &StaCase,
    up: Upstream,
    device: &A::Device,
    dtype: DType,
) -> Result<(), TestCaseError> {
    let shape = [c.batch, c.heads, c.seq_len(), c.head_dim, c.value_dim];
    let toks = brute_tokens(c.canvas, c.tile, c.text, c.order);
    let spec = c.spec();
    let allowed = |h: usize, i: usize, j: usize| pattern_allows(&spec, c.canvas, c.tile, h, toks[i], toks[j]);
    let forward = |x: &Inputs<A>| {
        dit_attention::sliding_tile_attention(x.q.clone(), x.k.clone(), x.v.clone(), &c.config(), x.bias.clone())
            .map_err(|e| e.to_string())
    };
    check::<A>(shape, c.seed, c.bias, up, device, dtype, forward, allowed)
}

/// A local pattern through `BlockSparseAttention` (index lists, partial blocks masked).
pub fn check_pattern_gradients<A: AutodiffBackend + SparseAttentionBackend>(
    c: &PatternCase,
    up: Upstream,
    device: &A::Device,
    dtype: DType,
) -> Result<(), TestCaseError> {
    use dit_attention::BlockSparseAttentionConfig;
    let shape = [1, c.heads, c.canvas.len() + c.text.len, c.head_dim, c.value_dim];
    let module = BlockSparseAttentionConfig::new(c.canvas.dims(), c.tile.dims(), c.spec.clone())
        .with_text(c.text)
        .with_order(c.order)
        .with_partition(c.partition)
        .init()
        .map_err(|e| TestCaseError::fail(format!("{e}")))?;
    let toks = brute_tokens(c.canvas, c.tile, c.text, c.order);
    let allowed = |h: usize, i: usize, j: usize| pattern_allows(&c.spec, c.canvas, c.tile, h, toks[i], toks[j]);
    let forward = |x: &Inputs<A>| {
        module.forward_with(x.q.clone(), x.k.clone(), x.v.clone(), x.bias.clone()).map_err(|e| e.to_string())
    };
    check::<A>(shape, c.seed, c.bias, up, device, dtype, forward, allowed)
}
