"""Block-causal attention of the predictor at 8 steps x 258 tokens: which kernel, how fast, how exact."""

from __future__ import annotations

import torch

from extract.vit import attention
from train.predictor import block_causal_mask

from .report import median_time, table


def reference(q, k, v, mask):
    """Plain softmax(QK^T / sqrt(d) + mask) V."""
    scores = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
    return scores.masked_fill(~mask, float("-inf")).softmax(-1) @ v


def run(batch: int, steps: int = 8, tokens: int = 258, heads: int = 16, head_dim: int = 64,
        device: str | None = None, repeats: int = 5) -> tuple[str, dict]:
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(batch, heads, steps * tokens, head_dim, generator=g).to(dev, dtype) for _ in range(3))
    mask = block_causal_mask(steps, tokens, dev)
    exact = reference(*(t.double() for t in (q, k, v)), mask)
    variants = {
        "per-step SDPA, no mask (used on CUDA)": lambda q, k, v: attention(q, k, v, step_tokens=tokens),
        "dense SDPA + boolean mask (used on CPU)": lambda q, k, v: attention(q, k, v, mask),
        "plain softmax reference": lambda q, k, v: reference(q, k, v, mask),
    }
    sync = dev.type == "cuda"
    rows, results = [], {}
    for name, fn in variants.items():
        with torch.no_grad():
            err = float((fn(q, k, v).double() - exact).abs().max())
            fwd = median_time(lambda: fn(q, k, v), repeats, sync=sync)
        qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
        fb = median_time(lambda: fn(qg, kg, vg).sum().backward(), repeats, sync=sync)
        results[name] = {"forward_ms": fwd * 1e3, "forward_backward_ms": fb * 1e3, "max_abs_error": err}
    base = results["plain softmax reference"]
    for name, r in results.items():
        rows.append([name, f"{r['forward_ms']:.2f}", f"{base['forward_ms'] / r['forward_ms']:.2f}x",
                     f"{r['forward_backward_ms']:.2f}", f"{base['forward_backward_ms'] / r['forward_backward_ms']:.2f}x",
                     f"{r['max_abs_error']:.1e}"])
    body = (f"{batch} clips x {heads} heads x {steps} steps x {tokens} tokens, head dim {head_dim}, {dtype} on {dev}. "
            "Error: max |output - float64 reference|.\n\n"
            + table(["implementation", "forward ms", "speed-up", "fwd+bwd ms", "speed-up", "max abs error"], rows))
    return body, results
