"""Per-clip prediction metrics, used by the trainer's validation and by `cli.py eval`.

For a clip z_0..z_{F-1} (normalised): the teacher-forced L1, and for every horizon
h = 1..F-1 the L1 / cosine of the autoregressive rollout from z_0 against z_h, next to
the copy-the-last-frame baseline (predict z_h by z_0).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from common.device import bf16_autocast, pick_device
from common.errors import UserError
from common.files import output_dir
from common.media import free_decoders
from model.checkpoint import load_trained
from store import open_store

from .checkpoint import episodes_of
from .config import EvalConfig
from .data import ClipDataset, evenly_spaced
from .losses import normalize, predict, rollout

# How much worse other clips' actions make the rollouts (shuffled / true, averaged over the horizons) says
# whether a model can plan. A model blind to its actions gives exactly 1.000; above 1.02 it uses them (a
# difference one can see on the horizon plot, well above the ratio's run-to-run noise, < 0.5% on the demo).
# In BENCHMARKS.md's closed loops, models at 1.10 or less reached 0-10% of their goals and models at 1.19 or
# more 60-100%: 1.15 is the line to clear before planning.
USES_ACTIONS_MARGIN = 0.02
PLANS_MARGIN = 0.15


@torch.no_grad()
def clip_metrics(model, batch: dict[str, torch.Tensor], device: torch.device,
                 actions: torch.Tensor | None = None, rollout_only: bool = False) -> dict[str, torch.Tensor]:
    """Per-clip metrics of one batch: tf_l1 [B]; rollout_l1/cos, copy_l1/cos [B, F-1].

    `actions` replaces the clip's true actions (action-sensitivity tests); `rollout_only` skips
    the teacher-forced and copy-last metrics, which do not depend on them.
    """
    z = normalize(batch["features"].to(device))
    s = batch["states"].to(device).float()
    a = (batch["actions"] if actions is None else actions).to(device).float()
    target = z[:, 1:]
    with bf16_autocast(device):
        roll = rollout(model, z[:, :1], a, s, z.shape[1] - 1).float()
        out = {"rollout_l1": (roll - target).abs().mean((2, 3)).cpu(),
               "rollout_cos": F.cosine_similarity(roll, target, dim=-1).mean(2).cpu()}
        if rollout_only:
            return out
        tf = predict(model, z[:, :-1], a, s[:, :-1]).float()
    copy = z[:, :1].expand_as(target)
    return {
        "tf_l1": (tf - target).abs().mean((1, 2, 3)).cpu(), **out,
        "copy_l1": (copy - target).abs().mean((2, 3)).cpu(),
        "copy_cos": F.cosine_similarity(copy, target, dim=-1).mean(2).cpu(),
    }


def _concat_batches(batches: Iterable[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Per-batch metrics ({name: [B, ...]}) concatenated over the clips of all batches."""
    parts: dict[str, list[torch.Tensor]] = {}
    for metrics in batches:
        for k, v in metrics.items():
            parts.setdefault(k, []).append(v)
    return {k: torch.cat(v) for k, v in parts.items()}


def collect(model, loader, device: torch.device) -> dict[str, torch.Tensor]:
    """clip_metrics over a whole loader, concatenated over clips."""
    was_training = model.training
    model.eval()
    per_clip = _concat_batches(clip_metrics(model, batch, device) for batch in loader)
    model.train(was_training)
    return per_clip


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


def evaluate(model, clips: Dataset, device: torch.device, batch_size: int = 8, seed: int = 0) -> dict:
    """Metrics with the true actions, next to copy-last, and the action sensitivity of the rollout.

    Returns means and standard errors over clips; `shuffled_*` and `zero_*` are the rollout
    with actions of other clips and with zero actions.
    """
    def with_variants(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        variants = {"": None, "shuffled_": batch["shuffled_actions"], "zero_": torch.zeros_like(batch["actions"])}
        return {prefix + k: v for prefix, actions in variants.items()
                for k, v in clip_metrics(model, batch, device, actions=actions, rollout_only=bool(prefix)).items()}

    loader = DataLoader(_WithShuffledActions(clips, seed), batch_size=batch_size)
    model.eval()
    free_decoders()
    report = summarize(_concat_batches(with_variants(batch) for batch in loader))
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


@dataclass
class EvalReport:
    metrics: dict  # evaluate()'s means and standard errors, as written to report.json
    frames: int
    out: Path  # folder holding report.json and horizon.png

    @property
    def shuffled_worse(self) -> float:
        """How much worse the rollouts get with other clips' actions, averaged over horizons (0.05 = 5%)."""
        ratios = self.metrics["shuffled_over_true"]
        return sum(ratios) / len(ratios) - 1

    @property
    def uses_actions(self) -> bool:
        return self.shuffled_worse > USES_ACTIONS_MARGIN

    @property
    def verdict(self) -> str:
        """What the action sensitivity says, in words, for the end of `eval`'s output."""
        if self.shuffled_worse > PLANS_MARGIN:
            return "the model uses its actions, as much as the models that planned in BENCHMARKS.md"
        if self.uses_actions:
            return ("the model uses its actions a little: below +15%, no model in BENCHMARKS.md reached its goals "
                    "in closed loop")
        return "the model barely uses its actions"


def run_eval(cfg: EvalConfig) -> EvalReport:
    """`cli.py eval`: metrics of a checkpoint on a store's held-out (or all) clips, with report and plot."""
    device = pick_device(cfg.device)
    store = open_store(cfg.store)
    model, _, ckpt = load_trained(cfg.checkpoint, store)
    frames = cfg.frames or ckpt.get("split", {}).get("frames", 8)
    clips = ClipDataset(store, episodes_of(ckpt, store, cfg.episodes), frames)
    if len(clips) < 2:  # (with one, its "other clip's actions" would be its own)
        raise UserError(f"{cfg.episodes} episodes of {cfg.store} hold {len(clips)} clip(s) of {frames} frames; eval "
                        "needs 2 or more: its action sensitivity gives each clip another's actions")
    out = output_dir(cfg.out or Path(cfg.checkpoint).parent / "eval", "--out")  # before the work, not after it
    metrics = evaluate(model.to(device), Subset(clips, evenly_spaced(len(clips), cfg.max_clips)), device,
                       cfg.batch_size, cfg.seed)
    metrics.update({"checkpoint": str(cfg.checkpoint), "store": str(cfg.store), "episodes": cfg.episodes,
                    "frames": frames})
    (out / "report.json").write_text(json.dumps(metrics, indent=1))
    plot_report(metrics, out / "horizon.png")
    return EvalReport(metrics, frames, out)
