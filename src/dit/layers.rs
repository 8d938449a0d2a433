//! The small pieces of a DiT block: affine-free layer norm, adaLN modulation, per-head RMS norm,
//! sinusoidal timestep features, and the linear layer constructor (zero or default init).

use burn::module::{Initializer, Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

/// A linear layer, all zeros when `zero` (adaLN-Zero's modulation and output layers).
pub(crate) fn linear<B: Backend>(input: usize, output: usize, zero: bool, device: &B::Device) -> Linear<B> {
    let config = LinearConfig::new(input, output);
    let config = if zero { config.with_initializer(Initializer::Zeros) } else { config };
    config.init(device)
}

/// Layer norm over the last dim without scale or shift (adaLN supplies them).
pub(crate) fn layer_norm<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let mean = x.clone().mean_dim(D - 1);
    let centred = x - mean;
    let var = centred.clone().square().mean_dim(D - 1);
    centred / (var + 1e-6).sqrt()
}

/// `x * (1 + scale) + shift`, the modulation broadcast over the tokens.
///
/// # Shapes
/// - x `[b, n, c]`, shift and scale `[b, c]`
pub(crate) fn modulate<B: Backend>(x: Tensor<B, 3>, shift: Tensor<B, 2>, scale: Tensor<B, 2>) -> Tensor<B, 3> {
    x * (scale.unsqueeze_dim::<3>(1) + 1.0) + shift.unsqueeze_dim::<3>(1)
}

/// RMS norm over the head dim with a learned gain, in the input's dtype.
#[derive(Module, Debug)]
pub(crate) struct HeadNorm<B: Backend> {
    gain: Param<Tensor<B, 1>>,
}

impl<B: Backend> HeadNorm<B> {
    pub(crate) fn new(dim: usize, device: &B::Device) -> Self {
        Self { gain: Param::from_tensor(Tensor::ones([dim], device)) }
    }

    /// # Shapes
    /// - x `[b, h, n, d]`, output the same
    pub(crate) fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let rms = (x.clone().square().mean_dim(3) + 1e-6).sqrt();
        x / rms * self.gain.val().unsqueeze::<4>()
    }
}

/// GELU with the tanh approximation (as HunyuanVideo's MLP), from plain ops: burn 0.21's `gelu`
/// is the erf form but differentiates the tanh form, which made the model's gradients inexact.
pub(crate) fn gelu_tanh<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let inner = (x.clone() + x.clone().powi_scalar(3) * 0.044715) * (2.0 / std::f64::consts::PI).sqrt();
    x * (inner.tanh() + 1.0) * 0.5
}

/// Sinusoidal features of timesteps in `[0, 1]` (scaled by 1000, as DiTs trained on 1000 steps):
/// `dim / 2` cosines then `dim / 2` sines at angular frequencies from 1 down to 1/10000.
///
/// # Shapes
/// - t `[b]`, output `[b, dim]`
pub(crate) fn timestep_features<B: Backend>(t: Tensor<B, 1>, dim: usize) -> Tensor<B, 2> {
    let half = dim / 2;
    let freqs: Vec<f64> = (0..half).map(|i| (-(10000f64.ln()) * i as f64 / half as f64).exp()).collect();
    let freqs =
        Tensor::<B, 1>::from_data(TensorData::new(freqs, [half]).convert_dtype(t.dtype()), (&t.device(), t.dtype()));
    let angles = (t * 1000.0).unsqueeze_dim::<2>(1) * freqs.unsqueeze::<2>();
    Tensor::cat(vec![angles.clone().cos(), angles.sin()], 1)
}
