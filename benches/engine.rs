//! The attention engine on a CPU, so that regressions show without a GPU: STA and dense through
//! the public API on the reference backend (NdArray) and, with `--features wgpu`, through the
//! portable CubeCL kernel on wgpu (Mesa lavapipe here); and the STA plan build (block map and
//! token permutation) at the HunyuanVideo shape, which modules pay once at init.
//!
//! `cargo bench --bench engine` (add `--features wgpu` for the kernel rows)

use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use dit_attention::{
    AttentionOptions, SlidingTileAttentionConfig, SparseAttentionBackend, TextSpec, TokenOrder, dense_attention,
};

fn main() {
    divan::main();
}

/// A small video: 4x16x16 latent frames in tiles of 2x8x8 (32 tiles), 16 text tokens after, two
/// heads of 64; STA 1x3x3 tiles (density about 30%).
const CANVAS: [usize; 3] = [4, 16, 16];
const TILE: [usize; 3] = [2, 8, 8];
const TEXT: usize = 16;
const HEADS: usize = 2;
const D: usize = 64;

fn parse(order: &str) -> TokenOrder {
    if order == "natural" { TokenOrder::Natural } else { TokenOrder::TileMajor }
}

fn sta(order: TokenOrder) -> dit_attention::SlidingTileAttention {
    SlidingTileAttentionConfig::new(CANVAS, TILE, vec![[1, 3, 3]])
        .with_text(TextSpec::after(TEXT))
        .with_order(order)
        .init()
        .unwrap()
}

fn inputs<B: Backend>(device: &B::Device) -> [Tensor<B, 4>; 3] {
    let n = CANVAS.iter().product::<usize>() + TEXT;
    [0, 1, 2].map(|_| Tensor::random([1, HEADS, n, D], Distribution::Normal(0.0, 1.0), device))
}

fn bench_sta<B: SparseAttentionBackend>(bencher: divan::Bencher, order: TokenOrder) {
    let device = B::Device::default();
    let module = sta(order);
    let [q, k, v] = inputs::<B>(&device);
    bencher.bench_local(|| {
        let out = module.forward(q.clone(), k.clone(), v.clone()).unwrap();
        B::sync(&device).unwrap();
        out
    });
}

fn bench_dense<B: SparseAttentionBackend>(bencher: divan::Bencher) {
    let device = B::Device::default();
    let [q, k, v] = inputs::<B>(&device);
    bencher.bench_local(|| {
        let out = dense_attention(q.clone(), k.clone(), v.clone(), None, AttentionOptions::default()).unwrap();
        B::sync(&device).unwrap();
        out
    });
}

#[divan::bench(args = ["tile-major", "natural"])]
fn sta_reference_ndarray(bencher: divan::Bencher, order: &str) {
    bench_sta::<burn::backend::NdArray>(bencher, parse(order));
}

#[divan::bench]
fn dense_reference_ndarray(bencher: divan::Bencher) {
    bench_dense::<burn::backend::NdArray>(bencher);
}

#[cfg(feature = "wgpu")]
#[divan::bench(args = ["tile-major", "natural"])]
fn sta_kernel_wgpu(bencher: divan::Bencher, order: &str) {
    bench_sta::<burn::backend::Wgpu>(bencher, parse(order));
}

#[cfg(feature = "wgpu")]
#[divan::bench]
fn dense_kernel_wgpu(bencher: divan::Bencher) {
    bench_dense::<burn::backend::Wgpu>(bencher);
}

/// What `SlidingTileAttentionConfig::init` costs at the HunyuanVideo shape (30x48x80, 256 text
/// tokens): the budget is 5% of one attention call.
#[divan::bench(args = ["tile-major", "natural"])]
fn sta_plan_build_hunyuan(bencher: divan::Bencher, order: &str) {
    let config = SlidingTileAttentionConfig::new([30, 48, 80], [6, 8, 8], vec![[3, 3, 3]])
        .with_text(TextSpec::after(256))
        .with_order(parse(order));
    bencher.bench(|| config.init().unwrap());
}
