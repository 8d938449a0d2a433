//! The CUDA-only kernels, expanded to CUDA C++ without a GPU (cubecl's CUDA compiler, as the
//! runtime runs it before NVRTC): every MMA forward configuration the launcher can pick expands
//! without a panic, and the 32-row kernel has the structure it is for; so do the MMA backward's
//! kernels, the tensor-core token matching (one or two row tiles a plane) and checked matmul. The numbers these kernels
//! compute are tested on a GPU (`engine_cuda`); this catches what breaks them before one is lent.

mod cuda_source;

use cuda_source::{Forward, Variant, backward_source, matching_source, matmul_source, shapes, variants};

/// Calls in a kernel's source of the MMA, of the plain fragment load (K, and Q's A fragments)
/// and of the transposed one (V); each helper's definition is one more match.
fn calls(source: &str) -> [usize; 3] {
    let count = |name: &str| source.matches(name).count().saturating_sub(1);
    [
        count("__mma_m16n8k16___nv_bfloat16___nv_bfloat16_float("),
        count("__ldmatrix_m8n8___nv_bfloat16_4x("),
        count("__ldmatrix_m8n8___nv_bfloat16_4x_trans("),
    ]
}

#[test]
fn every_mma_forward_configuration_expands_to_cuda() {
    assert_eq!(shapes().len(), 6, "{:?}", shapes());
    for v in variants() {
        let source = v.source();
        let name = v.name();
        assert!(source.contains("mma.sync.aligned.m16n8k16"), "{name}: no mma.sync");
        assert!(source.contains("__cp_async_shared_global"), "{name}: no cp.async copies");
        let [mma, plain, trans] = calls(&source);
        // One 64-key tile: Q K^T over the head dim, P V over the value dim, 16 rows per tile.
        let tiles = if v.kernel == Forward::Rows16 { 1 } else { 2 };
        assert_eq!(mma, tiles * 4 * (v.head_dim / 16 * 2 + v.value_dim / 16 * 2), "{name}: MMAs");
        assert_eq!(trans, 4 * v.value_dim / 16, "{name}: V fragment loads");
        assert_eq!(plain, 4 * v.head_dim / 16 + tiles * v.head_dim / 16, "{name}: K and Q fragment loads");
    }
}

#[test]
fn the_wide_kernel_feeds_each_key_and_value_fragment_to_two_mmas() {
    for wide in variants().into_iter().filter(|v| v.kernel == Forward::Rows32) {
        let narrow = Variant { kernel: Forward::Rows16, warps: 8, ..wide };
        let [mma_w, plain_w, trans_w] = calls(&wide.source());
        let [mma_n, plain_n, trans_n] = calls(&narrow.source());
        assert_eq!(mma_w, 2 * mma_n, "{}", wide.name());
        assert_eq!(trans_w, trans_n, "{}", wide.name());
        // The same K loads; Q's fragments once more (the second row tile's).
        assert_eq!(plain_w, plain_n + wide.head_dim / 16, "{}", wide.name());
    }
}

#[test]
fn the_tensor_core_matmul_expands_to_cuda() {
    for transposed in [false, true] {
        let source = matmul_source(transposed);
        assert!(source.contains("wmma::mma_sync"), "transposed {transposed}: no wmma");
    }
}

#[test]
fn the_mma_backward_kernels_expand_to_cuda() {
    // The backward's plane counts (4 or 8) over the forward's map kinds and dims.
    for v in variants().into_iter().filter(|v| v.kernel == Forward::Rows16 && v.warps != 12) {
        for (dkv, has_d_out) in [(false, true), (true, true), (true, false)] {
            let source = backward_source(dkv, &v, has_d_out);
            assert!(source.contains("mma.sync.aligned.m16n8k16"), "{} dkv {dkv}: no mma.sync", v.name());
        }
    }
}

#[test]
fn the_tensor_core_matching_feeds_each_destination_fragment_to_its_row_tiles() {
    // Unit metrics of head dims 64 and 128 (`concat(k, |k|, v, |v|)`, padded to 16), with the
    // destination tiles the launcher picks for them.
    for (channels, tile) in [(144, 64), (272, 32)] {
        for warps in [4, 8, 16] {
            let [mma1, plain1, trans1] = calls(&matching_source(channels, tile, warps, 1));
            let [mma2, plain2, trans2] = calls(&matching_source(channels, tile, warps, 2));
            assert!(mma1 > 0, "channels {channels}: no MMA");
            assert_eq!(mma2, 2 * mma1, "channels {channels}, {warps} planes");
            // The same fragment loads: a plane's source fragments are loaded once, by a loop.
            assert_eq!((plain2, trans2), (plain1, trans1), "channels {channels}, {warps} planes");
        }
    }
}
