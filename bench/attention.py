"""Block-causal attention of the predictor at 8 steps x 258 tokens: which kernel, how fast, how exact."""

from __future__ import annotations

import torch

from common.device import pick_device
from model.predictor import block_causal_mask
from model.vit import attention

from .config import AttentionBench
from .report import Section, median_time, table


def reference(q, k, v, mask):
    """Plain softmax(QK^T / sqrt(d) + mask) V."""
    scores = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
    return scores.masked_fill(~mask, float("-inf")).softmax(-1) @ v


SIZES = {  # name: (clips, steps, tokens per step, heads, head dim)
    "ac_vitg": (2, 8, 258, 16, 64),
    "ac_demo": (8, 8, 66, 2, 64),
}


def run(cfg: AttentionBench, sizes: dict[str, tuple] = SIZES, repeats: int = 5) -> Section:
    dev = pick_device()
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    rows, results = [], {}
    for size, (batch, steps, tokens, heads, head_dim) in sizes.items():
        g = torch.Generator(device="cpu").manual_seed(0)
        q, k, v = (torch.randn(batch, heads, steps * tokens, head_dim, generator=g).to(dev, dtype) for _ in range(3))
        mask = block_causal_mask(steps, tokens, dev)
        exact = reference(*(t.double() for t in (q, k, v)), mask)
        variants = {
            "per-step SDPA, no mask (`--attention per-step`, default)": lambda q, k, v: attention(q, k, v, step_tokens=tokens),
            "dense SDPA + boolean mask (`--attention mask`)": lambda q, k, v: attention(q, k, v, mask),
            "plain softmax reference": lambda q, k, v: reference(q, k, v, mask),
        }
        sync = dev.type == "cuda"
        timings = {}
        for name, fn in variants.items():
            with torch.no_grad():
                err = float((fn(q, k, v).double() - exact).abs().max())
                fwd = median_time(lambda: fn(q, k, v), repeats, sync=sync)
            qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
            fb = median_time(lambda: fn(qg, kg, vg).sum().backward(), repeats, sync=sync)
            timings[name] = {"forward_ms": fwd * 1e3, "forward_backward_ms": fb * 1e3, "max_abs_error": err}
        base = timings["plain softmax reference"]
        for name, r in timings.items():
            rows.append([f"{size}: {batch} x {heads} heads x {steps} x {tokens}", name, f"{r['forward_ms']:.1f}",
                         f"{base['forward_ms'] / r['forward_ms']:.2f}x", f"{r['forward_backward_ms']:.1f}",
                         f"{base['forward_backward_ms'] / r['forward_backward_ms']:.2f}x", f"{r['max_abs_error']:.1e}"])
        results[size] = timings
    body = (f"Block-causal attention over 8 steps, head dim 64, {dtype} on {dev}, median of {repeats}; the "
            "predictor-sized case (258 tokens per step, 16 heads) and the demo-sized one. Error: max "
            "|output - float64 reference|.\n\n"
            + table(["size (clips x heads x steps x tokens)", "implementation", "forward ms", "speed-up",
                     "fwd+bwd ms", "speed-up", "max abs error"], rows))
    return Section(f"attention-{dev.type}", f"Block-causal attention ({dev.type.upper()})", body, results)
