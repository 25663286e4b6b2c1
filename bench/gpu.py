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

H100_BF16_PEAK = 989e12  # dense bf16 tensor-core FLOP/s of an H100 SXM


def encoder_rate(batch: int = 64) -> float:
    encoder, _ = build_encoder("vit_giant", random_init=True)
    encoder.cuda()
    x = torch.randn(batch, 3, 256, 256, device="cuda")
    with torch.inference_mode(), bf16_autocast(x.device):
        t = median_time(lambda: encoder(x), repeats=10, warmup=3, sync=True)
    return batch / t


def predictor_step(batch: int, checkpointing: bool) -> float:
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
    del model, opt
    torch.cuda.empty_cache()
    return t


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
                t = predictor_step(batch, ckpt)
            except torch.OutOfMemoryError:
                rows.append([batch, "yes" if ckpt else "no", "out of memory", "", ""])
                torch.cuda.empty_cache()
                continue
            mfu = batch * pred_flops / t / H100_BF16_PEAK
            results[f"ac_vitg_b{batch}_ckpt{int(ckpt)}"] = {"step_s": t, "clips_s": batch / t, "mfu": mfu}
            rows.append([batch, "yes" if ckpt else "no", f"{t * 1e3:.0f}", f"{batch / t:.1f}", f"{mfu:.0%}"])
    body = (f"ViT-g encoder (random weights), bf16 autocast, batch 64 frames of 256 px: **{rate:.0f} frames/s** "
            f"({results['vitg_tflops']:.0f} TFLOP/s at {enc_flops / 8 / 1e9:.0f} GFLOP per frame).\n\n"
            f"ac_vitg predictor training step (teacher forcing + 2-step rollout, AdamW), clips of 8 frames of "
            f"ViT-g features, bf16 autocast; {pred_flops / 1e12:.2f} TFLOP per clip (FLOP counter); MFU against "
            f"{H100_BF16_PEAK / 1e12:.0f} TFLOP/s dense bf16.\n\n"
            + table(["clips per step", "activation checkpointing", "step ms", "clips/s", "MFU"], rows))
    return Section("gpu", "GPU: encoder and predictor", body, results)
