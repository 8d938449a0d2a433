//! A video diffusion transformer (DiT) in burn whose attention is swapped by configuration: the
//! host model of the crate's examples and end-to-end measurements.
//!
//! - [`VideoDitConfig`] -> [`VideoDit`]: 3D patchify, joint text + video self-attention with 3D
//!   rotary embedding and QK norm, adaLN-Zero modulation from the timestep (plus pooled text),
//!   MLP, unpatchify; from a tiny CPU model to HunyuanVideo's width;
//! - [`AttentionScheduleConfig`] (serde) -> [`AttentionSchedule`]: a [`VideoAttentionConfig`]
//!   per layer and denoising step (per head for STA windows), each distinct one prepared once;
//! - [`AttentionContext`]: one run under a schedule (step, token-merging state, timing, probe);
//! - [`StaWindowSchedule`]: per-head STA windows as a mask search writes them;
//! - [`euler_sample`]: rectified-flow sampling, the convention the host model is trained on.
//!
//! The weights do not hold the attention: the same model runs under any schedule, which is how
//! the variants are compared on one set of weights.
//!
//! [`VideoAttentionConfig`]: crate::VideoAttentionConfig

mod block;
mod config;
mod layers;
mod model;
mod patch;
mod rope;
mod sample;
mod schedule;
mod sta_search;

pub use block::DitBlock;
pub use config::VideoDitConfig;
pub use model::VideoDit;
pub use patch::{patch_canvas, patchify, unpatchify};
pub use rope::{Rope3d, default_rope_dims};
pub use sample::euler_sample;
pub use schedule::{
    AttentionContext, AttentionProbe, AttentionSchedule, AttentionScheduleConfig, AttentionTiming, ScheduleRule,
    StaWindowSchedule,
};
pub use sta_search::{StaSearch, StaSearchConfig};
