"""The STA mask of spec section 2 as a FlexAttention mask_mod (shared by the benchmark scripts)."""
import torch


def sta_mask_mod(shape, entry):
    """STA of spec section 2: the window of tiles around the query's tile, text global."""
    (T, Hc, W), (tt, th, tw), win = shape["canvas"], entry["tile"], entry["window"]
    assert T % tt == 0 and Hc % th == 0 and W % tw == 0, "this script assumes tiles divide the canvas"
    counts = [T // tt, Hc // th, W // tw]
    video, vol, text = T * Hc * W, tt * th * tw, shape["text"]
    first = 0 if shape["text_after"] else text
    natural = entry["order"] == "natural"

    def tile_of(p):
        p = p - first
        if natural:
            return p // (Hc * W) // tt, (p // W) % Hc // th, p % W // tw
        t = p // vol
        return t // (counts[1] * counts[2]), (t // counts[2]) % counts[1], t % counts[2]

    def mask_mod(b, h, qi, ki):
        is_text_q = (qi < first) | (qi >= first + video)
        is_text_k = (ki < first) | (ki >= first + video)
        near = torch.ones_like(qi, dtype=torch.bool)
        for cq, ck, n, w in zip(tile_of(qi), tile_of(ki), counts, win):
            if w < n:
                half = w // 2
                near = near & ((cq.clamp(half, n - 1 - half) - ck).abs() <= half)
        return is_text_q | is_text_k | near

    return mask_mod
