//! Reference attention built from burn tensor ops only, generic over `B: Backend`: the oracles of
//! every fast kernel. Clarity first, but never quadratic in memory except where asked (dense).
//!
//! All functions take `[batch, heads, seq, head_dim]` tensors and return the output and the
//! per-row log-sum-exp (natural log, of the scaled and biased scores). A row with no allowed key
//! yields an output of 0 and an LSE of `-inf`.

mod backward;
mod block_sparse;
mod dense;
mod merge;
mod sta;

pub use backward::{AttentionGrads, attention_backward_reference};
pub use block_sparse::block_sparse_attention_reference;
pub use dense::dense_attention_reference;
pub use merge::merge_attention;
pub use sta::sta_attention_reference;

use burn::tensor::{Tensor, backend::Backend};

use crate::error::{DitAttentionError, Result};

/// Output of an attention call.
#[derive(Debug, Clone)]
pub struct AttentionOutput<B: Backend> {
    /// `[batch, heads, seq_q, value_dim]`.
    pub output: Tensor<B, 4>,
    /// `[batch, heads, seq_q]`: log-sum-exp of each row's scores; `-inf` for a row with no key.
    pub lse: Tensor<B, 3>,
}

/// The score scales the kernels take: positive (they take a row's maximum on unscaled scores,
/// the scaled maximum only for a positive scale) and moderate (a masked score is `-1e30 * scale`,
/// which must stay finite in f32 and far below every real score).
pub const SCALE_RANGE: std::ops::RangeInclusive<f64> = 1e-10..=1e8;

/// Checks a score scale against [`SCALE_RANGE`], naming the value.
pub(crate) fn check_scale(scale: f64) -> Result<()> {
    if SCALE_RANGE.contains(&scale) {
        Ok(())
    } else {
        Err(DitAttentionError::Invalid(format!(
            "attention scale must be finite and positive, between {:e} and {:e}; got {scale}",
            SCALE_RANGE.start(),
            SCALE_RANGE.end()
        )))
    }
}

/// Options shared by the attention functions.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct AttentionOptions {
    /// Score scale; `None` = `1 / sqrt(head_dim)`.
    pub scale: Option<f64>,
}

impl AttentionOptions {
    /// Options with an explicit scale.
    pub fn with_scale(scale: f64) -> Self {
        Self { scale: Some(scale) }
    }

    /// Checks the options: an explicit scale must lie in [`SCALE_RANGE`].
    pub fn validate(&self) -> Result<()> {
        self.scale.map_or(Ok(()), check_scale)
    }

    pub(crate) fn scale_for(&self, head_dim: usize) -> f64 {
        self.scale.unwrap_or(1.0 / (head_dim as f64).sqrt())
    }
}

/// Checks `q [b, h, nq, d]`, `k [b, h, nk, d]`, `v [b, h, nk, dv]` and a per-key bias
/// `[b or 1, h or 1, nk]`.
pub(crate) fn check_qkv<B: Backend>(
    q: &Tensor<B, 4>,
    k: &Tensor<B, 4>,
    v: &Tensor<B, 4>,
    bias: Option<&Tensor<B, 3>>,
) -> Result<()> {
    let (qd, kd, vd) = (q.dims(), k.dims(), v.dims());
    let shape = |what: &str, expected: Vec<usize>, got: [usize; 4]| DitAttentionError::Shape {
        what: what.to_string(),
        expected,
        got: got.to_vec(),
    };
    for (name, d) in [("query", qd), ("key", kd), ("value", vd)] {
        if d.contains(&0) {
            return Err(DitAttentionError::Invalid(format!("{name} has an empty dimension: shape {d:?}")));
        }
    }
    if kd[0] != qd[0] || kd[1] != qd[1] || kd[3] != qd[3] {
        return Err(shape("key [batch, heads, seq_k, head_dim] against query", vec![qd[0], qd[1], kd[2], qd[3]], kd));
    }
    if vd[0] != kd[0] || vd[1] != kd[1] || vd[2] != kd[2] {
        return Err(shape("value [batch, heads, seq_k, value_dim] against key", vec![kd[0], kd[1], kd[2], vd[3]], vd));
    }
    if let Some(b) = bias {
        let bd = b.dims();
        if (bd[0] != 1 && bd[0] != qd[0]) || (bd[1] != 1 && bd[1] != qd[1]) || bd[2] != kd[2] {
            return Err(DitAttentionError::Shape {
                what: "per-key bias [batch or 1, heads or 1, seq_k]".into(),
                expected: vec![qd[0], qd[1], kd[2]],
                got: bd.to_vec(),
            });
        }
    }
    Ok(())
}
