"""Per-clip prediction metrics, used by the trainer's validation and by `cli.py eval`.

For a clip z_0..z_{F-1} (normalised): the teacher-forced L1, and for every horizon
h = 1..F-1 the L1 / cosine of the autoregressive rollout from z_0 against z_h, next to
the copy-the-last-frame baseline (predict z_h by z_0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

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


class _WithShuffledActions(Dataset):
    """Clips plus the actions of another clip (a cyclic shift of a seeded order: never its own)."""

    def __init__(self, clips: Dataset, seed: int):
        self.clips = clips
        order = torch.randperm(len(clips), generator=torch.Generator().manual_seed(seed)).tolist()
        self.partner = {order[k]: order[(k + 1) % len(order)] for k in range(len(order))}

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = dict(self.clips[i])
        item["shuffled_actions"] = self.clips[self.partner[i]]["actions"]
        return item


def evaluate(model, clips: Dataset, device: torch.device, batch_size: int = 8, seed: int = 0,
             workers: int = 0) -> dict:
    """Metrics with the true actions, next to copy-last, and the action sensitivity of the rollout.

    Returns means and standard errors over clips; `shuffled_*` and `zero_*` are the rollout
    with actions of other clips and with zero actions.
    """
    loader = DataLoader(_WithShuffledActions(clips, seed), batch_size=batch_size, num_workers=workers)
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {}
    for batch in loader:
        variants = {"": None, "shuffled_": batch["shuffled_actions"], "zero_": torch.zeros_like(batch["actions"])}
        for prefix, actions in variants.items():
            m = clip_metrics(model, batch, device, actions=actions)
            keys = m if not prefix else ("rollout_l1", "rollout_cos")
            for k in keys:
                parts.setdefault(prefix + k, []).append(m[k])
    report = summarize({k: torch.cat(v) for k, v in parts.items()})
    true = torch.tensor(report["rollout_l1"])
    report["shuffled_over_true"] = (torch.tensor(report["shuffled_rollout_l1"]) / true).tolist()
    report["zero_over_true"] = (torch.tensor(report["zero_rollout_l1"]) / true).tolist()
    return report


def plot_report(report: dict, path) -> None:
    """Error against horizon: model rollout, copy-last, shuffled and zero actions (with standard errors)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h = list(range(1, len(report["rollout_l1"]) + 1))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric, label in ((axes[0], "l1", "L1 (lower is better)"), (axes[1], "cos", "cosine (higher is better)")):
        for key, name in ((f"rollout_{metric}", "model, true actions"), (f"copy_{metric}", "copy last frame"),
                          (f"shuffled_rollout_{metric}", "model, shuffled actions"),
                          (f"zero_rollout_{metric}", "model, zero actions")):
            ax.errorbar(h, report[key], yerr=report[key + "_se"], marker="o", capsize=3, label=name)
        ax.set_xlabel("horizon h (stored frames ahead)")
        ax.set_ylabel(label)
        ax.set_xticks(h)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"autoregressive rollout on {report['clips']} held-out clips")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
