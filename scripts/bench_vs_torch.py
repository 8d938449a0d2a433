"""Check our outputs (written by examples/engine_device.rs) against an independent f32 reference
and time the peers on the same inputs, shape by shape: FlexAttention with the same block mask for
every STA variant; cuDNN SDPA, FA2 SDPA and FlexAttention dense for dense attention. Prints one
table per shape and the issue's ratios.

The f32 reference is computed here with plain torch (chunked over query rows, cuBLAS in f32, TF32
off) on batch 0, heads 0-1; torch's own low-precision kernel is measured against the same
reference as the yardstick.

usage: python3 scripts/bench_vs_torch.py DIR
"""
import json
import sys
from collections import defaultdict

import numpy as np
import torch
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from sta_mask import sta_mask_mod

torch.backends.cuda.matmul.allow_tf32 = False
torch._dynamo.config.cache_size_limit = 64
root = sys.argv[1]
meta = json.load(open(f"{root}/meta.json"))
dtype = {"bf16": torch.bfloat16, "f16": torch.float16}[meta["dtype"]]
sdpa = torch.nn.functional.scaled_dot_product_attention
flex = torch.compile(flex_attention)
REF_HEADS = 2


def bench(fn, rep=2000):
    return triton.testing.do_bench(fn, warmup=300, rep=rep, return_mode="median")


def reference_f32(q, k, v, mask_mod, chunk=2048):
    """Masked softmax attention in f32, chunked over query rows (never N x N in memory)."""
    q, k, v = q.float(), k.float(), v.float()
    n, scale = q.shape[-2], q.shape[-1] ** -0.5
    out = torch.empty_like(q)
    kj = torch.arange(n, device=q.device)
    for s in range(0, n, chunk):
        qi = torch.arange(s, min(s + chunk, n), device=q.device)
        scores = torch.matmul(q[..., s : s + chunk, :], k.transpose(-1, -2)) * scale
        if mask_mod is not None:
            allowed = mask_mod(None, None, qi[:, None], kj[None, :])
            scores = scores.masked_fill(~allowed, float("-inf"))
        out[..., s : s + chunk, :] = torch.matmul(torch.softmax(scores, dim=-1), v)
    return out


def rel(a, b):
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm()).item()


entries = defaultdict(list)
for e in meta["entries"]:
    entries[e["shape"]].append(e)

summary = []
for name, group in entries.items():
    shape = json.load(open(f"{root}/{name}/shape.json"))
    Bt, H, N, D = shape["batch"], shape["heads"], shape["n"], shape["d"]

    def load(file):
        raw = np.fromfile(f"{root}/{name}/{file}", dtype=np.int16)
        return torch.from_numpy(raw).view(dtype).reshape(Bt, H, N, D).cuda()

    q, k, v = (load(f"{x}.bin") for x in ("q", "k", "v"))
    sub = lambda x: x[:1, :REF_HEADS]  # noqa: E731
    rows = []
    dense_flops = 4 * N * N * D * H * Bt
    ours_dense = None
    for e in group:
        ours = load(e["file"])
        flops = 4 * e["allowed_pairs_per_head"] * D * H * Bt
        if e["variant"] == "dense":
            ours_dense = e["median_ms"]
            ref = reference_f32(sub(q), sub(k), sub(v), None)
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                yard = rel(sdpa(sub(q), sub(k), sub(v)), ref)
                cudnn = bench(lambda: sdpa(q, k, v))
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                fa2 = bench(lambda: sdpa(q, k, v))
            flex_dense = bench(lambda: flex(q, k, v))
            rows.append(("ours dense", e["median_ms"], flops, rel(sub(ours), ref), f"cuDNN bf16 {yard:.2e}", None))
            rows += [("cuDNN SDPA dense", cudnn, dense_flops, None, "", None),
                     ("FA2 SDPA dense", fa2, dense_flops, None, "", None),
                     ("FlexAttention dense", flex_dense, dense_flops, None, "", None)]
            summary.append(f"{name} dense: ours / cuDNN throughput {cudnn / e['median_ms']:.3f}, / FA2 "
                           f"{fa2 / e['median_ms']:.3f}, / Flex dense {flex_dense / e['median_ms']:.3f}")
        else:
            mask_mod = sta_mask_mod(shape, e)
            ref = reference_f32(sub(q), sub(k), sub(v), mask_mod)
            block_mask = create_block_mask(mask_mod, None, None, N, N, device="cuda", _compile=True)
            theirs = flex(q, k, v, block_mask=block_mask)
            flex_ms = bench(lambda: flex(q, k, v, block_mask=block_mask))
            rows.append((f"ours {e['variant']}", e["median_ms"], flops, rel(sub(ours), ref),
                         f"Flex bf16 {rel(sub(theirs), ref):.2e}", e.get("plan_ms")))
            rows.append((f"FlexAttention {e['variant']}", flex_ms, flops, None, "", None))
            summary.append(f"{name} {e['variant']} (density {e['allowed_pairs_per_head'] / N / N:.3f}): "
                           f"ours / Flex speed {flex_ms / e['median_ms']:.3f}, plan build "
                           f"{e['plan_ms']:.3f} ms = {100 * e['plan_ms'] / e['median_ms']:.2f}% of the call")
        del ours
    print(f"\n{name}: B{Bt} H{H} N={N} d{D} {meta['dtype']} (canvas {shape['canvas']}, "
          f"{shape['text']} text {'after' if shape['text_after'] else 'before'})")
    print(f"| {'what':36s} | {'ms':>9s} | {'TF/s eff':>8s} | {'rel err vs f32':>14s} | {'yardstick':>18s} |")
    print(f"|{'-' * 38}|{'-' * 11}|{'-' * 10}|{'-' * 16}|{'-' * 20}|")
    for what, ms, flops, err, yard, _ in rows:
        err_s = f"{err:.2e}" if err is not None else ""
        print(f"| {what:36s} | {ms:9.2f} | {flops / ms / 1e9:8.1f} | {err_s:>14s} | {yard:>18s} |")
    if ours_dense:
        for what, ms, flops, *_ in rows:
            if what.startswith("ours sta"):
                eff = (flops / ms) / (dense_flops / ours_dense)
                summary.append(f"{name} {what[5:]}: sparse efficiency (STA TF/s / our dense TF/s) {eff:.2f}")
    del q, k, v
    torch.cuda.empty_cache()

print("\nratios (same run):")
for line in summary:
    print(" ", line)

# Token merging (examples/merge_device.rs, CogVideoX-2B shape): ours against our dense and torch
# SDPA on the merged and the full length, timed here on random inputs of the same shape.
try:
    merge = json.load(open(f"{root}/merge.json"))
except FileNotFoundError:
    merge = None
if merge:
    Bt, H, N, D = merge["batch"], merge["heads"], merge["n"], merge["d"]
    q = torch.randn(Bt, H, N, D, device="cuda", dtype=dtype)
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        cudnn_full = bench(lambda: sdpa(q, q, q))
    print(f"\ntoken merging, cogvideox-2b attention shape B{Bt} H{H} N={N} d{D}: our dense "
          f"{merge['dense_ms']:.3f} ms, cuDNN SDPA dense {cudnn_full:.3f} ms (same run)")
    print("| r | mode | whole call ms | x our dense | x cuDNN dense | matching ms (% of call) | reuse ms | "
          "gap amortised ms (x dense) | cuDNN on merged KV ms | compute vs dense | plan = reference | rel diff vs dense |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for e in merge["entries"]:
        kv = torch.randn(Bt, H, e["n_kept"], D, device="cuda", dtype=dtype)
        qm = q if e["mode"] == "kv" else kv
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            cudnn_merged = bench(lambda: sdpa(qm, kv, kv))
        print(f"| {e['r']} | {e['mode']} | {e['call_ms']:.3f} | {merge['dense_ms'] / e['call_ms']:.2f} | "
              f"{cudnn_full / e['call_ms']:.2f} | {e['matching_ms']:.3f} ({100 * e['matching_ms'] / e['call_ms']:.1f}%) | "
              f"{e['reuse_ms']:.3f} | {e['amortised_ms']:.3f} ({merge['dense_ms'] / e['amortised_ms']:.2f}) | "
              f"{cudnn_merged:.3f} | {e['pairs_fraction']:.3f} | {'yes' if e['plan_mismatches'] == 0 else 'NO'} | "
              f"{e['rel_diff_vs_dense']:.4f} |")
        del kv

# Smart attention (examples/smart_device.rs, CogVideoX shapes): ours against our dense and torch
# SDPA (cuDNN, dense) on random inputs of the same shape, timed here.
try:
    smart = json.load(open(f"{root}/smart.json"))
except FileNotFoundError:
    smart = None
if smart:
    print("\nsmart attention (profiling on 64 sampled rows + spatial/temporal bands), bf16:")
    print("| shape | band | density | whole call ms | x our dense | x cuDNN dense | profiling ms (% of call) | "
          "all spatial ms | all temporal ms | Flex same band ms | spatial heads | target ms (1.15 density dense + profiling) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for s in smart["shapes"]:
        q = torch.randn(s["batch"], s["heads"], s["n"], s["d"], device="cuda", dtype=dtype)
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            cudnn = bench(lambda: sdpa(q, q, q))
        print(f"| {s['shape']} | dense (ours) | 1.000 | {s['dense_ms']:.3f} | 1.00 | {cudnn / s['dense_ms']:.2f} | | | | | | |")
        for e in s["entries"]:
            # FlexAttention over the same band in natural order (what Sparse VideoGen runs; its
            # temporal heads run the same mask on permuted inputs).
            text, group, width, sink = s["text"], s["group"], e["width"], e["sink"]

            def band(b, h, qi, ki):
                gq, gk = (qi - text) // group, (ki - text) // group
                video = (qi >= text) & (ki >= text)
                return ~video | ((gq - gk).abs() <= width) | ((gk == 0) & sink)
            mask = create_block_mask(band, None, None, s["n"], s["n"], device="cuda", _compile=True)
            flex_ms = bench(lambda: flex(q, q, q, block_mask=mask))
            print(f"| {s['shape']} | {e['band']} | {e['density']:.3f} | {e['call_ms']:.3f} | "
                  f"{s['dense_ms'] / e['call_ms']:.2f} | {cudnn / e['call_ms']:.2f} | "
                  f"{e['profile_ms']:.3f} ({100 * e['profile_ms'] / e['call_ms']:.1f}%) | {e['spatial_ms']:.3f} | "
                  f"{e['temporal_ms']:.3f} | {flex_ms:.3f} | {e['spatial_heads']} / {e['heads']} | {e['target_ms']:.3f} |")
        del q

# Dynamic block-sparse attention (examples/dynamic_device.rs, CogVideoX shapes): ours against our
# dense and torch SDPA (cuDNN, dense) on random inputs of the same shape, timed here.
try:
    dynamic = json.load(open(f"{root}/dynamic.json"))
except FileNotFoundError:
    dynamic = None
if dynamic:
    print("\ndynamic block-sparse attention (64-token blocks, 8 sampled tokens per block), bf16:")
    print("| shape | inputs | thresholds | density | whole call ms | x our dense | x cuDNN dense | "
          "estimate ms (% of call) | attention ms | target ms (1.15 density dense + estimate) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for s in dynamic["shapes"]:
        q = torch.randn(s["batch"], s["heads"], s["n"], s["d"], device="cuda", dtype=dtype)
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            cudnn = bench(lambda: sdpa(q, q, q))
        print(f"| {s['shape']} | | dense (ours) | 1.000 | {s['dense_ms']:.3f} | 1.00 | {cudnn / s['dense_ms']:.2f} | | | |")
        for e in s["entries"]:
            estimate = "-" if e["estimate_ms"] is None else \
                f"{e['estimate_ms']:.3f} ({100 * e['estimate_ms'] / e['call_ms']:.1f}%)"
            attention = "-" if e["attention_ms"] is None else f"{e['attention_ms']:.3f}"
            pattern = f", {e['pattern_heads']} pattern heads" if "pattern_heads" in e else ""
            print(f"| {s['shape']} | {e['inputs']} | {e['step']}: tau {e['tau']}, [{e['min_ratio']}, {e['max_ratio']}]"
                  f"{pattern} | {e['density']:.3f} | {e['call_ms']:.3f} | {s['dense_ms'] / e['call_ms']:.2f} | "
                  f"{cudnn / e['call_ms']:.2f} | {estimate} | {attention} | {e['target_ms']:.3f} |")
        del q
