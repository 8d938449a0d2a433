//! Online profiling of smart attention: sampled query rows, their exact output, and the error of
//! the spatial and the temporal mask against it, per (batch, head).

use burn::tensor::{DType, Tensor, TensorData};

use super::band::{Band, HeadClass};
use crate::canvas::{Token, TokenOrder, VideoLayout};
use crate::glue::{index_tensor, to_f64_vec};
use crate::rng::SplitMix;

/// `samples` distinct video positions of the sequence (natural order), ascending, drawn
/// uniformly from the seed (Floyd's algorithm: no per-token table).
pub(crate) fn sample_rows(layout: &VideoLayout, samples: usize, seed: u64) -> Vec<usize> {
    let n = layout.video_len();
    let mut rng = SplitMix::new(seed);
    let mut picked = std::collections::BTreeSet::new();
    for j in n - samples..n {
        let t = rng.below(j + 1);
        if !picked.insert(t) {
            picked.insert(j);
        }
    }
    picked.into_iter().map(|i| layout.video_range().start + i).collect()
}

/// Per key position and class: its group (`-1` for text), and whether it is always visible
/// (text, and group 0 with the sink), as `[1, n]` rows for a device-side mask. Built once per
/// module (they depend only on the layout and the band).
#[derive(Debug)]
pub(crate) struct KeyTables {
    /// Spatial, temporal.
    group: [Vec<f32>; 2],
    always: [Vec<f32>; 2],
}

impl KeyTables {
    pub(crate) fn new(layout: &VideoLayout, band: &Band) -> Self {
        let table = |class| {
            let n = layout.seq_len();
            let (mut group, mut always) = (Vec::with_capacity(n), Vec::with_capacity(n));
            for p in 0..n {
                match layout.token_at(p, TokenOrder::Natural) {
                    Token::Video(c) => {
                        let g = band.group_of(class, c);
                        group.push(g as f32);
                        always.push(f32::from(band.sink && g == 0));
                    }
                    Token::Text(_) => {
                        group.push(-1.0);
                        always.push(1.0);
                    }
                }
            }
            (group, always)
        };
        let (spatial, temporal) = (table(HeadClass::Spatial), table(HeadClass::Temporal));
        Self { group: [spatial.0, temporal.0], always: [spatial.1, temporal.1] }
    }
}

/// Mean squared error of the spatial and of the temporal output of the sampled rows against
/// their exact output, per (batch, head), row-major `[b * h]`.
///
/// The scores of the sampled rows are computed once; `p = exp(scores - rowmax)` (f32) serves the
/// exact output and both masked ones (a 0/1 mask built on the device from per-key group ids):
/// `out = (p * mask) v / sum(p * mask)`. Every mask keeps the query's own group, so a masked
/// sum is zero only if all its scores underflow far below the row's maximum (then clamped).
/// Half-precision scores and `p v` run in the input dtype (burn matmuls accumulate in f32), on
/// scaled queries and normalised rows: enough to rank two errors that differ by orders of
/// magnitude.
///
/// # Shapes
/// - q, k `[b, h, n, d]`, v `[b, h, n, dv]` (natural order), bias `[b or 1, h or 1, n]`
#[allow(clippy::too_many_arguments)]
pub(crate) fn profile<B: burn::tensor::backend::Backend>(
    q: &Tensor<B, 4>,
    k: &Tensor<B, 4>,
    v: &Tensor<B, 4>,
    bias: Option<&Tensor<B, 3>>,
    keys: &KeyTables,
    width: usize,
    rows: &[usize],
    scale: f64,
) -> (Vec<f64>, Vec<f64>) {
    let [b, h, n, _] = q.dims();
    let device = q.device();
    let s = rows.len();
    let dtype = q.dtype();
    // Accumulations in f32 at least (f64 stays f64).
    let wide = match dtype {
        DType::F16 | DType::BF16 => DType::F32,
        other => other,
    };
    let row = |v: Vec<f32>, shape: [usize; 2]| Tensor::<B, 2>::from_data(TensorData::new(v, shape), (&device, wide));
    // Scaled before the matmul: half-precision scores stay in range.
    let qs = q.clone().select(2, index_tensor::<B>(rows.iter().copied(), &device)).mul_scalar(scale);
    let mut scores = qs.matmul(k.clone().swap_dims(2, 3)).cast(wide);
    if let Some(bias) = bias {
        scores = scores + bias.clone().cast(wide).unsqueeze_dim::<4>(2);
    }
    // A finite floor: a row whose keys a bias masks out entirely gives zeros, not NaN.
    let max = scores.clone().max_dim(3).clamp_min(-1e30);
    let p = (scores - max).exp();
    // Rows normalised before the matmul: `p v` stays within the values' range in half precision.
    let out = |p: Tensor<B, 4>| {
        let den = p.clone().sum_dim(3).clamp_min(1e-30);
        (p / den).cast(v.dtype()).matmul(v.clone()).cast(wide)
    };
    let exact = out(p.clone());
    let mse = |class: HeadClass| {
        let c = (class == HeadClass::Temporal) as usize;
        let (group, always) = (&keys.group[c], &keys.always[c]);
        let row_groups: Vec<f32> = rows.iter().map(|&r| group[r]).collect();
        let near = (row(row_groups, [s, 1]) - row(group.clone(), [1, n])).abs().lower_equal_elem(width as f64 + 0.5);
        let mask = (near.float().cast(wide) + row(always.clone(), [1, n])).clamp_max(1.0);
        let masked = out(p.clone() * mask.reshape([1, 1, s, n]));
        (masked - exact.clone()).powi_scalar(2).mean_dim(3).mean_dim(2).reshape([b * h])
    };
    // One read back for both classes.
    let both = to_f64_vec(Tensor::cat(vec![mse(HeadClass::Spatial), mse(HeadClass::Temporal)], 0));
    (both[..b * h].to_vec(), both[b * h..].to_vec())
}
