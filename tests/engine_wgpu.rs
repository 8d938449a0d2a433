//! The engine's CubeCL kernel through burn on wgpu (Mesa lavapipe on a CPU-only machine):
//! `Wgpu` (= `Fusion<CubeBackend>`), the unfused `CubeBackend`, and `Autodiff<Wgpu>`, against
//! the f64 oracle with the plain-low-precision error rule. Run with `--features wgpu`.
#![cfg(feature = "wgpu")]

mod common;

use burn::backend::wgpu::{CubeBackend, WgpuDevice, WgpuRuntime};
use burn::backend::Autodiff;
use burn::tensor::{DType, Tensor};
use common::engine::{StaCase, check_sta, inputs, max_abs_err, plain_attention, sta_case};
use common::*;
use dit_attention::reference::block_sparse_attention_reference;
use dit_attention::{
    AttentionMask, AttentionOptions, BlockMap, BlockPartition, Canvas, DitAttentionError, PatternSpec,
    SparseAttentionBackend, TextSpec, TileShape, TokenOrder, VideoLayout,
    block_sparse_attention, dense_attention,
};
use dit_attention_kernels::attention::KernelElem;
use proptest::prelude::*;

type Unfused = CubeBackend<WgpuRuntime, f32, i32, u32>;
type Wgpu = burn::backend::Wgpu<f32, i32, u32>;

fn elem_supported(elem: KernelElem) -> bool {
    use dit_attention_kernels::cubecl::Runtime;
    elem.supported(&WgpuRuntime::client(&WgpuDevice::default()))
}

proptest! {
    #![proptest_config(cases(16))]

    #[test]
    fn sta_kernel_on_fused_wgpu_f32(c in sta_case()) {
        check_sta::<Wgpu>(&c, &WgpuDevice::default(), DType::F32)?;
    }

    #[test]
    fn sta_kernel_on_wgpu_f16(c in sta_case()) {
        if elem_supported(KernelElem::F16) {
            check_sta::<Wgpu>(&c, &WgpuDevice::default(), DType::F16)?;
        } else {
            // burn cannot even hold such tensors there; the support check must still say so.
            let err = <Wgpu as SparseAttentionBackend>::sparse_attention_support(&WgpuDevice::default(), DType::F16, c.head_dim, c.value_dim);
            let unsupported = matches!(err, Err(DitAttentionError::Unsupported { .. }));
            prop_assert!(unsupported, "f16 unsupported must be an error: {:?}", err);
        }
    }
}

proptest! {
    #![proptest_config(cases(6))]

    #[test]
    fn sta_kernel_on_unfused_cube_backend(c in sta_case()) {
        check_sta::<Unfused>(&c, &WgpuDevice::default(), DType::F32)?;
    }

    #[test]
    fn autodiff_wgpu_gradients_equal_the_f64_reference(c in sta_case()) {
        autodiff_matches(&c)?;
    }
}

/// Gradients through `Autodiff<Wgpu>` (kernel forward, reference-composite backward) against
/// burn's autodiff through the reference on f64 ndarray.
fn autodiff_matches(c: &StaCase) -> Result<(), TestCaseError> {
    let n = c.seq_len();
    let (b, h, d, dv) = (c.batch, c.heads, 16, 8);
    let layout = VideoLayout::new(c.canvas, c.tile, c.text).unwrap();
    let map = BlockMap::from_mask(&AttentionMask::new(layout, c.spec()).unwrap(), TokenOrder::TileMajor, BlockPartition::PerTile).unwrap();
    fn grads<BK: burn::tensor::backend::AutodiffBackend + SparseAttentionBackend>(
        c: &StaCase, map: &BlockMap, shape: [usize; 5], device: &BK::Device, engine: bool,
    ) -> Vec<Vec<f64>> {
        let dtype = if engine { DType::F32 } else { DType::F64 };
        let x = inputs::<BK>(c.seed, shape, c.bias, device, dtype);
        let (q, k, v) = (x.q.require_grad(), x.k.require_grad(), x.v.require_grad());
        let bias = x.bias.map(|t| t.require_grad());
        let r = if engine {
            block_sparse_attention(q.clone(), k.clone(), v.clone(), map, bias.clone(), AttentionOptions::default()).unwrap()
        } else {
            block_sparse_attention_reference(q.clone(), k.clone(), v.clone(), map, bias.clone(), AttentionOptions::default()).unwrap()
        };
        let w = Tensor::<BK, 4>::ones(r.output.dims(), (device, dtype)).mul_scalar(0.5);
        let loss = (r.output * w).sum() + r.lse.cast(dtype).sum();
        let g = loss.backward();
        let mut out = vec![values(q.grad(&g).unwrap()), values(k.grad(&g).unwrap()), values(v.grad(&g).unwrap())];
        out.extend(bias.map(|t| values(t.grad(&g).unwrap())));
        out
    }
    let shape = [b, h, n, d, dv];
    let got = grads::<Autodiff<Wgpu>>(c, &map, shape, &WgpuDevice::default(), true);
    let want = grads::<Autodiff<B64>>(c, &map, shape, &Default::default(), false);
    for (name, (a, e)) in ["q", "k", "v", "bias"].iter().zip(got.iter().zip(&want)) {
        prop_assert!(rel_err(a, e) < 1e-4, "gradient of {}: relative error {}", name, rel_err(a, e));
    }
    Ok(())
}

#[test]
fn dense_kernel_with_cross_lengths_and_bias() {
    let device = WgpuDevice::default();
    let (b, h, nq, nk, d, dv) = (2, 2, 70, 300, 64, 64);
    let x = inputs::<Wgpu>(5, [b, h, nk, d, dv], true, &device, DType::F32);
    let q = x.q.clone().narrow(2, 0, nq);
    let qv: Vec<f64> = values(q.clone());
    let r = dense_attention(q, x.k, x.v, x.bias, AttentionOptions::default()).unwrap();
    let scale = 1.0 / (d as f64).sqrt();
    let (want_o, want_l) = brute_attention(&qv, &x.kv, &x.vv, &x.biasv, [b, h, nq, nk, d, dv], scale, |_, _, _| true);
    assert!(max_abs_err(&values(r.output), &want_o) < 1e-4);
    assert!(max_abs_err(&values(r.lse), &want_l) < 1e-4);
}

#[test]
fn partial_block_maps_fall_back_to_the_exact_reference_on_wgpu() {
    let device = WgpuDevice::default();
    let canvas = Canvas::new(2, 5, 6).unwrap();
    let tile = TileShape::new(1, 2, 3).unwrap();
    let text = TextSpec::before(4);
    let layout = VideoLayout::new(canvas, tile, text).unwrap();
    let spec = PatternSpec::Natten { window: [1, 3, 3] };
    let map = BlockMap::from_mask(&AttentionMask::new(layout, spec.clone()).unwrap(), TokenOrder::Natural, BlockPartition::Uniform(8)).unwrap();
    let n = layout.seq_len();
    let shape = [1, 2, n, 64, 64];
    let x = inputs::<Wgpu>(9, shape, false, &device, DType::F32);
    let r = block_sparse_attention(x.q, x.k, x.v, &map, None, AttentionOptions::default()).unwrap();
    let toks = brute_tokens(canvas, tile, text, TokenOrder::Natural);
    let allowed = |h: usize, i: usize, j: usize| pattern_allows(&spec, canvas, tile, h, toks[i], toks[j]);
    let scale = 1.0 / 8.0;
    let (want, _) = brute_attention(&x.qv, &x.kv, &x.vv, &[], [1, 2, n, n, 64, 64], scale, allowed);
    let (low, _) = plain_attention(&x.qv, &x.kv, &x.vv, &[], shape, scale, DType::F32, allowed);
    let bound = 8.0 * max_abs_err(&low, &want).max(1e-6);
    assert!(max_abs_err(&values(r.output), &want) <= bound);
}

#[test]
fn unsupported_inputs_get_errors_on_the_kernel_path() {
    let device = WgpuDevice::default();
    // Head dim beyond the portable kernel.
    let x = inputs::<Wgpu>(1, [1, 1, 8, 512, 8], false, &device, DType::F32);
    let err = dense_attention(x.q, x.k, x.v, None, AttentionOptions::default()).unwrap_err();
    assert!(matches!(&err, DitAttentionError::Unsupported { what, .. } if what.contains("512")), "{err}");
    // bf16 where the runtime does not report it.
    if !elem_supported(KernelElem::BF16) {
        let err = <Wgpu as SparseAttentionBackend>::sparse_attention_support(&device, DType::BF16, 64, 64).unwrap_err();
        assert!(matches!(&err, DitAttentionError::Unsupported { what, .. } if what.contains("BF16")), "{err}");
    }
    // Integer dtypes are never attention inputs.
    let err = <Wgpu as SparseAttentionBackend>::sparse_attention_support(&device, DType::I32, 64, 64).unwrap_err();
    assert!(err.to_string().contains("I32"), "{err}");
}

