//! Pattern attention and Combined attention (spec section 8) written straight from the spec in
//! plain f64 Rust: the mass map, the sparsity and similarity statistics from the sampled rows,
//! the per-head choice, the cross-frame shared softmax. Independent of the crate's code (the
//! sampled positions are taken from the module).
#![allow(dead_code)]

use dit_attention::combined::HeadChoice;
use dit_attention::{Canvas, TextPlacement, TextSpec};

use super::SeedRng;

/// Geometry of one problem.
#[derive(Debug, Clone, Copy)]
pub struct Geo {
    pub canvas: Canvas,
    pub text: TextSpec,
    pub d: usize,
    pub dv: usize,
}

impl Geo {
    pub fn n(&self) -> usize {
        self.canvas.len() + self.text.len
    }
    pub fn hw(&self) -> usize {
        let [_, h, w] = self.canvas.dims();
        h * w
    }
    pub fn frames(&self) -> usize {
        self.canvas.dims()[0]
    }
    pub fn video_start(&self) -> usize {
        if self.text.placement == TextPlacement::Before { self.text.len } else { 0 }
    }
    pub fn text_range(&self) -> std::ops::Range<usize> {
        let s = if self.text.placement == TextPlacement::Before { 0 } else { self.canvas.len() };
        s..s + self.text.len
    }
    pub fn frame_range(&self, f: usize) -> std::ops::Range<usize> {
        let s = self.video_start() + f * self.hw();
        s..s + self.hw()
    }
}

/// One head's q, k, v (row-major `[n, d]`, `[n, d]`, `[n, dv]`).
pub struct Head<'a> {
    pub q: &'a [f64],
    pub k: &'a [f64],
    pub v: &'a [f64],
}

impl Head<'_> {
    fn score(&self, g: &Geo, i: usize, j: usize, scale: f64) -> f64 {
        (0..g.d).map(|x| self.q[i * g.d + x] * self.k[j * g.d + x]).sum::<f64>() * scale
    }

    /// Softmax of query `i` over `keys`: (probabilities, lse).
    fn softmax(&self, g: &Geo, i: usize, keys: &[usize], scale: f64) -> (Vec<f64>, f64) {
        let s: Vec<f64> = keys.iter().map(|&j| self.score(g, i, j, scale)).collect();
        let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
        (s.iter().map(|x| (x - m).exp() / z).collect(), m + z.ln())
    }

    /// Attention of query `i` over `keys`: (output, lse).
    fn attend(&self, g: &Geo, i: usize, keys: &[usize], scale: f64) -> (Vec<f64>, f64) {
        let (p, lse) = self.softmax(g, i, keys, scale);
        let out = (0..g.dv).map(|x| keys.iter().zip(&p).map(|(&j, w)| w * self.v[j * g.dv + x]).sum()).collect();
        (out, lse)
    }
}

/// The statistics of one head: mass `[T][T + 1]`, top mass, similarity.
pub struct BruteStats {
    pub mass: Vec<Vec<f64>>,
    pub top_mass: f64,
    pub similarity: f64,
}

pub fn brute_stats(g: &Geo, head: &Head, spatial: &[usize], scale: f64, top_fraction: f64) -> BruteStats {
    let (t, n) = (g.frames(), g.n());
    let all: Vec<usize> = (0..n).collect();
    // probs[f][a] over all keys.
    let probs: Vec<Vec<Vec<f64>>> = (0..t)
        .map(|f| spatial.iter().map(|&r| head.softmax(g, g.frame_range(f).start + r, &all, scale).0).collect())
        .collect();
    let mut mass = vec![vec![0.0; t + 1]; t];
    for (row, rows) in mass.iter_mut().zip(&probs) {
        for p in rows {
            for (fk, m) in row.iter_mut().enumerate() {
                let keys = if fk < t { g.frame_range(fk) } else { g.text_range() };
                *m += keys.map(|j| p[j]).sum::<f64>() / spatial.len() as f64;
            }
        }
    }
    let top = ((top_fraction * n as f64).ceil() as usize).clamp(1, n);
    let top_mass = probs[0]
        .iter()
        .map(|p| {
            let mut s = p.clone();
            s.sort_by(|a, b| b.total_cmp(a));
            s[..top].iter().sum::<f64>()
        })
        .sum::<f64>()
        / spatial.len() as f64;
    let similarity = if t == 1 {
        1.0
    } else {
        let mut total = 0.0;
        for fk in 0..t {
            let vecs: Vec<Vec<f64>> = (0..t)
                .map(|f| {
                    let mut x = vec![];
                    for p in &probs[f] {
                        let part: Vec<f64> = g.frame_range(fk).map(|j| p[j]).collect();
                        let s: f64 = part.iter().sum();
                        x.extend(part.iter().map(|y| y / s));
                    }
                    let norm = x.iter().map(|y| y * y).sum::<f64>().sqrt();
                    x.iter().map(|y| y / norm).collect()
                })
                .collect();
            for a in 0..t {
                for b in 0..t {
                    if a != b {
                        total += vecs[a].iter().zip(&vecs[b]).map(|(x, y)| x * y).sum::<f64>();
                    }
                }
            }
        }
        total / (t * t * (t - 1)) as f64
    };
    BruteStats { mass, top_mass, similarity }
}

/// Pattern attention of one head from its statistics: (output `[n, dv]`, lse `[n]`).
pub fn brute_pattern(g: &Geo, head: &Head, stats: &BruteStats, scale: f64) -> (Vec<f64>, Vec<f64>) {
    let (t, n, hw) = (g.frames(), g.n(), g.hw());
    let all: Vec<usize> = (0..n).collect();
    let text: Vec<usize> = g.text_range().collect();
    let (mut out, mut lse) = (vec![0.0; n * g.dv], vec![0.0; n]);
    let rep = |fk: usize| (0..t).fold(0, |b, j| if stats.mass[j][fk] > stats.mass[b][fk] { j } else { b });
    for i in 0..n {
        let in_frame = (0..t).find(|&f| g.frame_range(f).contains(&i));
        let (o, l) = match in_frame {
            None | Some(0) => head.attend(g, i, &all, scale),
            Some(f) => {
                let r = i - g.frame_range(f).start;
                let mut o = vec![0.0; g.dv];
                for fk in 0..t {
                    let keys: Vec<usize> = g.frame_range(fk).collect();
                    let (p, _) = head.attend(g, g.frame_range(rep(fk)).start + r, &keys, scale);
                    for x in 0..g.dv {
                        o[x] += stats.mass[f][fk] * p[x];
                    }
                }
                let (anchor, column): (Vec<usize>, usize) =
                    if text.is_empty() { (g.frame_range(0).collect(), 0) } else { (text.clone(), t) };
                let (a, la) = head.attend(g, i, &anchor, scale);
                if !text.is_empty() {
                    for x in 0..g.dv {
                        o[x] += stats.mass[f][t] * a[x];
                    }
                }
                (o, la - stats.mass[f][column].max(1e-30).ln())
            }
        };
        out[i * g.dv..(i + 1) * g.dv].copy_from_slice(&o);
        lse[i] = l;
        let _ = hw;
    }
    (out, lse)
}

/// The spec's choice.
pub fn brute_choice(stats: &BruteStats, sparse_mass: f64, similarity: f64) -> HeadChoice {
    if stats.top_mass <= sparse_mass && stats.similarity > similarity {
        HeadChoice::Pattern
    } else {
        HeadChoice::Dynamic
    }
}

/// `[b * h]` heads of q, k, v; head `i` repeats one frame's values in every frame when
/// `periodic[i]` (text random).
pub fn make_inputs(g: &Geo, periodic: &[bool], sharpness: f64, seed: u64) -> [Vec<f64>; 3] {
    let mut rng = SeedRng::new(seed);
    let (n, hw) = (g.n(), g.hw());
    let mut out = [vec![], vec![], vec![]];
    for &per in periodic {
        for (x, c, gain) in [(0, g.d, sharpness), (1, g.d, sharpness), (2, g.dv, 1.0)] {
            let mut head: Vec<f64> = rng.normals(n * c).into_iter().map(|y| y * gain).collect();
            if per {
                let f0 = g.frame_range(0).start;
                for f in 1..g.frames() {
                    let s = g.frame_range(f).start;
                    for p in 0..hw * c {
                        head[s * c + p] = head[f0 * c + p];
                    }
                }
            }
            out[x].extend(head);
        }
    }
    out
}

/// Combined attention on a kernel backend against the same module on the f64 reference
/// backend: a frame-periodic head (pattern), a sharp random head (dynamic) and a random one.
/// `$tol`: the statistics' and pattern outputs' error in f32 (burn's matmuls run in TF32 on
/// CUDA).
#[macro_export]
macro_rules! gpu_combined_test {
    ($fused:ty, $tol:expr) => {
        #[test]
        fn combined_attention_matches_the_cpu_reference() {
            use burn::tensor::{Tensor, TensorData};
            use dit_attention::combined::{CombinedAttentionConfig, HeadChoice};
            use dit_attention::dynamic::{ThresholdSchedule, Thresholds};
            use dit_attention::{CallPosition, Canvas, SparseAttentionBackend, TextSpec};

            use $crate::common::combined::{Geo, make_inputs};
            use $crate::common::merge::fopts;
            use $crate::common::{B64, rel_err, values};

            let g = Geo { canvas: Canvas::new(3, 4, 4).unwrap(), text: TextSpec::before(3), d: 8, dv: 4 };
            let n = g.n();
            let [q, k, v] = make_inputs(&g, &[true, false, false], 1.0, 17);
            let module = CombinedAttentionConfig::new([3, 4, 4])
                .with_text(TextSpec::before(3))
                .with_pattern_samples(4)
                .with_block(4)
                .with_block_samples(2)
                .with_sink_blocks(1)
                .with_schedule(ThresholdSchedule::Constant(Thresholds { tau: 0.7, min_ratio: 0.1, max_ratio: 0.8 }))
                .init()
                .unwrap();
            fn run<B: SparseAttentionBackend>(
                m: &dit_attention::CombinedAttention,
                x: [&[f64]; 3],
                n: usize,
            ) -> (Vec<HeadChoice>, Vec<f64>, Vec<f64>, dit_attention::combined::PatternStats) {
                let device: B::Device = Default::default();
                let t = |v: &[f64], c| {
                    Tensor::<B, 4>::from_data(TensorData::new(v.to_vec(), [1, 3, n, c]), fopts::<B>(&device))
                };
                let out = m.forward_at(t(x[0], 8), t(x[1], 8), t(x[2], 4), Some(CallPosition::new(1, 20))).unwrap();
                (out.heads, values(out.output), values(out.lse), out.stats.unwrap())
            }
            let (want_heads, want, want_lse, want_stats) = run::<B64>(&module, [&q, &k, &v], n);
            let (heads, got, got_lse, stats) = run::<$fused>(&module, [&q, &k, &v], n);
            assert_eq!(want_heads[0], HeadChoice::Pattern, "{want_stats:?}");
            for i in 0..3 {
                let tol: f64 = $tol;
                assert!((stats.similarity[i] - want_stats.similarity[i]).abs() < tol, "{stats:?} vs {want_stats:?}");
                assert!((stats.top_mass[i] - want_stats.top_mass[i]).abs() < tol);
                assert!(rel_err(&stats.mass[i], &want_stats.mass[i]) < tol);
            }
            assert_eq!(heads, want_heads);
            // Pattern heads: the whole row set; dynamic heads may keep other blocks where f32
            // masses tie differently, so only pattern heads are compared here (the dynamic
            // kernels have their own suite).
            for (i, &c) in heads.iter().enumerate() {
                if c == HeadChoice::Pattern {
                    let (a, b) = (i * n * 4, (i + 1) * n * 4);
                    let tol: f64 = 2.0 * $tol;
                    assert!(rel_err(&got[a..b], &want[a..b]) < tol, "head {i}: {}", rel_err(&got[a..b], &want[a..b]));
                    assert!(rel_err(&got_lse[i * n..(i + 1) * n], &want_lse[i * n..(i + 1) * n]) < tol);
                }
            }
        }

        /// The statistics on the kernel backend (the frame-statistics and top-sum kernels)
        /// against the f64 reference backend's burn-op composite, with text before, after and
        /// none, frame counts from 1 to 5, frames longer than a cube has units, and a key frame
        /// that no query attends to (zero mass in f32 and f64 alike).
        #[test]
        fn combined_statistics_match_the_cpu_reference() {
            use burn::tensor::{Tensor, TensorData};
            use dit_attention::combined::CombinedAttentionConfig;
            use dit_attention::{CallPosition, Canvas, SparseAttentionBackend, TextSpec};

            use $crate::common::combined::{Geo, make_inputs};
            use $crate::common::merge::fopts;
            use $crate::common::{B64, rel_err};

            for ([frames, h, w], text, dead_frame, seed) in [
                ([1, 5, 7], TextSpec::none(), false, 1),
                ([2, 5, 7], TextSpec::after(5), false, 2),
                ([5, 5, 7], TextSpec::before(3), false, 3),
                ([4, 5, 7], TextSpec::none(), false, 4),
                ([2, 17, 17], TextSpec::after(3), false, 5),
                ([3, 4, 5], TextSpec::before(2), true, 6),
                // Past one group of frames the row-statistics kernel reduces at once (8).
                ([11, 3, 4], TextSpec::before(4), false, 7),
            ] {
                let g = Geo { canvas: Canvas::new(frames, h, w).unwrap(), text, d: 8, dv: 4 };
                let n = g.n();
                let [mut q, mut k, v] = make_inputs(&g, &[false, true, false], 2.0, seed);
                if dead_frame {
                    // Positive queries against keys of -1000 in frame 1: scores near -1e4 there.
                    q.iter_mut().for_each(|x| *x = x.abs() + 0.5);
                    for head in 0..3 {
                        for t in g.frame_range(1) {
                            k[(head * n + t) * 8..(head * n + t + 1) * 8].fill(-1000.0);
                        }
                    }
                }
                let module = CombinedAttentionConfig::new([frames, h, w])
                    .with_text(text)
                    .with_pattern_samples(6)
                    .with_block(8)
                    .with_block_samples(2)
                    .init()
                    .unwrap();
                fn stats<B: SparseAttentionBackend>(
                    m: &dit_attention::CombinedAttention,
                    x: [&[f64]; 3],
                    n: usize,
                ) -> dit_attention::combined::PatternStats {
                    let device: B::Device = Default::default();
                    let t = |v: &[f64], c| {
                        Tensor::<B, 4>::from_data(TensorData::new(v.to_vec(), [1, 3, n, c]), fopts::<B>(&device))
                    };
                    let out = m.forward_at(t(x[0], 8), t(x[1], 8), t(x[2], 4), Some(CallPosition::new(2, 30))).unwrap();
                    out.stats.unwrap()
                }
                let want = stats::<B64>(&module, [&q, &k, &v], n);
                let got = stats::<$fused>(&module, [&q, &k, &v], n);
                let tol: f64 = $tol;
                for i in 0..3 {
                    let what = format!("{frames}x{h}x{w}, {text:?}, head {i}: {got:?} vs {want:?}");
                    assert!(got.similarity[i].is_finite(), "{what}");
                    assert!((got.similarity[i] - want.similarity[i]).abs() < tol, "{what}");
                    assert!((got.top_mass[i] - want.top_mass[i]).abs() < tol, "{what}");
                    assert!(rel_err(&got.mass[i], &want.mass[i]) < tol, "{what}");
                }
            }
        }

        /// `statistics_at` on rows longer than a cube's registers hold at any unit count (past
        /// 1,024 x 64 scores: the top mass from a softmax and the top-sum kernel reading memory)
        /// against the f64 reference backend.
        #[test]
        fn combined_statistics_of_long_rows_match_the_cpu_reference() {
            use burn::tensor::{Tensor, TensorData};
            use dit_attention::combined::CombinedAttentionConfig;
            use dit_attention::{CallPosition, Canvas, SparseAttentionBackend, TextSpec};

            use $crate::common::B64;
            use $crate::common::combined::{Geo, make_inputs};
            use $crate::common::merge::fopts;

            let canvas = [2, 180, 190];
            let g = Geo { canvas: Canvas::from_slice(&canvas).unwrap(), text: TextSpec::after(4), d: 8, dv: 8 };
            let n = g.n();
            assert!(n > 1024 * 64);
            let [q, k, _] = make_inputs(&g, &[false, true], 2.0, 8);
            let module = CombinedAttentionConfig::new(canvas).with_text(g.text).with_pattern_samples(3).init().unwrap();
            fn stats<B: SparseAttentionBackend>(
                m: &dit_attention::CombinedAttention,
                x: [&[f64]; 2],
                n: usize,
            ) -> dit_attention::combined::PatternStats {
                let device: B::Device = Default::default();
                let t = |v: &[f64]| {
                    Tensor::<B, 4>::from_data(TensorData::new(v.to_vec(), [1, 2, n, 8]), fopts::<B>(&device))
                };
                m.statistics_at(&t(x[0]), &t(x[1]), Some(CallPosition::new(2, 30))).unwrap().unwrap()
            }
            let want = stats::<B64>(&module, [&q, &k], n);
            let got = stats::<$fused>(&module, [&q, &k], n);
            let tol: f64 = $tol;
            for i in 0..2 {
                let what = format!("head {i}: {got:?} vs {want:?}");
                assert!((got.similarity[i] - want.similarity[i]).abs() < tol, "{what}");
                assert!((got.top_mass[i] - want.top_mass[i]).abs() < tol, "{what}");
                assert!($crate::common::rel_err(&got.mass[i], &want.mass[i]) < tol, "{what}");
            }
        }

        /// KV merging stacked on Combined on the kernel backend (matching, merge and attention
        /// over the padded merged keys as kernels) against the f64 reference backend. Every
        /// head dynamic and every block kept: the selection is the dynamic suite's subject.
        #[test]
        fn combined_kv_merge_matches_the_cpu_reference() {
            use burn::tensor::{Tensor, TensorData};
            use dit_attention::combined::{CombinedAttentionConfig, HeadChoice, KvMergeConfig};
            use dit_attention::dynamic::{ThresholdSchedule, Thresholds};
            use dit_attention::{CallPosition, Canvas, MergeAmount, SparseAttentionBackend, TextSpec};

            use $crate::common::combined::{Geo, make_inputs};
            use $crate::common::merge::fopts;
            use $crate::common::{B64, rel_err, values};

            let g = Geo { canvas: Canvas::new(3, 4, 4).unwrap(), text: TextSpec::before(3), d: 8, dv: 4 };
            let n = g.n();
            let [q, k, v] = make_inputs(&g, &[false, false], 1.0, 23);
            let all = ThresholdSchedule::Constant(Thresholds { tau: 1.0, min_ratio: 0.0, max_ratio: 1.0 });
            let module = CombinedAttentionConfig::new([3, 4, 4])
                .with_text(TextSpec::before(3))
                .with_pattern_samples(4)
                .with_sparse_mass(1e-9)
                .with_block(4)
                .with_block_samples(2)
                .with_schedule(all)
                .with_kv_merge(Some(KvMergeConfig::new(MergeAmount::Count(12)).with_window([1, 2, 2])))
                .init()
                .unwrap();
            fn run<B: SparseAttentionBackend>(
                m: &dit_attention::CombinedAttention,
                x: [&[f64]; 3],
                n: usize,
            ) -> (Vec<HeadChoice>, Vec<f64>, Vec<usize>) {
                let device: B::Device = Default::default();
                let t = |v: &[f64], c| {
                    Tensor::<B, 4>::from_data(TensorData::new(v.to_vec(), [1, 2, n, c]), fopts::<B>(&device))
                };
                let out = m.forward_at(t(x[0], 8), t(x[1], 8), t(x[2], 4), Some(CallPosition::new(0, 20))).unwrap();
                let kept = $crate::common::merge::ints(out.merge.expect("dynamic heads merge").kept_token());
                (out.heads, values(out.output), kept)
            }
            let (want_heads, want, want_kept) = run::<B64>(&module, [&q, &k, &v], n);
            let (heads, got, kept) = run::<$fused>(&module, [&q, &k, &v], n);
            assert_eq!(want_heads, vec![HeadChoice::Dynamic; 2]);
            assert_eq!(heads, want_heads);
            assert_eq!(kept, want_kept, "the matching");
            let tol: f64 = 2.0 * $tol;
            assert!(rel_err(&got, &want) < tol, "{}", rel_err(&got, &want));
        }

        /// The top-sum statistic on the kernel backend against a sort on the host: rows with
        /// ties (values from a few levels) and without, longer than a cube has units, every `m`
        /// from 1 to the row length.
        #[test]
        fn top_sum_matches_a_sort() {
            use burn::tensor::{Tensor, TensorData};
            use dit_attention::SparseAttentionBackend;
            use proptest::prelude::*;
            use $crate::common::cases;
            use $crate::common::merge::fopts;

            type Fused = $fused;
            let device = Default::default();
            // Short rows (the kernel's keys in registers) and rows past what 256 units hold in
            // registers (read from memory where the device caps cubes at 256 units).
            let rows = (1usize..=4, prop_oneof![1usize..=700, 16_400usize..=17_000], any::<bool>(), any::<u64>());
            let mut runner = proptest::test_runner::TestRunner::new(cases(12));
            runner
                .run(&rows, |(r, n, ties, seed)| {
                    let mut state = seed | 1;
                    let mut next = || {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        (state >> 11) as f64 / (1u64 << 53) as f64
                    };
                    let x: Vec<f64> = (0..r * n)
                        .map(|_| if ties { (next() * 5.0).floor() / 8.0 - 0.25 } else { next() - 0.5 })
                        .collect();
                    let m = 1 + (next() * n as f64) as usize % n;
                    let t = Tensor::<Fused, 2>::from_data(TensorData::new(x.clone(), [r, n]), fopts::<Fused>(&device));
                    let got: Vec<f64> = Fused::top_sum(t, m).into_data().iter::<f64>().collect();
                    for (i, row) in x.chunks(n).enumerate() {
                        let mut sorted: Vec<f32> = row.iter().map(|&v| v as f32).collect();
                        sorted.sort_by(|a, b| b.total_cmp(a));
                        let want: f64 = sorted[..m].iter().map(|&v| v as f64).sum();
                        let size: f64 = sorted[..m].iter().map(|&v| v.abs() as f64).sum();
                        prop_assert!(
                            (got[i] - want).abs() <= 1e-5 * size.max(1.0),
                            "row {} m {}: {} vs {}",
                            i,
                            m,
                            got[i],
                            want
                        );
                    }
                    Ok(())
                })
                .unwrap();
        }
    };
}
