//! The selection thresholds and their schedule over denoising steps.

use serde::{Deserialize, Serialize};

use crate::error::{DitAttentionError, Result};

/// The thresholds of one call.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    /// Fraction of each query block's estimated mass to keep, in `(0, 1]`.
    pub tau: f64,
    /// Fewest key blocks kept per query block, as a fraction of the key blocks, in `[0, 1]`.
    pub min_ratio: f64,
    /// Most key blocks kept per query block, as a fraction of the key blocks, in
    /// `(0, 1]` and `>= min_ratio`. Sink blocks come on top of both bounds.
    pub max_ratio: f64,
}

impl Thresholds {
    /// Checks the ranges, naming the values.
    pub fn validate(&self) -> Result<()> {
        let Self { tau, min_ratio, max_ratio } = *self;
        if !(tau > 0.0 && tau <= 1.0) {
            return Err(DitAttentionError::Invalid(format!("tau must be in (0, 1], got {tau}")));
        }
        if !((0.0..=1.0).contains(&min_ratio) && max_ratio > 0.0 && max_ratio <= 1.0 && min_ratio <= max_ratio) {
            return Err(DitAttentionError::Invalid(format!(
                "block ratios need 0 <= min_ratio <= max_ratio <= 1 and max_ratio > 0, got min_ratio {min_ratio}, max_ratio {max_ratio}"
            )));
        }
        Ok(())
    }

    /// Whether every key block is kept whatever the masses: dense attention.
    pub fn keeps_everything(&self) -> bool {
        self.min_ratio >= 1.0 || (self.tau >= 1.0 && self.max_ratio >= 1.0)
    }
}

/// `tau`, `min_ratio` and `max_ratio` per denoising step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum ThresholdSchedule {
    /// The same thresholds at every step.
    Constant(Thresholds),
    /// A logistic ramp from `from` at step 0 to `to` at step `steps` (and after): each value is
    /// `from + (to - from) * w(step)`, `w` the logistic `1 / (1 + exp(-10 (step / steps - 1/2)))`
    /// rescaled to run exactly from 0 to 1.
    Logistic {
        /// Thresholds at step 0.
        from: Thresholds,
        /// Thresholds from step `steps` on.
        to: Thresholds,
        /// Length of the ramp in steps (at least 1).
        steps: usize,
    },
}

impl Default for ThresholdSchedule {
    /// The spec's schedule: from `tau` 0.98, ratios `[0.12, 1.0]` to `tau` 0.90, ratios
    /// `[0.10, 0.8]` over 50 steps.
    fn default() -> Self {
        ThresholdSchedule::Logistic {
            from: Thresholds { tau: 0.98, min_ratio: 0.12, max_ratio: 1.0 },
            to: Thresholds { tau: 0.90, min_ratio: 0.10, max_ratio: 0.8 },
            steps: 50,
        }
    }
}

impl ThresholdSchedule {
    /// The thresholds at denoising step `step`.
    pub fn at(&self, step: usize) -> Thresholds {
        match *self {
            ThresholdSchedule::Constant(t) => t,
            ThresholdSchedule::Logistic { from, to, steps } => {
                let steps = steps.max(1);
                let logistic = |x: f64| 1.0 / (1.0 + (-10.0 * (x - 0.5)).exp());
                let (w0, w1) = (logistic(0.0), logistic(1.0));
                let x = (step.min(steps) as f64) / steps as f64;
                let w = ((logistic(x) - w0) / (w1 - w0)).clamp(0.0, 1.0);
                let lerp = |a: f64, b: f64| a + (b - a) * w;
                Thresholds {
                    tau: lerp(from.tau, to.tau),
                    min_ratio: lerp(from.min_ratio, to.min_ratio),
                    max_ratio: lerp(from.max_ratio, to.max_ratio),
                }
            }
        }
    }

    /// Checks every step's thresholds (the ends suffice: each value moves monotonically).
    pub fn validate(&self) -> Result<()> {
        match *self {
            ThresholdSchedule::Constant(t) => t.validate(),
            ThresholdSchedule::Logistic { from, to, steps } => {
                if steps == 0 {
                    return Err(DitAttentionError::Invalid("a logistic schedule needs at least 1 step, got 0".into()));
                }
                from.validate()?;
                to.validate()
            }
        }
    }
}
