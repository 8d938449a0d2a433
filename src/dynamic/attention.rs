//! Dynamic block-sparse attention as a module: estimate, select, attend, per call.

use std::sync::Arc;

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use dit_attention_kernels::dynamic::SelectJob;

use super::masses::{CHUNK_BLOCKS, block_masses};
use super::schedule::{ThresholdSchedule, Thresholds};
use super::select::{BlockBudget, sample_positions};
use crate::attention::{CallPosition, attention_with_plan, check_backend};
use crate::canvas::{Canvas, TextSpec, TokenOrder, VideoLayout};
use crate::error::DitAttentionError;
use crate::glue::{BlockLists, BlockSelection, SparseAttentionBackend, unwrap, wrap};
use crate::mask::{BlockLayout, BlockPartition};
use crate::plan::KernelPlan;
use crate::reference::{AttentionOptions, AttentionOutput, check_qkv};
use crate::rng::call_seed;

/// Largest launch-grid dimension every runtime takes.
const GRID_LIMIT: usize = 65_535;

/// Configuration of [`DynamicSparseAttention`] (spec section 8).
#[derive(Config, Debug, PartialEq)]
pub struct DynamicSparseAttentionConfig {
    /// Latent canvas `[t, h, w]`; the video comes in natural order.
    pub canvas: [usize; 3],
    /// Text tokens before or after the video (default: none). Text and video are cut into
    /// blocks separately; text blocks are selected like video blocks.
    #[config(default = "TextSpec::none()")]
    pub text: TextSpec,
    /// Tokens per query and key block (default: 64).
    #[config(default = 64)]
    pub block: usize,
    /// Tokens sampled per block, the same for its queries and keys, at most `block` (default:
    /// 8). A ragged block shorter than this repeats its tokens.
    #[config(default = 8)]
    pub samples: usize,
    /// The first `sink_blocks` query blocks keep every key block, and every query block keeps
    /// the first `sink_blocks` key blocks (default: 4; with text before the video these are
    /// text blocks).
    #[config(default = 4)]
    pub sink_blocks: usize,
    /// `tau`, `min_ratio`, `max_ratio` per denoising step (default: the spec's logistic ramp from
    /// 0.98 / 0.12 / 1.0 to 0.90 / 0.10 / 0.8 over 50 steps).
    #[config(default = "ThresholdSchedule::default()")]
    pub schedule: ThresholdSchedule,
    /// Seed of the sampled tokens, mixed with the call's layer and step (default: 0).
    #[config(default = 0)]
    pub seed: u64,
    /// Score scale (default: `1 / sqrt(head_dim)`).
    #[config(default = "None")]
    pub scale: Option<f64>,
}

impl DynamicSparseAttentionConfig {
    /// Validates the config and cuts the sequence into blocks (once; modules keep the cut).
    pub fn init(&self) -> crate::Result<DynamicSparseAttention> {
        let layout = VideoLayout::untiled(Canvas::from_slice(&self.canvas)?, self.text);
        let blocks = BlockLayout::new(&layout, TokenOrder::Natural, BlockPartition::Uniform(self.block))?;
        if self.samples == 0 || self.samples > self.block {
            return Err(DitAttentionError::Invalid(format!(
                "dynamic attention samples {} tokens per block; it needs between 1 and the block size {}",
                self.samples, self.block
            )));
        }
        if blocks.len() * self.block.div_ceil(16) > GRID_LIMIT {
            return Err(DitAttentionError::Invalid(format!(
                "{} blocks of {} tokens exceed the kernels' launch grid ({GRID_LIMIT}); use larger blocks",
                blocks.len(),
                self.block
            )));
        }
        self.schedule.validate()?;
        AttentionOptions { scale: self.scale }.validate()?;
        let starts = blocks.starts().iter().map(|&s| s as u32).collect();
        Ok(DynamicSparseAttention {
            config: self.clone(),
            prepared: Prepared { layout, blocks: Arc::new(blocks), shape: KernelPlan::dense_blocks(starts, 1.0) },
        })
    }
}

#[derive(Debug, Clone)]
struct Prepared {
    layout: VideoLayout,
    blocks: Arc<BlockLayout>,
    /// Dense over the block cut: the shape checks of a call, and its dense fast path.
    shape: KernelPlan,
}

/// What one dynamic call computed and kept.
#[derive(Debug, Clone)]
pub struct DynamicOutput<B: SparseAttentionBackend> {
    /// `[b, h, n, dv]`.
    pub output: Tensor<B, 4>,
    /// `[b, h, n]`.
    pub lse: Tensor<B, 3>,
    /// The thresholds of this call's step.
    pub thresholds: Thresholds,
    /// Estimated masses and kept key blocks per (batch-head, query block), rows
    /// `bh * nqb + qb` with `bh = batch * heads + head`; `None` when the thresholds keep every
    /// block (dense, no estimate).
    pub selection: Option<BlockSelection<B>>,
    /// The block cut.
    pub blocks: Arc<BlockLayout>,
}

impl<B: SparseAttentionBackend> DynamicOutput<B> {
    /// Fraction of query-key pairs computed, over every (batch, head).
    pub fn density(&self) -> f64 {
        let per_head = self.head_densities();
        per_head.iter().sum::<f64>() / per_head.len() as f64
    }

    /// Fraction of query-key pairs computed per (batch, head), row-major `[b * h]`, counted on
    /// the device (one value per query block read back); all 1 when the call ran dense.
    pub fn head_densities(&self) -> Vec<f64> {
        let Some(sel) = &self.selection else {
            let [b, h, _, _] = self.output.dims();
            return vec![1.0; b * h];
        };
        let nb = self.blocks.len();
        let rows = sel.counts.dims()[0];
        let device = sel.counts.device();
        let len = |b: usize| self.blocks.range(b).len();
        // Key tokens per row on the device (0 for the padding index `nb`); one int per row comes
        // back, and the pairs are summed exactly on the host.
        let lens: Vec<i64> = (0..nb).map(|b| len(b) as i64).chain([0]).collect();
        let lens = Tensor::<B, 1, Int>::from_data(TensorData::new(lens, [nb + 1]), &device);
        let keys = lens.select(0, sel.indices.clone().reshape([rows * nb])).reshape([rows, nb]).sum_dim(1);
        let keys: Vec<i64> = keys.into_data().iter::<i64>().collect();
        let n = self.blocks.layout().seq_len() as f64;
        keys.chunks(nb)
            .map(|head| head.iter().enumerate().map(|(qb, &k)| len(qb) as f64 * k as f64).sum::<f64>() / (n * n))
            .collect()
    }
}

/// Dynamic block-sparse attention (no parameters): swap it in for a DiT's attention core.
#[derive(Module, Debug, Clone)]
pub struct DynamicSparseAttention {
    #[module(skip)]
    config: DynamicSparseAttentionConfig,
    #[module(skip)]
    prepared: Prepared,
}

impl DynamicSparseAttention {
    /// The configuration.
    pub fn config(&self) -> &DynamicSparseAttentionConfig {
        &self.config
    }

    /// The block cut.
    pub fn blocks(&self) -> &BlockLayout {
        &self.prepared.blocks
    }

    /// The sampled tokens of a call at `position` (`samples` sequence positions per block,
    /// block after block; `None`: a call outside any schedule, step 0).
    pub fn sampled_positions(&self, position: Option<CallPosition>) -> Vec<usize> {
        let p = position.unwrap_or_default();
        sample_positions(&self.prepared.blocks, self.config.samples, call_seed(self.config.seed, p.layer, p.step))
    }

    /// The selection budget for the thresholds of a step.
    pub fn budget(&self, thresholds: Thresholds) -> BlockBudget {
        BlockBudget::new(
            self.prepared.blocks.len(),
            thresholds.min_ratio,
            thresholds.max_ratio,
            self.config.sink_blocks,
        )
    }

    /// The estimate and the selection alone: the thresholds of the call's step and, unless they
    /// keep every block, the masses and kept key blocks of every (batch-head, query block).
    ///
    /// # Shapes
    /// - q, k `[b, h, n, d]`, v `[b, h, n, dv]` (checked, not read), bias `[b or 1, h or 1, n]`
    #[allow(clippy::type_complexity)]
    pub fn select<B: SparseAttentionBackend>(
        &self,
        q: &Tensor<B, 4>,
        k: &Tensor<B, 4>,
        v: &Tensor<B, 4>,
        bias: Option<&Tensor<B, 3>>,
        position: Option<CallPosition>,
    ) -> crate::Result<(Thresholds, Option<BlockSelection<B>>)> {
        check_qkv(q, k, v, bias)?;
        let p = &self.prepared;
        p.layout.check_seq_len(q.dims()[2])?;
        p.layout.check_seq_len(k.dims()[2])?;
        let [b, h, _, d] = q.dims();
        let scale = AttentionOptions { scale: self.config.scale }.scale_for(d);
        let thresholds = self.config.schedule.at(position.unwrap_or_default().step);
        if thresholds.keeps_everything() {
            return Ok((thresholds, None));
        }
        check_backend(q, k, v, &p.shape)?;
        // The estimate runs one engine head per (batch-head, chunk of key blocks).
        let chunks = p.blocks.len().div_ceil(CHUNK_BLOCKS);
        if b * h * chunks > GRID_LIMIT {
            return Err(DitAttentionError::Invalid(format!(
                "{b} x {h} batch-heads x {chunks} key chunks of the estimate (up to {CHUNK_BLOCKS} blocks each) exceed the kernels' launch grid ({GRID_LIMIT})"
            )));
        }

        // Masses from the sampled tokens (no gradient flows into the selection).
        let s = self.config.samples;
        let nb = p.blocks.len();
        let positions = self.sampled_positions(position);
        let bias = bias.map(|x| x.clone().detach());
        let masses = block_masses(q.clone().detach(), k.clone().detach(), bias, &positions, s, scale)?;
        let budget = self.budget(thresholds);
        let job = SelectJob {
            bh: b * h,
            nqb: nb,
            nkb: nb,
            tau: thresholds.tau as f32,
            k_min: budget.k_min,
            k_max: budget.k_max,
            sinks: budget.sinks,
        };
        Ok((thresholds, Some(B::dynamic_select(masses, &job))))
    }

    /// Attention output (a call outside any schedule: step 0's thresholds).
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

    /// Output, LSE and kept blocks of a call at `position` (its step picks the thresholds, its
    /// layer and step the sampled tokens), with an optional per-key bias (added to the sampled
    /// scores too).
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
    ) -> crate::Result<DynamicOutput<B>> {
        let (thresholds, selection) = self.select(&q, &k, &v, bias.as_ref(), position)?;
        let p = &self.prepared;
        let blocks = p.blocks.clone();
        let scale = AttentionOptions { scale: self.config.scale }.scale_for(q.dims()[3]);
        let Some(selection) = selection else {
            let out = attention_with_plan(q, k, v, bias, &p.shape.with_scale(scale))?;
            return Ok(DynamicOutput { output: out.output, lse: out.lse, thresholds, selection: None, blocks });
        };
        let out = self.attend(q, k, v, bias, &selection);
        Ok(DynamicOutput { output: out.output, lse: out.lse, thresholds, selection: Some(selection), blocks })
    }

    /// Attention over the key blocks a selection kept (from [`select`](Self::select), this call's
    /// or an earlier one's: reuse across steps is the caller's choice).
    ///
    /// # Shapes
    /// - q, k `[b, h, n, d]`, v `[b, h, n, dv]`, bias `[b or 1, h or 1, n]`
    /// - the selection's rows: `b * h * nqb`
    /// - output `[b, h, n, dv]`, lse `[b, h, n]`
    pub fn forward_selected<B: SparseAttentionBackend>(
        &self,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        bias: Option<Tensor<B, 3>>,
        selection: &BlockSelection<B>,
    ) -> crate::Result<AttentionOutput<B>> {
        self.check_selected(&q, &k, &v, bias.as_ref(), selection)?;
        check_selection(selection, self.prepared.blocks.len())?;
        Ok(self.attend(q, k, v, bias, selection))
    }

    /// [`forward_selected`](Self::forward_selected) without the check of the selection's
    /// contents (the shapes are still checked): no device work and no value read back before the
    /// attention, for a selection known to be valid, such as one [`select`](Self::select) made
    /// for this module and the same batch-heads, reused across steps.
    ///
    /// # Safety
    /// Every row of `selection` must list at most `nkb` key blocks (its count in `0..=nkb`),
    /// strictly ascending and below `nkb` (the module's blocks): the kernels index K and V with
    /// them unchecked, so other lists read out of bounds on the GPU.
    ///
    /// # Shapes
    /// As [`forward_selected`](Self::forward_selected).
    pub unsafe fn forward_selected_unchecked<B: SparseAttentionBackend>(
        &self,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        bias: Option<Tensor<B, 3>>,
        selection: &BlockSelection<B>,
    ) -> crate::Result<AttentionOutput<B>> {
        self.check_selected(&q, &k, &v, bias.as_ref(), selection)?;
        Ok(self.attend(q, k, v, bias, selection))
    }

    /// The inputs of [`forward_selected`](Self::forward_selected) and the selection's shapes.
    fn check_selected<B: SparseAttentionBackend>(
        &self,
        q: &Tensor<B, 4>,
        k: &Tensor<B, 4>,
        v: &Tensor<B, 4>,
        bias: Option<&Tensor<B, 3>>,
        selection: &BlockSelection<B>,
    ) -> crate::Result<()> {
        check_qkv(q, k, v, bias)?;
        let p = &self.prepared;
        p.layout.check_seq_len(q.dims()[2])?;
        p.layout.check_seq_len(k.dims()[2])?;
        check_backend(q, k, v, &p.shape)?;
        let [b, h, _, _] = q.dims();
        let nb = p.blocks.len();
        let rows = selection.indices.dims();
        if selection.counts.dims() != [b * h * nb] || rows != [b * h * nb, nb] {
            return Err(DitAttentionError::Shape {
                what: format!("block selection for {b} x {h} batch-heads and {nb} blocks (counts, indices)"),
                expected: vec![b * h * nb, b * h * nb, nb],
                got: vec![selection.counts.dims()[0], rows[0], rows[1]],
            });
        }
        Ok(())
    }

    /// [`forward_selected`](Self::forward_selected) on checked inputs and a selection this
    /// module made.
    fn attend<B: SparseAttentionBackend>(
        &self,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        bias: Option<Tensor<B, 3>>,
        selection: &BlockSelection<B>,
    ) -> AttentionOutput<B> {
        let p = &self.prepared;
        let [b, h, n, d] = q.dims();
        let dv = v.dims()[3];
        let scale = AttentionOptions { scale: self.config.scale }.scale_for(d);
        let lists = BlockLists {
            blocks: p.blocks.clone(),
            counts: selection.counts.clone(),
            indices: selection.indices.clone(),
            scale,
        };
        // Each (batch, head) has its own rows: flatten them into one batch of `b * h` heads.
        let flat = |x: Tensor<B, 4>, c: usize| unwrap(x.reshape([1, b * h, n, c]));
        let bias = bias.map(|x| unwrap(x.cast(q.dtype()).expand([b, h, n]).reshape([1, b * h, n])));
        let (out, lse) = B::sparse_attention_forward_lists(flat(q, d), flat(k, d), flat(v, dv), bias, &lists);
        AttentionOutput { output: wrap::<B, 4>(out).reshape([b, h, n, dv]), lse: wrap::<B, 3>(lse).reshape([b, h, n]) }
    }
}

/// A selection from elsewhere lists, per row, at most `nkb` key blocks, strictly ascending and
/// below `nkb` (the kernels index with them unchecked). Checked on the device with one scalar
/// read back; the lists are read back only to name a bad row.
fn check_selection<B: SparseAttentionBackend>(selection: &BlockSelection<B>, nkb: usize) -> crate::Result<()> {
    // Compared as floats (exact below 2^24): the lists may come in any int dtype.
    let (counts, indices) = (selection.counts.clone().float(), selection.indices.clone().float());
    let rows = counts.dims()[0];
    if rows == 0 || nkb == 0 {
        return check_selection_rows(selection, nkb);
    }
    let n = nkb as f64;
    let bad_count = counts.clone().lower_elem(0.0).bool_or(counts.clone().greater_elem(n));
    let pos = Tensor::<B, 1, Int>::arange(0..nkb as i64, &counts.device()).float();
    let live = pos.unsqueeze::<2>().expand([rows, nkb]).lower(counts.unsqueeze_dim::<2>(1).expand([rows, nkb]));
    let out_of_range = indices.clone().lower_elem(0.0).bool_or(indices.clone().greater_equal_elem(n));
    let mut bad = bad_count.int().sum() + live.clone().bool_and(out_of_range).int().sum();
    if nkb > 1 {
        let (earlier, later) = (indices.clone().narrow(1, 0, nkb - 1), indices.narrow(1, 1, nkb - 1));
        let not_ascending = later.lower_equal(earlier);
        bad = bad + live.narrow(1, 1, nkb - 1).bool_and(not_ascending).int().sum();
    }
    if bad.into_scalar().elem::<i64>() == 0 {
        return Ok(());
    }
    check_selection_rows(selection, nkb)
}

/// The host check of every row, naming the first bad one.
fn check_selection_rows<B: SparseAttentionBackend>(selection: &BlockSelection<B>, nkb: usize) -> crate::Result<()> {
    let counts: Vec<i64> = selection.counts.clone().into_data().iter::<i64>().collect();
    let indices: Vec<i64> = selection.indices.clone().into_data().iter::<i64>().collect();
    for (r, &c) in counts.iter().enumerate() {
        let row = indices.get(r * nkb..r * nkb + c.max(0) as usize);
        let valid = (0..=nkb as i64).contains(&c)
            && row.is_some_and(|row| {
                row.iter().all(|&j| (0..nkb as i64).contains(&j)) && row.windows(2).all(|w| w[0] < w[1])
            });
        if !valid {
            return Err(DitAttentionError::Invalid(format!(
                "block selection row {r} lists {c} key blocks {:?}; each row needs at most {nkb} distinct blocks below {nkb}, ascending",
                row.unwrap_or(&[])
            )));
        }
    }
    Ok(())
}
