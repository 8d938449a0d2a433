//! 3D rotary position embedding: the head dim is cut into a `t`, an `h` and a `w` part, each rotated
//! by its token's canvas coordinate (pairs of adjacent features, frequencies `theta^(-2i/d_axis)`).
//! Text tokens are not rotated (they have no place on the canvas).

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};

use crate::canvas::{TextPlacement, TextSpec};
use crate::error::DitAttentionError;

/// Splits `head_dim` into even `[t, h, w]` rotary widths: a quarter (rounded down to even) for
/// time, the rest shared by height and width (the larger half to height).
pub fn default_rope_dims(head_dim: usize) -> [usize; 3] {
    let t = (head_dim / 4) & !1;
    let rest = head_dim - t;
    let w = (rest / 2) & !1;
    [t, rest - w, w]
}

/// Checks rotary widths against the head dim: every part even, the parts summing to `head_dim`.
pub fn check_rope_dims(dims: [usize; 3], head_dim: usize) -> crate::Result<()> {
    if dims.iter().any(|d| d % 2 != 0) || dims.iter().sum::<usize>() != head_dim {
        return Err(DitAttentionError::Invalid(format!(
            "rotary widths {dims:?} must be even and sum to the head dim {head_dim}"
        )));
    }
    Ok(())
}

/// Cosines and sines of every position of a joint sequence, built once per forward and shared by
/// the layers.
#[derive(Debug, Clone)]
pub struct Rope3d<B: Backend> {
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
}

impl<B: Backend> Rope3d<B> {
    /// Tables for a `canvas` of video tokens in natural order plus `text` tokens.
    ///
    /// # Shapes
    /// - tables `[n, head_dim]`, `n` = canvas tokens + text tokens
    pub fn new(
        canvas: [usize; 3],
        text: TextSpec,
        dims: [usize; 3],
        theta: f64,
        device: &B::Device,
        dtype: DType,
    ) -> crate::Result<Self> {
        let head_dim: usize = dims.iter().sum();
        check_rope_dims(dims, head_dim)?;
        if !(theta.is_finite() && theta > 1.0) {
            return Err(DitAttentionError::Invalid(format!("the rotary base must exceed 1, got {theta}")));
        }
        let video = canvas.iter().product::<usize>();
        let n = video + text.len;
        let video_start = match text.placement {
            TextPlacement::Before => text.len,
            TextPlacement::After => 0,
        };
        // Text rows stay cos 1, sin 0.
        let mut cos = vec![1f64; n * head_dim];
        let mut sin = vec![0f64; n * head_dim];
        // Frequencies of each feature pair, with the axis it reads.
        let mut pairs = Vec::with_capacity(head_dim / 2);
        for (axis, &d) in dims.iter().enumerate() {
            for i in 0..d / 2 {
                pairs.push((axis, theta.powf(-2.0 * i as f64 / d as f64)));
            }
        }
        let [_, nh, nw] = canvas;
        for token in 0..video {
            let coord = [token / (nh * nw), (token / nw) % nh, token % nw];
            let row = (video_start + token) * head_dim;
            for (p, &(axis, freq)) in pairs.iter().enumerate() {
                let angle = coord[axis] as f64 * freq;
                let (s, c) = angle.sin_cos();
                for j in [2 * p, 2 * p + 1] {
                    cos[row + j] = c;
                    sin[row + j] = s;
                }
            }
        }
        let table = |v: Vec<f64>| {
            Tensor::<B, 2>::from_data(TensorData::new(v, [n, head_dim]).convert_dtype(dtype), (device, dtype))
        };
        Ok(Self { cos: table(cos), sin: table(sin) })
    }

    /// Rotates queries or keys.
    ///
    /// # Shapes
    /// - x `[b, heads, n, head_dim]`, output the same
    pub fn apply(&self, x: Tensor<B, 4>) -> crate::Result<Tensor<B, 4>> {
        let [b, h, n, d] = x.dims();
        if [n, d] != self.cos.dims() {
            return Err(DitAttentionError::Invalid(format!(
                "rotary tables are built for {:?} (tokens, head dim) but the tensor is {:?}",
                self.cos.dims(),
                x.dims()
            )));
        }
        // Pairs (x0, x1) -> (x0 cos - x1 sin, x1 cos + x0 sin).
        let pairs = x.clone().reshape([b, h, n, d / 2, 2]);
        let x0 = pairs.clone().narrow(4, 0, 1);
        let x1 = pairs.narrow(4, 1, 1);
        let rotated = Tensor::cat(vec![x1.neg(), x0], 4).reshape([b, h, n, d]);
        let cos = self.cos.clone().unsqueeze::<4>();
        let sin = self.sin.clone().unsqueeze::<4>();
        Ok(x * cos + rotated * sin)
    }
}
