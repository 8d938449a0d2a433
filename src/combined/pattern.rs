//! Pattern (cross-frame shared) attention (spec section 8): the frame-to-frame mass map and the
//! head statistics from sampled query rows, and the pattern output built from engine calls.
//!
//! Every pattern term is a plain attention problem: the normalised rows `softmax(Q_j* K_i^T) V_i`
//! of all key frames `i` are one block-diagonal engine call (query frame `j*(i)` gathered in
//! front of key frame `i`), the text term is attention over the text keys, and the exact rows
//! (text and frame-0 queries) are attention over every key. Nothing `n x n` is built.

use std::sync::Arc;

use burn::tensor::{DType, Tensor, TensorData, backend::Backend};
use dit_attention_kernels::stats::FrameRows;

use crate::attention::{attention_with_plan, dense_attention};
use crate::canvas::{Canvas, TextPlacement, TextSpec, TokenOrder, VideoLayout};
use crate::error::Result;
use crate::glue::{SparseAttentionBackend, index_tensor, to_f64_vec};
use crate::mask::{BlockKind, BlockLayout, BlockMap, BlockPartition};
use crate::plan::KernelPlan;
use crate::reference::{AttentionOptions, AttentionOutput};

/// What the sampled rows say about each head.
#[derive(Debug, Clone, PartialEq)]
pub struct PatternStats {
    /// Frames `T`.
    pub frames: usize,
    /// Per head `[T, T + 1]` row-major: `mass[f_q][f_k]` = mean over the sampled queries of
    /// frame `f_q` of their attention mass on key frame `f_k`; the last column is the text.
    pub mass: Vec<Vec<f64>>,
    /// Per head: the share of the mass of frame-0 sampled queries held by their top keys
    /// (`top_fraction` of all keys), averaged over those queries.
    pub top_mass: Vec<f64>,
    /// Per head: mean cosine similarity, over key frames and pairs of distinct query frames, of
    /// the sampled queries' attention on that key frame (each row normalised within the frame).
    /// 1 for a single frame.
    pub similarity: Vec<f64>,
}

impl PatternStats {
    /// Mass of head `head` from query frame `fq` on key frame `fk` (`fk == T`: the text).
    pub fn mass(&self, head: usize, fq: usize, fk: usize) -> f64 {
        self.mass[head][fq * (self.frames + 1) + fk]
    }

    /// The query frame whose pattern stands for key frame `fk`: `argmax_j M[j, fk]`, the lowest on
    /// ties.
    pub fn representative(&self, head: usize, fk: usize) -> usize {
        (0..self.frames).fold(0, |best, j| if self.mass(head, j, fk) > self.mass(head, best, fk) { j } else { best })
    }
}

/// The top mass of rows of probabilities `[r, n]`: the sum of each row's `top` largest, a NaN
/// probability (from non-finite scores) counted as 0 on every backend.
pub(crate) fn top_mass_of_probabilities<B: SparseAttentionBackend>(probs: Tensor<B, 2>, top: usize) -> Tensor<B, 1> {
    B::top_sum(probs.clone().mask_fill(probs.is_nan(), 0.0), top)
}

/// Sum of the `m` largest values of each row of `x [r, n]` (probabilities, in `[0, 1]`), from a
/// bisection on a threshold with burn ops (40 halvings: within `2^-39 m` of the sorted sum;
/// burn's sort reads back to the host). The CubeCL backends run one kernel instead.
pub(crate) fn top_sum_reference<B: Backend>(x: Tensor<B, 2>, m: usize) -> Tensor<B, 1> {
    let [r, n] = x.dims();
    let opts = (&x.device(), x.dtype());
    // count(x >= lo) >= m and count(x >= hi) < m throughout.
    let (mut lo, mut hi) = (Tensor::<B, 2>::zeros([r, 1], opts), Tensor::<B, 2>::full([r, 1], 2.0, opts));
    let count = |t: &Tensor<B, 2>| x.clone().greater_equal(t.clone().expand([r, n])).float().sum_dim(1);
    for _ in 0..40 {
        let mid = (lo.clone() + hi.clone()).div_scalar(2.0);
        let enough = count(&mid).cast(x.dtype()).greater_equal_elem(m as f64);
        lo = lo.mask_where(enough.clone(), mid.clone());
        hi = hi.mask_where(enough.bool_not(), mid);
    }
    let above = x.clone().greater_equal(hi.expand([r, n])).float().cast(x.dtype());
    let (sum, cnt) = ((x * above.clone()).sum_dim(1), above.sum_dim(1));
    (sum + (cnt.neg().add_scalar(m as f64)) * lo).reshape([r])
}

/// The fixed pieces of pattern attention for one canvas and text.
#[derive(Debug, Clone)]
pub(crate) struct PatternGeometry {
    pub layout: VideoLayout,
    /// Frames, tokens per frame.
    pub frames: usize,
    pub frame_len: usize,
    /// Block-diagonal map over the video alone, one block per frame.
    diagonal: KernelPlan,
}

impl PatternGeometry {
    pub(crate) fn new(canvas: Canvas, text: TextSpec) -> Result<Self> {
        let [t, h, w] = canvas.dims();
        let video = VideoLayout::untiled(canvas, TextSpec::none());
        let blocks = BlockLayout::new(&video, TokenOrder::Natural, BlockPartition::Uniform(h * w))?;
        let rows = (0..blocks.len()).map(|b| vec![(b as u32, BlockKind::Full)]).collect();
        let map = BlockMap::from_rows(blocks, 1, rows, None)?;
        Ok(Self {
            layout: VideoLayout::untiled(canvas, text),
            frames: t,
            frame_len: h * w,
            diagonal: KernelPlan::from_map(Arc::new(map), 1.0),
        })
    }

    fn video_start(&self) -> usize {
        self.layout.video_range().start
    }

    fn text(&self) -> TextSpec {
        self.layout.text()
    }

    /// Sequence positions of the sampled rows: the same `spatial` positions in every frame,
    /// frame after frame.
    pub(crate) fn sampled_rows(&self, spatial: &[usize]) -> Vec<usize> {
        (0..self.frames)
            .flat_map(|f| spatial.iter().map(move |&r| self.video_start() + f * self.frame_len + r))
            .collect()
    }

    /// The statistics of heads `[1, P, n, d]` from the sampled rows (one read back).
    pub(crate) fn stats<B: SparseAttentionBackend>(
        &self,
        q: &Tensor<B, 4>,
        k: &Tensor<B, 4>,
        spatial: &[usize],
        scale: f64,
        top_fraction: f64,
    ) -> PatternStats {
        let [_, p, n, _] = q.dims();
        let (t, hw, s) = (self.frames, self.frame_len, spatial.len());
        let idx = index_tensor::<B>(self.sampled_rows(spatial), &q.device());
        // Statistics only: no gradient flows through them. The bounds-checked product: burn
        // 0.21's autotuned matmul can read past `d` for some shapes (see `checked_matmul`).
        let sampled = q.clone().detach().select(2, idx).mul_scalar(scale);
        let scores = B::checked_matmul(sampled, k.clone().detach().swap_dims(2, 3));
        let scores = scores.reshape([p, t * s, n]);
        let top = ((top_fraction * n as f64).ceil() as usize).clamp(1, n);
        let rows = FrameRows {
            n,
            video_start: self.video_start(),
            frames: t,
            frame_len: hw,
            text_start: self.text_start(),
            text_len: self.text().len,
        };
        let (mass, top_mass, gram) = match B::frame_statistics(scores.clone(), s, &rows, top) {
            // Kernels: per-row masses, norms, maxima and sums, then from them the top mass of
            // frame 0's rows and the cross-frame energy, without a probability tensor.
            Some(kernels) => {
                let mass =
                    kernels.rows.narrow(2, 0, t + 1).reshape([p, t, s, t + 1]).mean_dim(2).reshape([p, t, t + 1]);
                (mass, kernels.top_mass, kernels.energy)
            }
            None => {
                let (mass, frame0, gram) = self.stats_composite(scores, s);
                (mass, top_mass_of_probabilities(frame0, top), gram)
            }
        };
        let top_mass = top_mass.reshape([p, s]).mean_dim(1);
        let dtype = mass.dtype();
        let values = to_f64_vec(Tensor::cat(
            vec![mass.reshape([p * t * (t + 1)]), top_mass.reshape([p]).cast(dtype), gram.reshape([p]).cast(dtype)],
            0,
        ));
        let (mass, rest) = values.split_at(p * t * (t + 1));
        let similarity = (0..p)
            .map(|h| if t == 1 { 1.0 } else { (rest[p + h] - (t * t) as f64) / (t * t * (t - 1)) as f64 })
            .collect();
        PatternStats {
            frames: t,
            mass: mass.chunks(t * (t + 1)).map(|c| c.to_vec()).collect(),
            top_mass: rest[..p].to_vec(),
            similarity,
        }
    }

    /// The statistics of [`Self::stats`] from burn ops on scores `[P, t * s, n]`: the mass map
    /// `[P, t, t + 1]`, frame 0's probabilities `[P * s, n]` and the cross-frame energy `[P]`.
    fn stats_composite<B: SparseAttentionBackend>(
        &self,
        scores: Tensor<B, 3>,
        s: usize,
    ) -> (Tensor<B, 3>, Tensor<B, 2>, Tensor<B, 1>) {
        let [p, _, n] = scores.dims();
        let (t, hw) = (self.frames, self.frame_len);
        // In f32 at least: half-precision probabilities lose the small masses.
        let scores = match scores.dtype() {
            DType::F16 | DType::BF16 => scores.cast(DType::F32),
            _ => scores,
        };
        let probs = burn::tensor::activation::softmax(scores, 2);
        let video = probs.clone().narrow(2, self.video_start(), t * hw).reshape([p, t * s, t, hw]);
        let frame_mass = video.clone().sum_dim(3).reshape([p, t * s, t]);
        let text_len = self.text().len;
        let text_mass = if text_len > 0 {
            probs.clone().narrow(2, self.text_start(), text_len).sum_dim(2)
        } else {
            Tensor::zeros([p, t * s, 1], (&probs.device(), frame_mass.dtype()))
        };
        let mass = Tensor::cat(vec![frame_mass.clone(), text_mass], 2).reshape([p, t, s, t + 1]).mean_dim(2);
        let frame0 = probs.narrow(1, 0, s).reshape([p * s, n]);
        // Per key frame i, the sampled rows of each query frame j normalised within frame i,
        // flattened over (sampled row, key) and scaled to unit length: x[i][j]. The sum of the
        // cosines over all (j, j') is |sum_j x[i][j]|^2, so no Gram matrix is formed.
        let within = (video / frame_mass.clamp_min(1e-30).unsqueeze_dim::<4>(3)).reshape([p, t, s, t, hw]);
        let norm = within.clone().powi_scalar(2).sum_dim(4).sum_dim(2).sqrt().clamp_min(1e-30);
        let gram = (within / norm).sum_dim(1).powi_scalar(2).reshape([p, s * t * hw]).sum_dim(1);
        (mass.reshape([p, t, t + 1]), frame0, gram.reshape([p]))
    }

    fn text_start(&self) -> usize {
        match self.text().placement {
            TextPlacement::Before => 0,
            TextPlacement::After => self.layout.video_len(),
        }
    }

    /// Pattern attention of heads `[1, P, n, d]` whose statistics are `stats` (rows `heads` of
    /// it): text and frame-0 queries exact, later frames from the shared patterns. The LSE of a
    /// pattern row is estimated as the LSE over the anchor keys (text, or frame 0 without text)
    /// minus the log of the row's frame's mass on them.
    pub(crate) fn forward<B: SparseAttentionBackend>(
        &self,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        stats: &PatternStats,
        heads: &[usize],
        scale: f64,
    ) -> Result<AttentionOutput<B>> {
        let [_, p, _, d] = q.dims();
        let dv = v.dims()[3];
        let (t, hw, v0) = (self.frames, self.frame_len, self.video_start());
        let nv = t * hw;
        let device = q.device();
        let options = AttentionOptions::with_scale(scale);
        let part = |x: &Tensor<B, 4>, start: usize, len: usize| x.clone().narrow(2, start, len);
        let (qv, kv, vv) = (part(&q, v0, nv), part(&k, v0, nv), part(&v, v0, nv));

        // softmax(Q_j* K_i^T) V_i for every key frame i: query frame j*(i) gathered in front of
        // key frame i, one block-diagonal call.
        let gather: Vec<usize> = heads
            .iter()
            .enumerate()
            .flat_map(|(i, &h)| (0..t).map(move |fk| i * t + stats.representative(h, fk)))
            .collect();
        let qg =
            qv.clone().reshape([p * t, hw, d]).select(0, index_tensor::<B>(gather, &device)).reshape([1, p, nv, d]);
        let frames = attention_with_plan(qg, kv.clone(), vv.clone(), None, &self.diagonal.with_scale(scale))?.output;

        // out[f] = sum_i M[f, i] P_i V_i, then the text term.
        let video_mass: Vec<f64> = heads
            .iter()
            .flat_map(|&h| (0..t).flat_map(move |fq| (0..t).map(move |fk| stats.mass(h, fq, fk))))
            .collect();
        let dtype = q.dtype();
        let mixing = Tensor::<B, 3>::from_data(TensorData::new(video_mass, [p, t, t]), (&device, dtype));
        let mut out = mixing.matmul(frames.reshape([p, t, hw * dv])).reshape([p, t, hw, dv]);
        let text = self.text();
        let anchor_column = if text.len > 0 { t } else { 0 };
        let anchor: Vec<f64> =
            heads.iter().flat_map(|&h| (0..t).map(move |fq| stats.mass(h, fq, anchor_column))).collect();
        let anchor_at =
            |s: usize, len: usize| dense_attention(qv.clone(), part(&k, s, len), part(&v, s, len), None, options);
        let a = if text.len > 0 { anchor_at(self.text_start(), text.len)? } else { anchor_at(v0, hw)? };
        let lse_dtype = a.lse.dtype();
        let anchor_mass = Tensor::<B, 2>::from_data(TensorData::new(anchor.clone(), [p, t]), (&device, dtype));
        if text.len > 0 {
            out = out + a.output.reshape([p, t, hw, dv]) * anchor_mass.clone().reshape([p, t, 1, 1]);
        }
        let log_mass: Vec<f64> = anchor.iter().map(|&x| x.max(1e-30).ln()).collect();
        let log_mass = Tensor::<B, 2>::from_data(TensorData::new(log_mass, [p, t]), (&device, lse_dtype));
        let lse = a.lse.reshape([p, t, hw]) - log_mass.reshape([p, t, 1]);

        // Exact rows: frame 0 and the text.
        let exact = |s: usize, len: usize| dense_attention(part(&q, s, len), k.clone(), v.clone(), None, options);
        let f0 = exact(v0, hw)?;
        let later = |x: Tensor<B, 4>, c: usize| x.reshape([1, p, nv, c]).narrow(2, hw, nv - hw);
        let mut outs = vec![f0.output, later(out.reshape([1, p, nv, dv]), dv)];
        let mut lses = vec![f0.lse.reshape([1, p, hw, 1]), later(lse.reshape([1, p, nv, 1]), 1)];
        if text.len > 0 {
            let tx = exact(self.text_start(), text.len)?;
            let at = if text.placement == TextPlacement::Before { 0 } else { 2 };
            outs.insert(at, tx.output);
            lses.insert(at, tx.lse.reshape([1, p, text.len, 1]));
        }
        let n = self.layout.seq_len();
        Ok(AttentionOutput { output: Tensor::cat(outs, 2), lse: Tensor::cat(lses, 2).reshape([1, p, n]) })
    }

    /// Pairs a pattern head computes, over the `n x n` of the sequence.
    pub(crate) fn density(&self) -> f64 {
        let (t, hw, text) = (self.frames as f64, self.frame_len as f64, self.text().len as f64);
        let n = self.layout.seq_len() as f64;
        let anchor = if text > 0.0 { text } else { hw };
        ((text + hw) * n + t * hw * hw + t * hw * anchor) / (n * n)
    }
}
