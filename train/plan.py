"""Planning with a trained world model (SPEC §6): energies of action sequences and the cross-entropy method.

Energy of an action sequence a_0..a_{H-1} from a start frame z (with its state s) = mean L1
between the layer-normalised prediction after the last step and the goal features. States
are rolled forward with the actions (xyz + d, R_delta R, gripper clipped to [0, 1]).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from common.device import pick_device
from common.errors import UserError
from common.files import output_dir
from common.settings import as_dict
from store import Store, open_store

from .checkpoint import RELEASED_META, episodes_of, load_trained
from .config import SEARCH_DIMS, CEMConfig, PlanConfig, PlanEvalConfig
from .data import evenly_spaced
from .geometry import actions_from_states, apply_action
from .losses import normalize, rollout

ACTION_DIM = 7
GRIPPER_INIT_STD = 1.0  # the gripper change is searched over its whole range [-1, 1] at first


def clip_actions(a: torch.Tensor, cfg: CEMConfig) -> torch.Tensor:
    """Clip full 7-D actions to the search box."""
    limit = torch.tensor([cfg.maxnorm] * 3 + [cfg.rotation_max] * 3 + [cfg.gripper_max], device=a.device)
    return torch.maximum(torch.minimum(a, limit), -limit)


@torch.no_grad()
def energies(model, z0: torch.Tensor, state: torch.Tensor, goal: torch.Tensor, actions: torch.Tensor,
             batch: int = 800) -> torch.Tensor:
    """Energy [S] of S action sequences [S, H, 7] from the normalised start frame z0 [N, D] with `state` [7]."""
    out = []
    for chunk in actions.split(batch):
        s, h = chunk.shape[:2]
        states = [state.expand(s, ACTION_DIM)]
        for k in range(h - 1):
            states.append(apply_action(states[-1], chunk[:, k]))
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=z0.device.type == "cuda"):
            last = rollout(model, z0.expand(s, 1, *z0.shape), chunk, torch.stack(states, 1).float(), h)[:, -1]
        out.append((last.float() - goal).abs().mean((1, 2)))
    return torch.cat(out)


@dataclass
class Plan:
    actions: torch.Tensor  # [H, 7]
    energy: float
    seconds: float
    evaluations: int


def cem(energy: Callable[[torch.Tensor], torch.Tensor], cfg: CEMConfig, horizon: int = 1) -> Plan:
    """Cross-entropy method over the searched action dims; returns the final mean sequence.

    `energy(actions [S, H, 7] on CPU) -> [S]` scores candidate sequences (lower is better).
    """
    dims = SEARCH_DIMS[cfg.dims]
    g = torch.Generator().manual_seed(cfg.seed)
    init_std = torch.tensor([cfg.maxnorm] * 3 + [cfg.rotation_max] * 3 + [GRIPPER_INIT_STD])[dims]
    mean = torch.zeros(horizon, len(dims))
    std = init_std.expand(horizon, -1).clone()
    start = time.perf_counter()
    for _ in range(cfg.iterations):
        sample = mean + std * torch.randn(cfg.samples, horizon, len(dims), generator=g)
        full = clip_actions(_embed(sample, dims), cfg)
        e = energy(full).float().cpu()
        elite = full[e.topk(cfg.elites, largest=False).indices][..., dims]
        mean = elite.mean(0) * (1 - cfg.momentum_mean) + mean * cfg.momentum_mean
        std = elite.std(0, unbiased=cfg.elites > 1) * (1 - cfg.momentum_std) + std * cfg.momentum_std
    best = clip_actions(_embed(mean.unsqueeze(0), dims), cfg)
    value = float(energy(best).item())  # synchronises with the device
    return Plan(best[0], value, time.perf_counter() - start, cfg.samples * cfg.iterations + 1)


def plan_to_goal(model, z0: torch.Tensor, state: torch.Tensor, goal: torch.Tensor, cfg: CEMConfig,
                 horizon: int = 1) -> Plan:
    """CEM with the world model's energy from start frame z0 (state) to the goal features."""
    return cem(lambda a: energies(model, z0, state, goal, a.to(z0.device), cfg.energy_batch), cfg, horizon)


def _embed(x: torch.Tensor, dims: list[int]) -> torch.Tensor:
    full = torch.zeros(*x.shape[:-1], ACTION_DIM)
    full[..., dims] = x
    return full


def landscape(model, z0: torch.Tensor, state: torch.Tensor, goal: torch.Tensor, extent: float,
              points: int = 21, batch: int = 800) -> tuple[torch.Tensor, torch.Tensor]:
    """Energy over a grid of one-step (dx, dy) actions in [-extent, extent]^2 (other dims 0).

    Returns the grid values [points] and the energies [points (dy), points (dx)].
    """
    grid = torch.linspace(-extent, extent, points)
    dy, dx = torch.meshgrid(grid, grid, indexing="ij")
    actions = torch.zeros(points * points, 1, ACTION_DIM)
    actions[:, 0, 0], actions[:, 0, 1] = dx.flatten(), dy.flatten()
    e = energies(model, z0, state, goal, actions.to(z0.device), batch).cpu()
    return grid, e.view(points, points)


def plot_landscape(grid: torch.Tensor, energy: torch.Tensor, true_action: torch.Tensor | None,
                   planned: torch.Tensor | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    extent = [float(grid[0]), float(grid[-1])] * 2
    im = ax.imshow(energy.numpy(), origin="lower", extent=extent, cmap="viridis", aspect="equal")
    fig.colorbar(im, ax=ax, label="energy (L1 to goal)")
    i = int(energy.argmin())
    ax.plot(grid[i % len(grid)], grid[i // len(grid)], "w*", markersize=14, label="minimum")
    if true_action is not None:
        ax.plot(true_action[0], true_action[1], "rx", markersize=12, mew=3, label="true action")
    if planned is not None:
        ax.plot(planned[0], planned[1], "o", mfc="none", mec="orange", markersize=12, mew=2, label="CEM plan")
    ax.set_xlabel("dx (m)")
    ax.set_ylabel("dy (m)")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def store_pair(store: Store, episode: int, start: int, goal: int, device: torch.device):
    """(z_start [N, D], state [7], z_goal [N, D], true actions [goal-start, 7]) from a store episode."""
    n = store.num_frames(episode)
    if not 0 <= start < n:
        raise UserError(f"--start {start} is outside episode {episode} (frames 0..{n - 1})")
    if not start < goal < n:
        raise UserError(f"--goal must be after --start and inside the episode (frames {start + 1}..{n - 1})")
    feats, states = store.read_window(episode, start, goal - start + 1)
    z = normalize(feats.to(device))
    return z[0], states[0].to(device), z[-1], actions_from_states(states)


def encode_images(paths: list[Path], ckpt: dict, encoder_checkpoint: Path | None,
                  device: torch.device) -> torch.Tensor:
    """Normalised features [len(paths), N, D] of image files, through the encoder the model was trained on."""
    from PIL import Image

    from extract.encoder import store_encoder
    from extract.preprocess import preprocess

    encoder = store_encoder(ckpt.get("store"), encoder_checkpoint, ckpt)
    frames = []
    for p in paths:
        try:
            frames.append(np.asarray(Image.open(p).convert("RGB")))
        except OSError as e:
            raise UserError(f"cannot read image {p}: {e}") from None
    x = torch.cat([preprocess(f[None], encoder.preset.image_size) for f in frames]).to(device)
    encoder.to(device)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
        return normalize(encoder(x)).float()


def parse_state(text: str, device: torch.device) -> torch.Tensor:
    """'x,y,z,roll,pitch,yaw,gripper' -> a state [7]."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != ACTION_DIM:
        raise UserError(f"--state must be {ACTION_DIM} comma-separated numbers (x,y,z,roll,pitch,yaw,gripper)")
    return torch.tensor(values, device=device)


@dataclass
class PlanResult:
    plan: Plan
    true_actions: torch.Tensor | None  # [k, 7] from the store episode, when planning between stored frames
    notes: list[str] = field(default_factory=list)
    landscape: Path | None = None
    device: str = "cpu"


def run_plan(cfg: PlanConfig) -> PlanResult:
    """`cli.py plan`: CEM from a start to a goal, both from a store episode or from two images and a state."""
    device = pick_device(cfg.device)
    true, notes = None, []
    if cfg.store is not None:
        store = open_store(cfg.store)
        model, _ = load_trained(cfg.checkpoint, store)
        goal = cfg.start + cfg.horizon if cfg.goal is None else cfg.goal
        z0, s0, zg, true = store_pair(store, cfg.episode, cfg.start, goal, device)
        if len(true) != cfg.horizon:
            notes.append(f"goal is {len(true)} frames after start, planning {cfg.horizon} action(s)")
    else:
        s0 = parse_state(cfg.state, device)
        model, ckpt = load_trained(cfg.checkpoint)
        z0, zg = encode_images([cfg.image, cfg.goal_image], ckpt, cfg.encoder_checkpoint, device)
        want = ckpt.get("model_meta", RELEASED_META)["feature_dim"]
        if z0.shape[-1] != want:
            raise UserError(f"the encoder gives {z0.shape[-1]}-dim features, the predictor takes {want}")
    model.to(device)
    plan = plan_to_goal(model, z0, s0, zg, cfg.cem, cfg.horizon)
    if cfg.landscape:
        grid, energy = landscape(model, z0, s0, zg, cfg.cem.maxnorm, batch=cfg.cem.energy_batch)
        plot_landscape(grid, energy, None if true is None else true[0, :2], plan.actions[0, :2], cfg.landscape)
    return PlanResult(plan, true, notes, cfg.landscape, str(device))


@dataclass
class PlanEvalResult:
    pairs: int
    k: int
    mean: dict[str, float]  # the per-pair values below, averaged
    rows: list[dict]  # per pair: episode, start, xyz_error, zero_xyz_error, cosine, gripper errors, ...
    out: Path | None = None  # folder of report.json


def offline_planning(model, store: Store, episodes: list[int], k: int, pairs: int, cfg: CEMConfig,
                     device: torch.device, on_pair: Callable[[dict], None] | None = None) -> PlanEvalResult:
    """Plan between held-out frames k apart and compare with the true displacement.

    Per pair: xyz error of the planned total displacement (m), direction cosine, gripper
    error; the zero-action baseline's errors are |true displacement| and |true gripper change|.
    """
    candidates = [(e, s) for e in episodes for s in range(store.num_frames(e) - k)]
    if not candidates:
        raise UserError(f"no held-out episode has more than {k} frames")
    rows = []
    for i in evenly_spaced(len(candidates), pairs):
        e, s = candidates[i]
        z0, state, goal, true = store_pair(store, e, s, s + k, device)
        plan = plan_to_goal(model, z0, state, goal, cfg, k)
        true_xyz, planned_xyz = true[:, :3].sum(0).double(), plan.actions[:, :3].sum(0).double()
        true_g, planned_g = float(true[:, 6].sum()), float(plan.actions[:, 6].sum())
        rows.append({
            "episode": e, "start": s,
            "xyz_error": float((planned_xyz - true_xyz).norm()), "zero_xyz_error": float(true_xyz.norm()),
            "cosine": float(torch.nn.functional.cosine_similarity(planned_xyz, true_xyz, dim=0)),
            "gripper_error": abs(planned_g - true_g), "zero_gripper_error": abs(true_g),
            "true_move": float(true_xyz.norm()), "seconds": plan.seconds,
        })
        if on_pair:
            on_pair(rows[-1])
    mean = {key: sum(r[key] for r in rows) / len(rows) for key in rows[0] if key not in ("episode", "start")}
    return PlanEvalResult(len(rows), k, mean, rows)


def run_plan_eval(cfg: PlanEvalConfig, on_pair: Callable[[dict], None] | None = None) -> PlanEvalResult:
    """`cli.py plan-eval`: offline planning over held-out pairs, written to report.json."""
    device = pick_device(cfg.device)
    store = open_store(cfg.store)
    model, ckpt = load_trained(cfg.checkpoint, store)
    result = offline_planning(model.to(device), store, episodes_of(ckpt, store, cfg.episodes), cfg.k, cfg.pairs,
                              cfg.cem, device, on_pair)
    result = replace(result, out=output_dir(cfg.out or Path(cfg.checkpoint).parent / "plan-eval", "--out"))
    report = {"pairs": result.pairs, "k": result.k, "mean": result.mean, "rows": result.rows, "cem": as_dict(cfg.cem)}
    (result.out / "report.json").write_text(json.dumps(report, indent=1))
    return result
