//! Rectified-flow training batches of the synthetic clips (shared by the training examples).

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use super::shapes::{CHANNELS, Prompt, Rng, VOCAB, WORDS, render};

/// A batch: clips, their text features, timesteps in (0, 1), noise; returns `(x_t, t, text, v)`
/// with `x_t = (1 - t) x0 + t eps` and the velocity target `v = eps - x0`.
pub fn batch<B: Backend>(
    rng: &mut Rng,
    n: usize,
    frames: usize,
    size: usize,
    device: &B::Device,
) -> (Tensor<B, 5>, Tensor<B, 1>, Tensor<B, 3>, Tensor<B, 5>) {
    let pixels = CHANNELS * frames * size * size;
    let (mut x0, mut text, mut ts, mut noise) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        let prompt = Prompt::nth(rng.next_u64() as usize);
        x0.extend(render(prompt, rng.next_u64(), frames, size));
        text.extend(prompt.features());
        // Logit-normal timesteps: more weight on the middle of the path.
        ts.push((1.0 / (1.0 + (-rng.normal()).exp())) as f32);
        noise.extend((0..pixels).map(|_| rng.normal() as f32));
    }
    let shape = [n, CHANNELS, frames, size, size];
    let x0 = Tensor::<B, 5>::from_data(TensorData::new(x0, shape), device);
    let eps = Tensor::<B, 5>::from_data(TensorData::new(noise, shape), device);
    let t = Tensor::<B, 1>::from_data(TensorData::new(ts, [n]), device);
    let tb = t.clone().reshape([n, 1, 1, 1, 1]);
    let xt = x0.clone() * (-tb.clone() + 1.0) + eps.clone() * tb;
    let text = Tensor::<B, 3>::from_data(TensorData::new(text, [n, WORDS, VOCAB]), device);
    (xt, t, text, eps - x0)
}
