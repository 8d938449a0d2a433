//! Smart attention as a module: profile each (batch, head) on sampled rows, then run spatial
//! heads over the frame band and temporal heads over the same band in token-major order.

use std::sync::Arc;

use burn::config::Config;
use burn::module::Module;
use burn::tensor::Tensor;

use super::band::{Band, BandSpec, HeadClass};
use super::profile::{KeyTables, profile, sample_rows};
use crate::attention::{CallPosition, attention_with_plan, dense_attention};
use crate::canvas::{Canvas, TextSpec, VideoLayout};
use crate::error::DitAttentionError;
use crate::glue::{SparseAttentionBackend, index_tensor};
use crate::plan::KernelPlan;
use crate::reference::{AttentionOptions, AttentionOutput, check_qkv};
use crate::rng::call_seed;

/// Configuration of [`SmartAttention`] (Sparse VideoGen, spec section 7).
#[derive(Config, Debug, PartialEq)]
pub struct SmartAttentionConfig {
    /// Latent canvas `[t, h, w]`; the video comes in natural order.
    pub canvas: [usize; 3],
    /// Text tokens before or after the video (default: none); text rows and columns are full.
    #[config(default = "TextSpec::none()")]
    pub text: TextSpec,
    /// Band width in groups (frames) on each side, or a target density (default: 1 each side).
    /// A canvas of one frame (images, 1D) needs width 0, which is dense attention. With width 0
    /// a temporal query sees its own group only, which may cut its own spatial position's
    /// frames at a group boundary when `H * W` is not a multiple of `T`; width >= 1 always
    /// covers them when `T <= H * W`.
    #[config(default = "BandSpec::Width(1)")]
    pub band: BandSpec,
    /// Every video query also sees group 0 of its head's layout, the attention sink: frame 0 for
    /// spatial heads, the first `H * W` tokens of the token-major order for temporal heads (the
    /// same mask read in the other layout, as Sparse VideoGen does) (default: on).
    #[config(default = true)]
    pub sink: bool,
    /// Query rows sampled per call for the profiling, shared by every (batch, head) (default: 64).
    #[config(default = 64)]
    pub samples: usize,
    /// Seed of the sampled rows, mixed with the call's layer and step (default: 0).
    #[config(default = 0)]
    pub seed: u64,
    /// Layers `0..first_layers` run dense attention (default: 0).
    #[config(default = 0)]
    pub first_layers: usize,
    /// Denoising steps `0..first_steps` run dense attention (default: 0).
    #[config(default = 0)]
    pub first_steps: usize,
    /// Score scale (default: `1 / sqrt(head_dim)`).
    #[config(default = "None")]
    pub scale: Option<f64>,
}

impl SmartAttentionConfig {
    /// Validates the config and prepares both block maps (once; modules keep them).
    pub fn init(&self) -> crate::Result<SmartAttention> {
        let canvas = Canvas::from_slice(&self.canvas)?;
        let layout = VideoLayout::untiled(canvas, self.text);
        let band = Band::new(canvas, self.band, self.sink)?;
        if self.samples == 0 || self.samples > layout.video_len() {
            return Err(DitAttentionError::Invalid(format!(
                "smart attention samples {} query rows per call; it needs between 1 and the {} video tokens of canvas {:?}",
                self.samples,
                layout.video_len(),
                self.canvas
            )));
        }
        AttentionOptions { scale: self.scale }.validate()?;
        // A band covering every frame is dense attention for both classes: no profiling, no maps.
        let plans = if band.density() == 1.0 {
            None
        } else {
            Some([band.plan(HeadClass::Spatial, self.text)?, band.plan(HeadClass::Temporal, self.text)?])
        };
        let keys = Arc::new(KeyTables::new(&layout, &band));
        Ok(SmartAttention { config: self.clone(), prepared: Prepared { layout, band, plans, keys } })
    }
}

#[derive(Debug, Clone)]
struct Prepared {
    layout: VideoLayout,
    band: Band,
    /// Spatial and temporal plans; `None` when the band covers every frame.
    plans: Option<[KernelPlan; 2]>,
    /// Per-key group tables of the profiling's masks.
    keys: Arc<KeyTables>,
}

/// What one smart-attention call computed, and what it decided.
#[derive(Debug, Clone)]
pub struct SmartOutput<B: SparseAttentionBackend> {
    /// `[b, h, n, dv]`.
    pub output: Tensor<B, 4>,
    /// `[b, h, n]`.
    pub lse: Tensor<B, 3>,
    /// The class of each (batch, head), row-major `[b * h]`; empty when the call ran dense
    /// (warm-up, or a band covering every frame).
    pub heads: Vec<HeadClass>,
    /// The profiled mean squared errors `[spatial, temporal]` per (batch, head), as `heads`.
    pub errors: Vec<[f64; 2]>,
    /// Fraction of video query-key pairs computed (1 when dense).
    pub density: f64,
}

/// Smart attention (no parameters): swap it in for a DiT's attention core.
#[derive(Module, Debug, Clone)]
pub struct SmartAttention {
    #[module(skip)]
    config: SmartAttentionConfig,
    #[module(skip)]
    prepared: Prepared,
}

impl SmartAttention {
    /// The configuration.
    pub fn config(&self) -> &SmartAttentionConfig {
        &self.config
    }

    /// The band, resolved (its width when the config gives a density).
    pub fn band(&self) -> Band {
        self.prepared.band
    }

    /// The sampled query rows (sequence positions, natural order) of a call at `position`
    /// (`None`: a call outside any schedule).
    pub fn sampled_rows(&self, position: Option<CallPosition>) -> Vec<usize> {
        let p = position.unwrap_or_default();
        sample_rows(&self.prepared.layout, self.config.samples, call_seed(self.config.seed, p.layer, p.step))
    }

    /// Does a call at `position` run dense (warm-up)?
    pub fn is_warmup(&self, position: Option<CallPosition>) -> bool {
        position.is_some_and(|p| p.layer < self.config.first_layers || p.step < self.config.first_steps)
    }

    /// The block-sparse plan of a class (`None` when the band covers every frame: dense).
    pub fn plan(&self, class: HeadClass) -> Option<&KernelPlan> {
        self.prepared.plans.as_ref().map(|p| &p[(class == HeadClass::Temporal) as usize])
    }

    /// The profiling alone: the class of each (batch, head), row-major `[b * h]`, and the mean
    /// squared errors `[spatial, temporal]` of the sampled rows against their exact output.
    /// A head is spatial iff its spatial error is lower.
    ///
    /// # Shapes
    /// - q, k `[b, h, n, d]`, v `[b, h, n, dv]`, bias `[b or 1, h or 1, n]`
    pub fn classify<B: SparseAttentionBackend>(
        &self,
        q: &Tensor<B, 4>,
        k: &Tensor<B, 4>,
        v: &Tensor<B, 4>,
        bias: Option<&Tensor<B, 3>>,
        position: Option<CallPosition>,
    ) -> crate::Result<(Vec<HeadClass>, Vec<[f64; 2]>)> {
        self.check(q, k, v, bias)?;
        Ok(self.decide(q, k, v, bias, position))
    }

    fn check<B: SparseAttentionBackend>(
        &self,
        q: &Tensor<B, 4>,
        k: &Tensor<B, 4>,
        v: &Tensor<B, 4>,
        bias: Option<&Tensor<B, 3>>,
    ) -> crate::Result<()> {
        check_qkv(q, k, v, bias)?;
        self.prepared.layout.check_seq_len(q.dims()[2])?;
        self.prepared.layout.check_seq_len(k.dims()[2])
    }

    /// [`classify`](Self::classify) on checked inputs.
    fn decide<B: SparseAttentionBackend>(
        &self,
        q: &Tensor<B, 4>,
        k: &Tensor<B, 4>,
        v: &Tensor<B, 4>,
        bias: Option<&Tensor<B, 3>>,
        position: Option<CallPosition>,
    ) -> (Vec<HeadClass>, Vec<[f64; 2]>) {
        let p = &self.prepared;
        let scale = AttentionOptions { scale: self.config.scale }.scale_for(q.dims()[3]);
        let rows = self.sampled_rows(position);
        let (es, et) = profile(q, k, v, bias, &p.keys, p.band.width, &rows, scale);
        // Ties go to temporal; a NaN error (e.g. an infinite bias) loses to a number.
        let spatial = |s: f64, t: f64| s < t || (t.is_nan() && !s.is_nan());
        let heads = es
            .iter()
            .zip(&et)
            .map(|(&s, &t)| if spatial(s, t) { HeadClass::Spatial } else { HeadClass::Temporal })
            .collect();
        (heads, es.iter().zip(&et).map(|(&s, &t)| [s, t]).collect())
    }

    /// Attention output (no warm-up: a call outside any schedule).
    ///
    /// # Shapes
    /// - q, k `[b, h, n, d]`, v `[b, h, n, dv]`, `n` = canvas tokens + text tokens, natural order
    /// - output `[b, h, n, dv]`
    pub fn forward<B: SparseAttentionBackend>(
        &self,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
    ) -> crate::Result<Tensor<B, 4>> {
        Ok(self.forward_at(q, k, v, None, None)?.output)
    }

    /// Output, LSE and decisions of a call at `position` (layer and denoising step: dense during
    /// the warm-up, and the sampled rows depend on it), with an optional per-key bias.
    ///
    /// # Shapes
    /// - q, k `[b, h, n, d]`, v `[b, h, n, dv]`, bias `[b or 1, h or 1, n]`
    /// - output `[b, h, n, dv]`, lse `[b, h, n]`
    pub fn forward_at<B: SparseAttentionBackend>(
        &self,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        bias: Option<Tensor<B, 3>>,
        position: Option<CallPosition>,
    ) -> crate::Result<SmartOutput<B>> {
        self.check(&q, &k, &v, bias.as_ref())?;
        let options = AttentionOptions { scale: self.config.scale };
        let scale = options.scale_for(q.dims()[3]);
        let plans = match &self.prepared.plans {
            Some(plans) if !self.is_warmup(position) => plans,
            _ => {
                let out = dense_attention(q, k, v, bias, options)?;
                return Ok(SmartOutput {
                    output: out.output,
                    lse: out.lse,
                    heads: vec![],
                    errors: vec![],
                    density: 1.0,
                });
            }
        };
        let (heads, errors) = self.decide(&q, &k, &v, bias.as_ref(), position);
        let [spatial, temporal] = plans.each_ref().map(|plan| plan.with_scale(scale));
        let out = if heads.iter().all(|&c| c == HeadClass::Spatial) {
            attention_with_plan(q, k, v, bias, &spatial)?
        } else if heads.iter().all(|&c| c == HeadClass::Temporal) {
            attention_with_plan(q, k, v, bias, &temporal)?
        } else {
            by_class(q, k, v, bias, &heads, [&spatial, &temporal])?
        };
        Ok(SmartOutput { output: out.output, lse: out.lse, heads, errors, density: self.prepared.band.density() })
    }
}

/// Runs each class's heads (flattened over batch and head) with its plan, then restores the
/// head order.
fn by_class<B: SparseAttentionBackend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    bias: Option<Tensor<B, 3>>,
    heads: &[HeadClass],
    plans: [&KernelPlan; 2],
) -> crate::Result<AttentionOutput<B>> {
    let [b, h, n, d] = q.dims();
    let dv = v.dims()[3];
    let device = q.device();
    let flat = |x: Tensor<B, 4>, c: usize| x.reshape([1, b * h, n, c]);
    let (q, k, v) = (flat(q, d), flat(k, d), flat(v, dv));
    let bias = bias.map(|x| x.expand([b, h, n]).reshape([1, b * h, n]));
    let (mut outputs, mut lses, mut order) = (vec![], vec![], vec![]);
    for (class, plan) in [HeadClass::Spatial, HeadClass::Temporal].into_iter().zip(plans) {
        let members: Vec<usize> = (0..b * h).filter(|&i| heads[i] == class).collect();
        let idx = index_tensor::<B>(members.iter().copied(), &device);
        let pick = |x: &Tensor<B, 4>| x.clone().select(1, idx.clone());
        let part = attention_with_plan(
            pick(&q),
            pick(&k),
            pick(&v),
            bias.as_ref().map(|x| x.clone().select(1, idx.clone())),
            plan,
        )?;
        outputs.push(part.output);
        lses.push(part.lse);
        order.extend(members);
    }
    // `order[j]` is the head at position j of the concatenation; invert it.
    let mut back = vec![0; b * h];
    for (j, &head) in order.iter().enumerate() {
        back[head] = j;
    }
    let back = index_tensor::<B>(back, &device);
    Ok(AttentionOutput {
        output: Tensor::cat(outputs, 1).select(1, back.clone()).reshape([b, h, n, dv]),
        lse: Tensor::cat(lses, 1).select(1, back).reshape([b, h, n]),
    })
}
