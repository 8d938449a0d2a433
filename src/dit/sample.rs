//! Rectified-flow sampling, the convention the host DiT is trained on: `x_t = (1 - t) x0 + t eps`,
//! the model predicts the velocity `v = eps - x0`, and Euler steps run `t` from 1 (noise) to 0.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use crate::error::DitAttentionError;

/// Euler integration of `dx/dt = velocity(x, t, step)` from `t = 1` (`x = noise`) down to `t = 0`
/// over `steps` equal steps; `velocity` is called at `t = 1, 1 - 1/steps, ..., 1/steps` (never
/// at 0), with the step index for schedules.
///
/// # Shapes
/// - noise `[b, c, T, H, W]`, velocity's output the same, output the same
pub fn euler_sample<B: Backend>(
    noise: Tensor<B, 5>,
    steps: usize,
    mut velocity: impl FnMut(Tensor<B, 5>, f64, usize) -> crate::Result<Tensor<B, 5>>,
) -> crate::Result<Tensor<B, 5>> {
    if steps == 0 {
        return Err(DitAttentionError::Invalid("sampling needs at least 1 step, got 0".into()));
    }
    let mut x = noise;
    for step in 0..steps {
        let t = 1.0 - step as f64 / steps as f64;
        let next = 1.0 - (step + 1) as f64 / steps as f64;
        let v = velocity(x.clone(), t, step)?;
        if v.dims() != x.dims() {
            return Err(DitAttentionError::Invalid(format!(
                "the velocity at step {step} has shape {:?}, the sample {:?}",
                v.dims(),
                x.dims()
            )));
        }
        x = x + v * (next - t);
    }
    Ok(x)
}
