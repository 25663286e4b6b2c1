"""Per-clip prediction metrics, used by the trainer's validation and by `cli.py eval`.

For a clip z_0..z_{F-1} (normalised): the teacher-forced L1, and for every horizon
h = 1..F-1 the L1 / cosine of the autoregressive rollout from z_0 against z_h, next to
the copy-the-last-frame baseline (predict z_h by z_0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .losses import normalize, predict, rollout


@torch.no_grad()
def clip_metrics(model, batch: dict[str, torch.Tensor], device: torch.device,
                 actions: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Per-clip metrics of one batch: tf_l1 [B]; rollout_l1/cos, copy_l1/cos [B, F-1].

    `actions` replaces the clip's true actions (action-sensitivity tests).
    """
    z = normalize(batch["features"].to(device))
    s = batch["states"].to(device).float()
    a = (batch["actions"] if actions is None else actions).to(device).float()
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
        tf = predict(model, z[:, :-1], a, s[:, :-1]).float()
        roll = rollout(model, z[:, :1], a, s, z.shape[1] - 1).float()
    target, copy = z[:, 1:], z[:, :1].expand_as(z[:, 1:])
    return {
        "tf_l1": (tf - target).abs().mean((1, 2, 3)).cpu(),
        "rollout_l1": (roll - target).abs().mean((2, 3)).cpu(),
        "rollout_cos": F.cosine_similarity(roll, target, dim=-1).mean(2).cpu(),
        "copy_l1": (copy - target).abs().mean((2, 3)).cpu(),
        "copy_cos": F.cosine_similarity(copy, target, dim=-1).mean(2).cpu(),
    }


def collect(model, loader, device: torch.device) -> dict[str, torch.Tensor]:
    """clip_metrics over a whole loader, concatenated over clips."""
    was_training = model.training
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {}
    for batch in loader:
        for k, v in clip_metrics(model, batch, device).items():
            parts.setdefault(k, []).append(v)
    model.train(was_training)
    return {k: torch.cat(v) for k, v in parts.items()}


def summarize(per_clip: dict[str, torch.Tensor]) -> dict[str, float | list[float]]:
    """Means over clips (per horizon for the [B, H] metrics) and their standard errors."""
    out: dict[str, float | list[float]] = {"clips": len(per_clip["tf_l1"])}
    n = max(len(per_clip["tf_l1"]), 1)
    for k, v in per_clip.items():
        mean = v.mean(0)
        se = v.std(0) / n**0.5 if n > 1 else torch.zeros_like(mean)
        out[k] = mean.tolist() if mean.ndim else float(mean)
        out[k + "_se"] = se.tolist() if se.ndim else float(se)
    return out
