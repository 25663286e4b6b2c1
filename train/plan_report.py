"""The `plan` and `plan-eval` commands around the planning core (train/plan.py): start and goal from a
store episode or from camera images, offline planning evaluation, energy landscapes and reports."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from common.device import pick_device
from common.errors import UserError
from common.files import output_dir
from common.media import read_image as decode_image
from common.settings import as_dict
from model.checkpoint import ModelMeta, load_trained
from model.encoders import store_encoder
from store import Store, open_store
from store.actions import clip_actions
from store.format import POSE_DELTA, state_names

from .checkpoint import episodes_of
from .config import PlanConfig, PlanEvalConfig
from .data import evenly_spaced
from .losses import normalize
from .plan import Plan, Planner, names_of


def plot_landscape(xs: torch.Tensor, ys: torch.Tensor, energy: torch.Tensor, labels: list[str],
                   true_action: torch.Tensor | None, planned: torch.Tensor | None, path: Path) -> None:
    """The energy over two action dims, with the minimum, the true action and the plan marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    extent = [float(xs[0]), float(xs[-1]), float(ys[0]), float(ys[-1])]
    im = ax.imshow(energy.numpy(), origin="lower", extent=extent, cmap="viridis", aspect="auto")
    fig.colorbar(im, ax=ax, label="energy (L1 to goal)")
    i = int(energy.argmin())
    ax.plot(xs[i % len(xs)], ys[i // len(xs)], "w*", markersize=14, label="minimum")
    if true_action is not None:
        ax.plot(true_action[0], true_action[1], "rx", markersize=12, mew=3, label="true action")
    if planned is not None:
        ax.plot(planned[0], planned[1], "o", mfc="none", mec="orange", markersize=12, mew=2, label="CEM plan")
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def store_pair(store: Store, episode: int, start: int, goal: int, device: torch.device):
    """(z_start [N, D], state [S], z_goal [N, D], goal state [S], true actions [goal-start, A]) from a store
    episode."""
    n = store.num_frames(episode)
    if not 0 <= start < n:
        raise UserError(f"--start {start} is outside episode {episode} (frames 0..{n - 1})")
    if not start < goal < n:
        raise UserError(f"--goal must be after --start and inside the episode (frames {start + 1}..{n - 1})")
    feats, states, stored = store.read_window(episode, start, goal - start + 1)
    z = normalize(feats.to(device))
    return z[0], states[0].to(device), z[-1], states[-1].to(device), clip_actions(store.config.actions, states, stored)


def read_image(path: Path) -> np.ndarray:
    """uint8 RGB [H, W, 3] of an image file."""
    try:
        return decode_image(path)
    except ValueError as e:
        raise UserError(f"cannot read image {path}: {e}") from None


def parse_state(text: str, meta: ModelMeta, device: torch.device, option: str = "--state") -> torch.Tensor:
    """'v0,v1,...' (given as `option`) -> a state [S] of the model's state dims."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != meta.state_dim or not all(map(math.isfinite, values)):
        names = ",".join(state_names(meta.state_names, meta.actions, meta.state_dim))
        raise UserError(f"{option} must be {meta.state_dim} comma-separated finite numbers ({names})")
    return torch.tensor(values, device=device)


@dataclass
class PlanResult:
    plan: Plan
    names: list[str]  # of the action dims
    true_actions: torch.Tensor | None  # [k, A] from the store episode, when planning between stored frames
    notes: list[str] = field(default_factory=list)
    landscape: Path | None = None
    device: str = "cpu"


def run_plan(cfg: PlanConfig) -> PlanResult:
    """`cli.py plan`: CEM from a start to a goal, both from a store episode or from two images and a state."""
    device = pick_device(cfg.device)
    true, notes = None, []
    if cfg.store is not None:
        store = open_store(cfg.store)
        model, meta, _ = load_trained(cfg.checkpoint, store)
        planner = Planner(model, meta, cfg.cem, device)
        goal = cfg.start + cfg.horizon if cfg.goal is None else cfg.goal
        z0, s0, zg, sg, true = store_pair(store, cfg.episode, cfg.start, goal, device)
        if len(true) != cfg.horizon:
            notes.append(f"goal is {len(true)} frames after start, planning {cfg.horizon} action(s)")
    else:
        model, meta, ckpt = load_trained(cfg.checkpoint)
        s0 = parse_state(cfg.state, meta, device)
        sg = None if cfg.goal_state is None else parse_state(cfg.goal_state, meta, device, "--goal-state")
        encoder = store_encoder(meta.encoder, cfg.encoder_checkpoint, ckpt)
        planner = Planner(model, meta, cfg.cem, device, encoder=encoder)
        z0, zg = planner.encode([read_image(cfg.image), read_image(cfg.goal_image)])
    plan = planner.plan(z0, s0, zg, cfg.horizon, sg)
    names = names_of(meta)
    if cfg.landscape:
        (i, j), xs, ys, energy = planner.landscape(z0, s0, zg, sg)
        plot_landscape(xs, ys, energy, [names[i], names[j]], None if true is None else true[0, [i, j]],
                       plan.actions[0, [i, j]], cfg.landscape)
    return PlanResult(plan, names, true, notes, cfg.landscape, str(device))


@dataclass
class PlanEvalResult:
    pairs: int
    k: int
    names: list[str]  # of the action dims
    mean: dict  # the per-pair values below, averaged (lists per action dim)
    rows: list[dict]  # per pair: episode, start, action_error and noop_error per dim, seconds; pose-delta: xyz ...
    out: Path | None = None  # folder of report.json


def pose_metrics(planned: torch.Tensor, true: torch.Tensor) -> dict[str, float]:
    """pose-delta: the planned total displacement against the true one (m), its direction, the gripper."""
    true_xyz, planned_xyz = true[:, :3].sum(0).double(), planned[:, :3].sum(0).double()
    true_g, planned_g = float(true[:, 6].sum()), float(planned[:, 6].sum())
    return {"xyz_error": float((planned_xyz - true_xyz).norm()), "zero_xyz_error": float(true_xyz.norm()),
            "cosine": float(torch.nn.functional.cosine_similarity(planned_xyz, true_xyz, dim=0)),
            "gripper_error": abs(planned_g - true_g), "zero_gripper_error": abs(true_g),
            "true_move": float(true_xyz.norm())}


def offline_planning(planner: Planner, store: Store, episodes: list[int], k: int, pairs: int,
                     on_pair: Callable[[dict], None] | None = None) -> PlanEvalResult:
    """Plan between held-out frames k apart and compare with the true actions.

    Per pair and action dim, in the data's units: the mean |planned - true| over the k actions, next
    to the no-move baseline (the search's start: zero for deltas, the current state for targets).
    For pose-delta also the displacement metrics of pose_metrics.
    """
    candidates = [(e, s) for e in episodes for s in range(store.num_frames(e) - k)]
    if not candidates:
        raise UserError(f"no held-out episode has more than {k} frames")
    rows = []
    for i in evenly_spaced(len(candidates), pairs):
        e, s = candidates[i]
        z0, state, goal, goal_state, true = store_pair(store, e, s, s + k, planner.device)
        plan = planner.plan(z0, state, goal, k, goal_state)
        true = true.double()
        noop = planner.space(state).mean.double()
        row = {"episode": e, "start": s, "action_error": (plan.actions.double() - true).abs().mean(0).tolist(),
               "noop_error": (noop - true).abs().mean(0).tolist(), "seconds": plan.seconds}
        if planner.meta.actions == POSE_DELTA:
            row.update(pose_metrics(plan.actions, true))
        rows.append(row)
        if on_pair:
            on_pair(row)
    mean = {key: np.mean([r[key] for r in rows], axis=0).tolist() for key in rows[0] if key not in ("episode", "start")}
    return PlanEvalResult(len(rows), k, names_of(planner.meta), mean, rows)


def run_plan_eval(cfg: PlanEvalConfig, on_pair: Callable[[dict], None] | None = None) -> PlanEvalResult:
    """`cli.py plan-eval`: offline planning over held-out pairs, written to report.json."""
    device = pick_device(cfg.device)
    store = open_store(cfg.store)
    model, meta, ckpt = load_trained(cfg.checkpoint, store)
    planner = Planner(model, meta, cfg.cem, device)
    out = output_dir(cfg.out or Path(cfg.checkpoint).parent / "plan-eval", "--out")  # before the work, not after it
    result = offline_planning(planner, store, episodes_of(ckpt, store, cfg.episodes), cfg.k, cfg.pairs, on_pair)
    result = replace(result, out=out)
    report = {"pairs": result.pairs, "k": result.k, "names": result.names, "mean": result.mean, "rows": result.rows,
              "cem": as_dict(cfg.cem)}
    (result.out / "report.json").write_text(json.dumps(report, indent=1))
    return result
