"""GPU figures: ViT-g encoder throughput and the ac_vitg predictor's step time and model FLOPs utilisation."""

from __future__ import annotations

import torch

from common.device import bf16_autocast
from common.errors import UserError
from model.encoders import build_encoder
from model.predictor import build_model
from train.loop import param_groups
from train.losses import training_losses

from .config import GpuBench
from .online import flops_per_clip
from .report import Section, median_time, table

H100_BF16_PEAK = 989e12  # dense bf16 tensor-core FLOP/s of an H100 SXM (and of an H200)
# the aten ops whose kernels make up each kind of device time in a training step (the rest: "other elementwise")
MATMUL = {"mm", "addmm", "bmm", "baddbmm"}
COPIES = {"copy_", "cat", "_to_copy", "clone", "stack"}


def device_time_by_kind(step, steps: int = 2) -> dict[str, float]:
    """Seconds per step of CUDA kernel time by kind of op: matmul, attention, copies and casts, other elementwise
    (RoPE's products, residual adds, gradient sums, the optimizer), from torch.profiler's per-op self times."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    kinds = dict.fromkeys(("matmul", "attention", "copies and casts", "other elementwise"), 0.0)
    for e in prof.key_averages():
        if e.key.startswith("aten::"):  # each kernel's time sits with the op that launched it
            op = e.key.removeprefix("aten::")
            kind = ("matmul" if op in MATMUL else "attention" if "attention" in op
                    else "copies and casts" if op in COPIES else "other elementwise")
            kinds[kind] += e.self_device_time_total / 1e6 / steps
    return kinds


def encoder_rate(batch: int = 64) -> float:
    encoder, _ = build_encoder("vit_giant", random_init=True)
    encoder.cuda()
    x = torch.randn(batch, 3, 256, 256, device="cuda")
    with torch.inference_mode(), bf16_autocast(x.device):
        t = median_time(lambda: encoder(x), repeats=10, warmup=3, sync=True)
    return batch / t


def predictor_step(batch: int, checkpointing: bool, profile: bool = False) -> tuple[float, dict | None]:
    """Median seconds per training step, and with `profile` its kernel time by kind of op."""
    torch.manual_seed(0)
    model = build_model(1408, (16, 16), "ac_vitg", activation_checkpointing=checkpointing).cuda()
    opt = torch.optim.AdamW(param_groups(model, 0.04), lr=1e-4)
    z = torch.randn(batch, 8, 256, 1408, device="cuda")
    a, s = torch.randn(batch, 7, 7, device="cuda"), torch.randn(batch, 8, 7, device="cuda")

    def step():
        with bf16_autocast(z.device):
            loss = training_losses(model, z, a, s, 2)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t = median_time(step, repeats=5, warmup=2, sync=True)
    return t, device_time_by_kind(step) if profile else None


def run(cfg: GpuBench) -> Section:
    if not torch.cuda.is_available():
        raise UserError("bench gpu needs a CUDA device; none is visible to torch here")
    enc_flops, pred_flops = flops_per_clip("vit_giant", "ac_vitg")
    rate = encoder_rate()
    results = {"vitg_frames_s": rate, "vitg_tflops": rate * enc_flops / 8 / 1e12}
    rows = []
    for batch in (8, 16):
        for ckpt in (False, True):
            try:
                t, kinds = predictor_step(batch, ckpt, profile=(batch, ckpt) == (8, False))
            except torch.OutOfMemoryError:
                rows.append([batch, "yes" if ckpt else "no", "out of memory", "", ""])
                continue
            finally:
                torch.cuda.empty_cache()  # the step's model and optimizer are gone: the next one starts empty
            mfu = batch * pred_flops / t / H100_BF16_PEAK
            results[f"ac_vitg_b{batch}_ckpt{int(ckpt)}"] = {"step_s": t, "clips_s": batch / t, "mfu": mfu}
            rows.append([batch, "yes" if ckpt else "no", f"{t * 1e3:.0f}", f"{batch / t:.1f}", f"{mfu:.0%}"])
            if kinds:
                results["ac_vitg_b8_kernel_s"], profiled = kinds, t
    body = (f"ViT-g encoder (random weights), bf16 autocast, batch 64 frames of 256 px: **{rate:.0f} frames/s** "
            f"({results['vitg_tflops']:.0f} TFLOP/s at {enc_flops / 8 / 1e9:.0f} GFLOP per frame).\n\n"
            f"ac_vitg predictor training step (teacher forcing + 2-step rollout, AdamW), clips of 8 frames of "
            f"ViT-g features, bf16 autocast; {pred_flops / 1e12:.2f} TFLOP per clip (FLOP counter); MFU against "
            f"{H100_BF16_PEAK / 1e12:.0f} TFLOP/s dense bf16.\n\n"
            + table(["clips per step", "activation checkpointing", "step ms", "clips/s", "MFU"], rows))
    if "ac_vitg_b8_kernel_s" in results:
        kinds = results["ac_vitg_b8_kernel_s"]
        busy = sum(kinds.values())
        body += (f"\n\nWhere the step's time goes (8 clips, no checkpointing; torch.profiler, kernel time by the op "
                 f"that launched it): the GPU runs kernels **{busy / profiled:.0%}** of the step's "
                 f"{profiled * 1e3:.0f} ms; of that kernel time:\n\n"
                 + table(["kind of op", "ms per step", "share"],
                         [[k, f"{v * 1e3:.0f}", f"{v / busy:.0%}"] for k, v in kinds.items()]))
    return Section("gpu", "GPU: encoder and predictor", body, results)
