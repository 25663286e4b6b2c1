"""Planning with a trained world model (SPEC §6): energies of action sequences, the cross-entropy method,
and the Planner (train/plan_report.py runs the `plan` and `plan-eval` commands on them).

Energy of an action sequence a_0..a_{H-1} from a start frame z (with its state s) = mean L1
between the layer-normalised prediction after the last step and the goal features (with
`--energy all`, the mean over the predictions after every step). States
are rolled forward by the action space's rule (store.actions: pose-delta as SPEC §6, s + a for
state-delta, hold or target for a dataset's column).

CEM searches a box per action dim: for pose-delta the reference's (xyz within +-maxnorm, gripper
within +-gripper-max, rotations 0 unless searched); otherwise the data's 1st..99th percentile of
each dim (the store's statistics, kept in the checkpoint).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from common.device import bf16_autocast
from common.errors import UserError
from model.checkpoint import ModelMeta
from store.actions import next_state
from store.format import POSE_DELTA, STATE_DELTA, action_names

from .config import CEMConfig
from .losses import normalize, rollout

GRIPPER_INIT_STD = 1.0  # pose-delta: the gripper change is searched over its whole range [-1, 1] at first
XYZG = [0, 1, 2, 6]  # pose-delta's dims searched by the reference: rotations stay 0
LANDSCAPE_POINTS = 21  # per dim of `--landscape`'s grid: odd, so the search's start is on it


def names_of(meta: ModelMeta) -> list[str]:
    """The model's action dim names."""
    return action_names(meta.action_names, meta.actions, meta.action_dim)


def searched_dims(spec: str | None, meta: ModelMeta) -> list[int]:
    """--dims: xyzg, all, or indices and names separated by commas (default: xyzg for pose-delta, else all)."""
    spec = spec or ("xyzg" if meta.actions == POSE_DELTA else "all")
    if spec == "all":
        return list(range(meta.action_dim))
    if spec == "xyzg":
        if meta.actions != POSE_DELTA:
            raise UserError("--dims xyzg is for pose-delta actions; give all, or indices or names")
        return XYZG
    names, dims = names_of(meta), []
    for item in spec.split(","):
        item = item.strip()
        if item.isdigit() and int(item) < meta.action_dim:
            dims.append(int(item))
        elif item in names:
            dims.append(names.index(item))
        else:
            raise UserError(f"--dims {item!r} is not an action dim of this model; it has 0..{meta.action_dim - 1}: "
                            f"{', '.join(names)}")
    return sorted(set(dims))


@dataclass
class SearchSpace:
    """Where CEM looks: a box per action dim, where it starts, and the dims it searches (the others
    stay at their start value)."""

    low: torch.Tensor  # [A]
    high: torch.Tensor  # [A]
    mean: torch.Tensor  # [A]: the start of the search
    std: torch.Tensor  # [A]: its initial spread
    dims: list[int]

    def clip(self, actions: torch.Tensor) -> torch.Tensor:
        return torch.maximum(torch.minimum(actions, self.high), self.low)


def search_space(meta: ModelMeta, cfg: CEMConfig, state: torch.Tensor) -> SearchSpace:
    """Each action dim within the data's p01..p99 (the store's statistics, when the model has them), and for
    pose-delta also within SPEC §6's box; starting from no move (0 for deltas, the current state for a
    target column, the box centre for other columns)."""
    dims = searched_dims(cfg.dims, meta)
    stats = (meta.stats or {}).get("action")
    if meta.actions == POSE_DELTA:
        limit = torch.tensor([cfg.maxnorm] * 3 + [cfg.rotation_max] * 3 + [cfg.gripper_max])
        std = torch.tensor([cfg.maxnorm] * 3 + [cfg.rotation_max] * 3 + [GRIPPER_INIT_STD])
        low, high = -limit, limit
        if stats:  # where the model has seen no data, its energies mean nothing
            low, high = torch.maximum(low, torch.tensor(stats["p01"])), torch.minimum(high, torch.tensor(stats["p99"]))
        return SearchSpace(low, high, torch.zeros(7).clamp(low, high), std, dims)
    if not stats:
        raise UserError("this model records no action statistics to bound the search (train it on a store "
                        "merged by this version)")
    low, high = torch.tensor(stats["p01"]), torch.tensor(stats["p99"])
    if meta.actions == STATE_DELTA:
        start = torch.zeros_like(low)
    elif cfg.state_from_action == "target":
        start = state.cpu().float().repeat(meta.action_dim // len(state))
    else:
        start = (low + high) / 2
    space = SearchSpace(low, high, start, ((high - low) / 2).clamp_min(1e-6), dims)
    space.mean = space.clip(space.mean)
    return space


@dataclass
class Plan:
    actions: torch.Tensor  # [H, A]
    energy: float
    seconds: float
    evaluations: int


def cem(energy: Callable[[torch.Tensor], torch.Tensor], space: SearchSpace, cfg: CEMConfig, horizon: int = 1) -> Plan:
    """Cross-entropy method over the searched dims of `space`; returns the final mean sequence, or with
    `pick` best the lowest-energy candidate seen (each iteration's mean is one of them).

    `energy(actions [S, H, A] on CPU) -> [S]` scores candidate sequences (lower is better).
    """
    dims = space.dims
    g = torch.Generator().manual_seed(cfg.seed)
    mean = space.mean[dims].expand(horizon, -1).clone()
    std = space.std[dims].expand(horizon, -1).clone()
    start = time.perf_counter()

    def full(x: torch.Tensor) -> torch.Tensor:  # [..., H, len(dims)] -> [..., H, A], clipped to the box
        out = space.mean.expand(*x.shape[:-1], -1).clone()
        out[..., dims] = x
        return space.clip(out)

    best, value = None, float("inf")
    for _ in range(cfg.iterations):
        candidates = full(mean + std * torch.randn(cfg.samples, horizon, len(dims), generator=g))
        if cfg.pick == "best":
            candidates[0] = full(mean)
        e = energy(candidates).float().cpu()
        if cfg.pick == "best" and e.min() < value:
            best, value = candidates[e.argmin()], float(e.min())
        elite = candidates[e.topk(cfg.elites, largest=False).indices][..., dims]
        mean = elite.mean(0) * (1 - cfg.momentum_mean) + mean * cfg.momentum_mean
        std = elite.std(0, unbiased=cfg.elites > 1) * (1 - cfg.momentum_std) + std * cfg.momentum_std
    if cfg.pick == "best":
        return Plan(best, value, time.perf_counter() - start, cfg.samples * cfg.iterations)
    best = full(mean.unsqueeze(0))
    value = float(energy(best).item())  # synchronises with the device
    return Plan(best[0], value, time.perf_counter() - start, cfg.samples * cfg.iterations + 1)


class Planner:
    """A trained world model as a controller: the model, its metadata (action space, statistics), the
    CEM settings, the state rule and (for camera images) the encoder its features came from.
    `plan` searches actions from a start frame's features to a goal's; `act` does it from camera
    images, as a robot loop calls it: `action = planner.act(image, state, goal_image)`."""

    def __init__(self, model, meta: ModelMeta, cfg: CEMConfig, device: torch.device, cached: bool = True,
                 encoder=None):
        self.model, self.meta, self.cfg, self.device = model.to(device).eval(), meta, cfg, device
        self.encoder = None if encoder is None else encoder.to(device)
        self.cached = cached  # incremental rollouts (losses.rollout); off only to measure what they save
        searched_dims(cfg.dims, meta)  # a bad --dims fails before any work
        if cfg.state_from_action == "target" and meta.actions.startswith("column:") and \
                meta.action_dim % meta.state_dim:
            raise UserError(f"--state-from-action target needs actions made of state-sized targets; these are "
                            f"{meta.action_dim}-D for {meta.state_dim}-D states")

    def next_state(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return next_state(self.meta.actions, self.cfg.state_from_action, state, action)

    @torch.no_grad()
    def energies(self, z0: torch.Tensor, state: torch.Tensor, goal: torch.Tensor, actions: torch.Tensor,
                 goal_state: torch.Tensor | None = None) -> torch.Tensor:
        """Energy [S] of S action sequences [S, H, A] from the normalised start frame z0 [N, D] with `state`:
        the mean L1 of the last predicted frame (or with `energy` all, of every one) to the goal [N, D], plus
        with `state_weight` the weighted distance of the state after the same actions to `goal_state`."""
        scale = self._state_scale(goal_state)
        out = []
        for chunk in actions.to(z0.device).split(self.cfg.energy_batch):
            s, h = chunk.shape[:2]
            states = [state.expand(s, -1)]
            for k in range(h):
                states.append(self.next_state(states[-1], chunk[:, k]))
            with bf16_autocast(z0.device):
                frames = rollout(self.model, z0.expand(s, 1, *z0.shape), chunk, torch.stack(states[:h], 1).float(),
                                 h, self.cached)  # [s, h, N, D]
            after = torch.stack(states[1:], 1)  # [s, h, S]: the state after each action
            if self.cfg.energy == "last":
                frames, after = frames[:, -1:], after[:, -1:]
            e = (frames.float() - goal).abs().mean((1, 2, 3))
            if scale is not None:
                e = e + self.cfg.state_weight * ((after.float() - goal_state) / scale).abs().mean((1, 2))
            out.append(e)
        return torch.cat(out)

    def _state_scale(self, goal_state: torch.Tensor | None) -> torch.Tensor | None:
        """Per-dim std of the data's states [S] where the energy weighs the state, else None."""
        if not self.cfg.state_weight:
            return None
        if goal_state is None:
            raise UserError("--state-weight needs the goal's state, and none was given with this goal")
        std = ((self.meta.stats or {}).get("state") or {}).get("std")
        if std is None:
            raise UserError("--state-weight: this model records no state statistics (train it on a store merged by "
                            "this version)")
        return torch.tensor(std, device=goal_state.device).float().clamp_min(1e-6)

    @torch.inference_mode()
    def encode(self, images: list[np.ndarray]) -> torch.Tensor:
        """Normalised features [len(images), N, D] of uint8 RGB images [H, W, 3], preprocessed as the store's."""
        x = torch.cat([self.encoder.input.apply(np.asarray(f)[None]) for f in images])
        with bf16_autocast(self.device):
            z = normalize(self.encoder(x.to(self.device))).float()
        if z.shape[-1] != self.meta.feature_dim:
            raise UserError(f"the encoder gives {z.shape[-1]}-dim features, the predictor takes "
                            f"{self.meta.feature_dim}")
        return z

    def act(self, image: np.ndarray, state, goal_image: np.ndarray, horizon: int = 1, goal_state=None) -> np.ndarray:
        """The first action [A] of a plan from the camera image and robot state to the goal image (and the goal's
        state, which `state_weight` needs)."""
        z0, zg = self.encode([image, goal_image])
        state, goal_state = (None if v is None else torch.as_tensor(np.asarray(v, np.float32), device=self.device)
                             for v in (state, goal_state))
        return self.plan(z0, state, zg, horizon, goal_state).actions[0].cpu().numpy()

    def space(self, state: torch.Tensor) -> SearchSpace:
        return search_space(self.meta, self.cfg, state)

    def plan(self, z0: torch.Tensor, state: torch.Tensor, goal: torch.Tensor, horizon: int = 1,
             goal_state: torch.Tensor | None = None) -> Plan:
        """CEM with the world model's energy from start frame z0 (state) to the goal features (and state)."""
        self._state_scale(goal_state)  # a missing goal state fails before any work
        return cem(lambda a: self.energies(z0, state, goal, a, goal_state), self.space(state), self.cfg, horizon)

    def landscape(self, z0: torch.Tensor, state: torch.Tensor, goal: torch.Tensor,
                  goal_state: torch.Tensor | None = None) -> tuple[list[int], torch.Tensor, torch.Tensor, torch.Tensor]:
        """Energy over a grid of one-step actions varying the first two searched dims across their box
        (the others at the search's start). Returns the two dims, their values [points] each and the
        energies [points (second dim), points (first dim)]."""
        space, points = self.space(state), LANDSCAPE_POINTS
        i, j = (space.dims * 2)[:2]
        xs, ys = (torch.linspace(float(space.low[d]), float(space.high[d]), points) for d in (i, j))
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        actions = space.mean.expand(points * points, 1, -1).clone()
        actions[:, 0, i], actions[:, 0, j] = gx.flatten(), gy.flatten()
        return [i, j], xs, ys, self.energies(z0, state, goal, actions, goal_state).cpu().view(points, points)
