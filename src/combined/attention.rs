//! Combined attention as a module: warm-up, per-head choice, pattern or dynamic heads.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::kv_merge::{KvMerge, KvMergeConfig};
use super::pattern::{PatternGeometry, PatternStats};
use crate::attention::{CallPosition, check_backend, check_dtypes, dense_attention};
use crate::canvas::{Canvas, TextSpec};
use crate::dynamic::{DynamicSparseAttention, DynamicSparseAttentionConfig, ThresholdSchedule};
use crate::error::DitAttentionError;
use crate::glue::{SparseAttentionBackend, index_tensor};
use crate::merge::MergePlan;
use crate::plan::KernelPlan;
use crate::reference::{AttentionOptions, AttentionOutput, check_qkv};
use crate::rng::{SplitMix, call_seed};

/// Configuration of [`CombinedAttention`] (spec section 8).
#[derive(Config, Debug, PartialEq)]
pub struct CombinedAttentionConfig {
    /// Latent canvas `[t, h, w]`; the video comes in natural order.
    pub canvas: [usize; 3],
    /// Text tokens before or after the video (default: none).
    #[config(default = "TextSpec::none()")]
    pub text: TextSpec,
    /// Denoising steps `0..warmup_steps` run dense attention (default: 5).
    #[config(default = 5)]
    pub warmup_steps: usize,
    /// Spatial positions sampled per call for the head statistics, the same in every frame
    /// (default: 8).
    #[config(default = 8)]
    pub pattern_samples: usize,
    /// Share of the keys whose mass measures sparsity (default: 0.2).
    #[config(default = 0.2)]
    pub top_fraction: f64,
    /// A head is sparse when its top keys hold more than this share of the mass of frame-0
    /// queries (default: 0.9).
    #[config(default = 0.9)]
    pub sparse_mass: f64,
    /// A head repeats across frames when its mean cosine similarity exceeds this (default: 0.9).
    #[config(default = 0.9)]
    pub similarity: f64,
    /// Dynamic heads: tokens per block (default: 64).
    #[config(default = 64)]
    pub block: usize,
    /// Dynamic heads: tokens sampled per block (default: 8).
    #[config(default = 8)]
    pub block_samples: usize,
    /// Dynamic heads: sink blocks (default: 4).
    #[config(default = 4)]
    pub sink_blocks: usize,
    /// Dynamic heads: thresholds per step (default: the spec's ramp).
    #[config(default = "ThresholdSchedule::default()")]
    pub schedule: ThresholdSchedule,
    /// Seed of every sample, mixed with the call's layer and step (default: 0).
    #[config(default = 0)]
    pub seed: u64,
    /// Score scale (default: `1 / sqrt(head_dim)`).
    #[config(default = "None")]
    pub scale: Option<f64>,
    /// Token merging of the dynamic heads' keys and values, matched on every call past the
    /// warm-up (default: none). The block budgets stay ratios of the unmerged key blocks.
    #[config(default = "None")]
    pub kv_merge: Option<KvMergeConfig>,
}

impl CombinedAttentionConfig {
    /// Validates the config and prepares both paths.
    pub fn init(&self) -> crate::Result<CombinedAttention> {
        let canvas = Canvas::from_slice(&self.canvas)?;
        let geometry = PatternGeometry::new(canvas, self.text)?;
        if self.pattern_samples == 0 || self.pattern_samples > geometry.frame_len {
            return Err(DitAttentionError::Invalid(format!(
                "combined attention samples {} positions per frame; it needs between 1 and the {} positions of a frame",
                self.pattern_samples, geometry.frame_len
            )));
        }
        for (name, x) in [("top_fraction", self.top_fraction), ("sparse_mass", self.sparse_mass)] {
            if !(x > 0.0 && x <= 1.0) {
                return Err(DitAttentionError::Invalid(format!("{name} must be in (0, 1], got {x}")));
            }
        }
        if !(-1.0..=1.0).contains(&self.similarity) {
            return Err(DitAttentionError::Invalid(format!("similarity must be in [-1, 1], got {}", self.similarity)));
        }
        AttentionOptions { scale: self.scale }.validate()?;
        let dynamic = DynamicSparseAttentionConfig::new(self.canvas)
            .with_text(self.text)
            .with_block(self.block)
            .with_samples(self.block_samples)
            .with_sink_blocks(self.sink_blocks)
            .with_schedule(self.schedule)
            .with_seed(self.seed)
            .with_scale(self.scale)
            .init()?;
        let merge = self.kv_merge.as_ref().map(|m| m.init(self.canvas, self.text, self.scale)).transpose()?;
        Ok(CombinedAttention { config: self.clone(), geometry, dynamic, merge })
    }
}

/// How a head ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeadChoice {
    /// Cross-frame shared softmax.
    Pattern,
    /// Dynamic block-sparse attention.
    Dynamic,
}

/// What one combined call computed and decided.
#[derive(Debug, Clone)]
pub struct CombinedOutput<B: SparseAttentionBackend> {
    /// `[b, h, n, dv]`.
    pub output: Tensor<B, 4>,
    /// `[b, h, n]`; pattern heads' rows past frame 0 carry the estimate described in the module.
    pub lse: Tensor<B, 3>,
    /// Per (batch, head), row-major `[b * h]`; empty in the warm-up.
    pub heads: Vec<HeadChoice>,
    /// The statistics behind the choices (`None` in the warm-up).
    pub stats: Option<PatternStats>,
    /// Fraction of query-key pairs computed per (batch, head), over the unmerged `n x n` (1 in
    /// the warm-up). With KV merging a merged key counts once, and kept blocks of padding count
    /// too.
    pub density: Vec<f64>,
    /// With KV merging: the matching of the dynamic heads, a plan for `[1, dynamic heads]` in
    /// ascending `batch * heads + head` order (`None` in the warm-up, without merging, or with no
    /// dynamic head).
    pub merge: Option<MergePlan<B>>,
}

/// Combined attention (no parameters): swap it in for a DiT's attention core.
#[derive(Module, Debug, Clone)]
pub struct CombinedAttention {
    #[module(skip)]
    config: CombinedAttentionConfig,
    #[module(skip)]
    geometry: PatternGeometry,
    #[module(skip)]
    dynamic: DynamicSparseAttention,
    #[module(skip)]
    merge: Option<KvMerge>,
}

impl CombinedAttention {
    /// The configuration.
    pub fn config(&self) -> &CombinedAttentionConfig {
        &self.config
    }

    /// The dynamic path (its blocks, sampled tokens and budget).
    pub fn dynamic(&self) -> &DynamicSparseAttention {
        &self.dynamic
    }

    /// The spatial positions (within a frame, ascending) sampled in every frame at `position`.
    pub fn sampled_spatial(&self, position: Option<CallPosition>) -> Vec<usize> {
        let p = position.unwrap_or_default();
        let mut rng = SplitMix::new(call_seed(self.config.seed ^ 0xC0B1_7ED0, p.layer, p.step));
        let (n, s) = (self.geometry.frame_len, self.config.pattern_samples);
        let mut picked = std::collections::BTreeSet::new();
        for j in n - s..n {
            let t = rng.below(j + 1);
            if !picked.insert(t) {
                picked.insert(j);
            }
        }
        picked.into_iter().collect()
    }

    /// Does a call at `position` run dense (warm-up)?
    pub fn is_warmup(&self, position: Option<CallPosition>) -> bool {
        position.is_some_and(|p| p.step < self.config.warmup_steps)
    }

    /// The head statistics a call at `position` decides from, without the attention: per head
    /// the frame-to-frame mass map, the top mass of frame 0's sampled rows and the cross-frame
    /// similarity (`None` in the warm-up, which takes no statistics). No gradient.
    ///
    /// # Shapes
    /// - q, k `[b, h, n, d]`, `n` = canvas tokens + text tokens, natural order
    pub fn statistics_at<B: SparseAttentionBackend>(
        &self,
        q: &Tensor<B, 4>,
        k: &Tensor<B, 4>,
        position: Option<CallPosition>,
    ) -> crate::Result<Option<PatternStats>> {
        // The keys stand in for the values: only q and k are read.
        check_qkv(q, k, k, None)?;
        check_dtypes(q.dtype(), &[("key", k.dtype())])?;
        self.geometry.layout.check_seq_len(q.dims()[2])?;
        self.geometry.layout.check_seq_len(k.dims()[2])?;
        if self.is_warmup(position) {
            return Ok(None);
        }
        let [b, h, n, d] = q.dims();
        let flat = |x: &Tensor<B, 4>| x.clone().reshape([1, b * h, n, d]);
        let scale = AttentionOptions { scale: self.config.scale }.scale_for(d);
        Ok(Some(self.stats_of_heads(&flat(q), &flat(k), position, scale)))
    }

    /// The statistics of heads `[1, P, n, d]` (checked inputs, past the warm-up).
    fn stats_of_heads<B: SparseAttentionBackend>(
        &self,
        q: &Tensor<B, 4>,
        k: &Tensor<B, 4>,
        position: Option<CallPosition>,
        scale: f64,
    ) -> PatternStats {
        let spatial = self.sampled_spatial(position);
        self.geometry.stats(q, k, &spatial, scale, self.config.top_fraction)
    }

    /// The choice for a head's statistics: pattern iff not sparse and similar across frames. A
    /// single frame has no other frame to share with: dynamic.
    pub fn choose(&self, stats: &PatternStats, head: usize) -> HeadChoice {
        let c = &self.config;
        if stats.frames > 1 && stats.top_mass[head] <= c.sparse_mass && stats.similarity[head] > c.similarity {
            HeadChoice::Pattern
        } else {
            HeadChoice::Dynamic
        }
    }

    /// Attention output (a call outside any schedule: no warm-up, step 0 thresholds).
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
        Ok(self.forward_at(q, k, v, None)?.output)
    }

    /// Output, LSE, choices and densities of a call at `position`.
    ///
    /// # Shapes
    /// - q, k `[b, h, n, d]`, v `[b, h, n, dv]`
    /// - output `[b, h, n, dv]`, lse `[b, h, n]`
    pub fn forward_at<B: SparseAttentionBackend>(
        &self,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        position: Option<CallPosition>,
    ) -> crate::Result<CombinedOutput<B>> {
        check_qkv(&q, &k, &v, None)?;
        self.geometry.layout.check_seq_len(q.dims()[2])?;
        self.geometry.layout.check_seq_len(k.dims()[2])?;
        let [b, h, n, d] = q.dims();
        let dv = v.dims()[3];
        let options = AttentionOptions { scale: self.config.scale };
        check_backend(&q, &k, &v, &KernelPlan::dense(n, n, options.scale_for(d)))?;
        if self.is_warmup(position) {
            let out = dense_attention(q, k, v, None, options)?;
            return Ok(CombinedOutput {
                output: out.output,
                lse: out.lse,
                heads: vec![],
                stats: None,
                density: vec![1.0; b * h],
                merge: None,
            });
        }
        let scale = options.scale_for(d);
        let flat = |x: Tensor<B, 4>, c: usize| x.reshape([1, b * h, n, c]);
        let (q, k, v) = (flat(q, d), flat(k, d), flat(v, dv));
        let stats = self.stats_of_heads(&q, &k, position, scale);
        let heads: Vec<HeadChoice> = (0..b * h).map(|i| self.choose(&stats, i)).collect();

        let device = q.device();
        let (mut outputs, mut lses, mut order) = (vec![], vec![], vec![]);
        let mut density = vec![0.0; b * h];
        let mut merge = None;
        for choice in [HeadChoice::Pattern, HeadChoice::Dynamic] {
            let members: Vec<usize> = (0..b * h).filter(|&i| heads[i] == choice).collect();
            if members.is_empty() {
                continue;
            }
            // Every head in one class (the common case): no index upload, no copies.
            let idx = (members.len() < b * h).then(|| index_tensor::<B>(members.iter().copied(), &device));
            let pick = |x: &Tensor<B, 4>| match &idx {
                Some(idx) => x.clone().select(1, idx.clone()),
                None => x.clone(),
            };
            let (out, lse): (Tensor<B, 4>, Tensor<B, 3>) = match choice {
                HeadChoice::Pattern => {
                    let out = self.geometry.forward(pick(&q), pick(&k), pick(&v), &stats, &members, scale)?;
                    for &m in &members {
                        density[m] = self.geometry.density();
                    }
                    (out.output, out.lse)
                }
                HeadChoice::Dynamic => {
                    let out = match &self.merge {
                        Some(m) => {
                            let kv = m.apply(pick(&k), pick(&v))?;
                            merge = Some(kv.plan);
                            self.dynamic.forward_at(pick(&q), kv.k, kv.v, Some(kv.bias), position)?
                        }
                        None => self.dynamic.forward_at(pick(&q), pick(&k), pick(&v), None, position)?,
                    };
                    for (i, x) in out.head_densities().into_iter().enumerate() {
                        density[members[i]] = x;
                    }
                    (out.output, out.lse)
                }
            };
            outputs.push(out);
            lses.push(lse);
            order.extend(members);
        }
        if outputs.len() == 1 {
            let (output, lse) = (outputs.remove(0), lses.remove(0));
            let (output, lse) = (output.reshape([b, h, n, dv]), lse.reshape([b, h, n]));
            return Ok(CombinedOutput { output, lse, heads, stats: Some(stats), density, merge });
        }
        // `order[j]` is the head at position j of the concatenation; invert it.
        let mut back = vec![0; b * h];
        for (j, &head) in order.iter().enumerate() {
            back[head] = j;
        }
        let back = index_tensor::<B>(back, &device);
        let out = AttentionOutput {
            output: Tensor::cat(outputs, 1).select(1, back.clone()).reshape([b, h, n, dv]),
            lse: Tensor::cat(lses, 1).select(1, back).reshape([b, h, n]),
        };
        Ok(CombinedOutput { output: out.output, lse: out.lse, heads, stats: Some(stats), density, merge })
    }
}
