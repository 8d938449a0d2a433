"""Time FlexAttention forward and forward+backward on the shapes and masks that
examples/backward_device.rs measured (its JSON rows), cuDNN SDPA for the dense rows, and print
one table with our times and the ratios (issue 8: >= 0.8x FlexAttention's forward+backward speed,
sparse efficiency >= 0.85 of our dense backward).

usage: python3 scripts/bench_backward.py ROWS.json
"""
import json
import sys

import torch
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from sta_mask import sta_mask_mod

rows = json.load(open(sys.argv[1]))
checks = [r for r in rows if "check" in r]
rows = [r for r in rows if "check" not in r]
flex = torch.compile(flex_attention)
sdpa = torch.nn.functional.scaled_dot_product_attention


def bench(fn):
    return triton.testing.do_bench(fn, warmup=100, rep=1000, return_mode="median")


def fwd_and_both(attend, q, k, v, g):
    fwd = bench(lambda: attend(q, k, v))

    def both():
        out = attend(q, k, v)
        out.backward(g)

    return fwd, bench(both)


table = []
for r in rows:
    canvas, n, h, d = r["canvas"], r["canvas"][0] * r["canvas"][1] * r["canvas"][2] + r["text"], r["heads"], r["d"]
    make = lambda: torch.randn(1, h, n, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    q, k, v = make(), make(), make()
    g = torch.randn(1, h, n, d, device="cuda", dtype=torch.bfloat16)
    peers = {}
    if r["window"] is not None:
        shape = {"canvas": canvas, "text": r["text"], "text_after": True}
        entry = {"tile": r["tile"], "window": r["window"], "order": "tile-major"}
        mask = create_block_mask(sta_mask_mod(shape, entry), None, None, n, n, device="cuda", _compile=True)
        peers["flex"] = fwd_and_both(lambda a, b, c: flex(a, b, c, block_mask=mask), q, k, v, g)
    else:
        peers["flex"] = fwd_and_both(lambda a, b, c: flex(a, b, c), q, k, v, g)
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            peers["cudnn"] = fwd_and_both(sdpa, q, k, v, g)
    for peer, (fwd, both) in peers.items():
        table.append((r, peer, fwd, both))
        print(json.dumps({"variant": r["variant"], "canvas": canvas, "peer": peer, "fwd_ms": fwd, "fwd_bwd_ms": both}))

print()
print(f"{'canvas':>10} {'variant':>9} {'density':>7} {'ours fwd':>9} {'ours f+b':>9} {'bwd TF/s':>8} "
      f"{'peer':>6} {'peer fwd':>9} {'peer f+b':>9} {'f+b speed ratio':>15}")
for r, peer, fwd, both in table:
    c = "x".join(map(str, r["canvas"]))
    print(f"{c:>10} {r['variant']:>9} {r['density']:7.3f} {r['fwd_ms']:9.2f} {r['fwd_bwd_ms']:9.2f} "
          f"{r['bwd_tflops']:8.1f} {peer:>6} {fwd:9.2f} {both:9.2f} {both / r['fwd_bwd_ms']:15.3f}")
dense = {tuple(r["canvas"]): r for r in rows if r["window"] is None}
for r in rows:
    base = dense.get(tuple(r["canvas"]))
    if base is not None and r["window"] is not None:
        print(f"sparse efficiency {r['variant']} at {'x'.join(map(str, r['canvas']))}: backward "
              f"{r['bwd_tflops'] / base['bwd_tflops']:.3f} of dense TF/s, forward "
              f"{r['fwd_tflops'] / base['fwd_tflops']:.3f}")
for c in checks:
    print(f"gradient check {c['check']} at {'x'.join(map(str, c['canvas']))} (bf16 kernels vs f32 portable): "
          f"dq {c['rel_err_dq']:.2e}, dk {c['rel_err_dk']:.2e}, dv {c['rel_err_dv']:.2e}")
