"""Compare our STA output (written by examples/engine_device.rs) with FlexAttention under the same
mask, and time the peers on the same inputs: FlexAttention STA, cuDNN and FA2 SDPA dense,
FlexAttention dense.

usage: python3 scripts/hunyuan_vs_torch.py DIR
"""
import json
import sys

import numpy as np
import torch
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

folder = sys.argv[1]
meta = json.load(open(f"{folder}/meta.json"))
H, N, D = meta["heads"], meta["n"], meta["d"]
dtype = {"bf16": torch.bfloat16, "f16": torch.float16}[meta["dtype"]]


def load(name):
    raw = np.fromfile(f"{folder}/{name}.bin", dtype=np.int16)
    return torch.from_numpy(raw).view(dtype).reshape(1, H, N, D).cuda()


q, k, v, ours = (load(x) for x in ("q", "k", "v", "out"))
(T, Hc, W), (tt, th, tw), win = meta["canvas"], meta["tile"], meta["window"]
counts = [-(-T // tt), -(-Hc // th), -(-W // tw)]
assert T % tt == 0 and Hc % th == 0 and W % tw == 0, "this script assumes tiles divide the canvas"
video, vol = T * Hc * W, tt * th * tw


def mask_mod(b, h, qi, ki):
    # Tile-major video first, then text; text is global (spec section 2).
    tq, tk = qi // vol, ki // vol
    ok = (qi >= video) | (ki >= video)
    near = torch.ones_like(qi, dtype=torch.bool)
    for tile_q, tile_k, n, w in (
        (tq // (counts[1] * counts[2]), tk // (counts[1] * counts[2]), counts[0], win[0]),
        ((tq // counts[2]) % counts[1], (tk // counts[2]) % counts[1], counts[1], win[1]),
        (tq % counts[2], tk % counts[2], counts[2], win[2]),
    ):
        if w < n:
            half = w // 2
            near = near & ((tile_q.clamp(half, n - 1 - half) - tile_k).abs() <= half)
    return ok | near


# _compile=True builds the block mask block by block (never the N x N boolean mask).
block_mask = create_block_mask(mask_mod, None, None, N, N, device="cuda", _compile=True)
flex = torch.compile(flex_attention)
ref = flex(q, k, v, block_mask=block_mask)
try:
    ref32 = flex(q.float(), k.float(), v.float(), block_mask=block_mask)
except Exception as e:  # f32 FlexAttention may not fit some GPUs' shared memory at d128
    print(f"flex f32 failed ({type(e).__name__}); comparing against flex {meta['dtype']} only")
    ref32 = None


def rel(a, b):
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm()).item(), ((a - b).abs().max() / b.abs().max()).item()


rows = [(f"ours vs flex {meta['dtype']}", *rel(ours, ref))]
if ref32 is not None:
    rows += [("ours vs flex f32", *rel(ours, ref32)), (f"flex {meta['dtype']} vs flex f32 (yardstick)", *rel(ref, ref32))]
print("relative error (Frobenius, max-abs/max):")
for name, fro, mx in rows:
    print(f"  {name:40s} {fro:.3e}  {mx:.3e}")

flex_ms = triton.testing.do_bench(lambda: flex(q, k, v, block_mask=block_mask), warmup=200, rep=2000)
sdpa = torch.nn.functional.scaled_dot_product_attention
with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
    cudnn_ms = triton.testing.do_bench(lambda: sdpa(q, k, v), warmup=500, rep=3000)
with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
    fa2_ms = triton.testing.do_bench(lambda: sdpa(q, k, v), warmup=500, rep=3000)
flex_dense_ms = triton.testing.do_bench(lambda: flex(q, k, v), warmup=200, rep=3000)
pairs = meta["allowed_pairs_per_head"] * H
ours_ms = meta["median_ms"]
print()
print(f"| {'what':34s} | {'ms':>9s} | {'TF/s eff':>8s} | {'speed ours / it':>17s} |")
print(f"|{'-' * 36}|{'-' * 11}|{'-' * 10}|{'-' * 19}|")
table = [
    (f"ours STA {meta['dtype']} ({meta['path'].split(' CubeCL')[0]})", ours_ms, 4 * pairs * D),
    ("ours STA, natural-order input", meta["natural_median_ms"], 4 * pairs * D),
    ("FlexAttention STA", flex_ms, 4 * pairs * D),
    ("cuDNN SDPA dense", cudnn_ms, 4 * N * N * D * H),
    ("FA2 SDPA dense", fa2_ms, 4 * N * N * D * H),
    ("FlexAttention dense", flex_dense_ms, 4 * N * N * D * H),
]
if meta.get("dense_median_ms"):
    table.insert(2, ("ours dense", meta["dense_median_ms"], 4 * N * N * D * H))
for name, ms, flops in table:
    print(f"| {name:34s} | {ms:9.2f} | {flops / ms / 1e9:8.1f} | {ms / ours_ms:17.4f} |")
print(f"density {pairs / (N * N * H):.4f}, block-mask sparsity {block_mask.sparsity():.2f}%")
if meta.get("dense_median_ms"):
    dense = meta["dense_median_ms"]
    print(f"ours dense / peer throughput: cuDNN {cudnn_ms / dense:.3f}, FA2 {fa2_ms / dense:.3f}, Flex dense {flex_dense_ms / dense:.3f}")
