"""Planning with a trained world model (SPEC §6): energies of action sequences and the cross-entropy method.

Energy of an action sequence a_0..a_{H-1} from a start frame z (with its state s) = mean L1
between the layer-normalised prediction after the last step and the goal features. States
are rolled forward with the actions (xyz + d, R_delta R, gripper clipped to [0, 1]).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from store import UserError

from .geometry import actions_from_states, apply_action
from .losses import normalize

SEARCH_DIMS = {"xyzg": [0, 1, 2, 6], "all": list(range(7))}


@dataclass
class CEMConfig:
    samples: int = 800
    iterations: int = 10
    elites: int = 10
    horizon: int = 1
    momentum_mean: float = 0.15  # new = elites * (1 - m) + old * m
    momentum_std: float = 0.15
    maxnorm: float = 0.075  # each xyz component clipped to +-maxnorm (m)
    gripper_max: float = 0.75  # gripper change clipped to +-gripper_max
    rotation_max: float = 0.25  # rad, per Euler component, when rotations are searched
    dims: str = "xyzg"  # xyz + gripper as the reference; "all" for the 7 dims
    batch: int = 800  # energies evaluated per predictor call
    seed: int = 0

    def check(self) -> None:
        if self.dims not in SEARCH_DIMS:
            raise UserError(f"--dims must be one of {', '.join(SEARCH_DIMS)}")
        if not 1 <= self.elites <= self.samples or self.iterations < 1 or self.horizon < 1:
            raise UserError("need 1 <= elites <= samples, iterations >= 1 and horizon >= 1")


def clip_actions(a: torch.Tensor, cfg: CEMConfig) -> torch.Tensor:
    """Clip full 7-D actions to the search box."""
    limit = torch.tensor([cfg.maxnorm] * 3 + [cfg.rotation_max] * 3 + [cfg.gripper_max], device=a.device)
    return torch.maximum(torch.minimum(a, limit), -limit)


@torch.no_grad()
def energies(model, z0: torch.Tensor, state: torch.Tensor, goal: torch.Tensor, actions: torch.Tensor,
             batch: int = 800) -> torch.Tensor:
    """Energy [S] of S action sequences [S, H, 7] from the normalised start frame z0 [N, D] with `state` [7]."""
    device = z0.device
    out = []
    for chunk in actions.split(batch):
        s, h = chunk.shape[:2]
        states = [state.expand(s, 7)]
        for k in range(h - 1):
            states.append(apply_action(states[-1], chunk[:, k]))
        states = torch.stack(states, 1).float()
        seq = z0.expand(s, 1, *z0.shape)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            for k in range(h):
                nxt = normalize(model(seq, chunk[:, :k + 1], states[:, :k + 1])[:, -1:])
                seq = torch.cat([seq, nxt], 1)
        out.append((seq[:, -1].float() - goal).abs().mean((1, 2)))
    return torch.cat(out)


@dataclass
class Plan:
    actions: torch.Tensor  # [H, 7]
    energy: float
    seconds: float
    evaluations: int


def cem(energy, cfg: CEMConfig) -> Plan:
    """Cross-entropy method over the searched action dims; returns the final mean sequence.

    `energy(actions [S, H, 7] on CPU) -> [S]` scores candidate sequences (lower is better).
    """
    cfg.check()
    dims = SEARCH_DIMS[cfg.dims]
    g = torch.Generator().manual_seed(cfg.seed)
    init_std = torch.tensor([cfg.maxnorm] * 3 + [cfg.rotation_max] * 3 + [1.0])[dims]
    mean = torch.zeros(cfg.horizon, len(dims))
    std = init_std.expand(cfg.horizon, -1).clone()
    start = time.perf_counter()
    for _ in range(cfg.iterations):
        sample = mean + std * torch.randn(cfg.samples, cfg.horizon, len(dims), generator=g)
        full = clip_actions(_embed(sample, dims), cfg)
        e = energy(full).float().cpu()
        elite = full[e.topk(cfg.elites, largest=False).indices][..., dims]
        mean = elite.mean(0) * (1 - cfg.momentum_mean) + mean * cfg.momentum_mean
        std = elite.std(0, unbiased=cfg.elites > 1) * (1 - cfg.momentum_std) + std * cfg.momentum_std
    best = clip_actions(_embed(mean.unsqueeze(0), dims), cfg)
    value = float(energy(best).item())  # synchronises with the device
    return Plan(best[0], value, time.perf_counter() - start, cfg.samples * cfg.iterations + 1)


def plan_to_goal(model, z0: torch.Tensor, state: torch.Tensor, goal: torch.Tensor, cfg: CEMConfig) -> Plan:
    """CEM with the world model's energy from start frame z0 (state) to the goal features."""
    return cem(lambda a: energies(model, z0, state, goal, a.to(z0.device), cfg.batch), cfg)


def _embed(x: torch.Tensor, dims: list[int]) -> torch.Tensor:
    full = torch.zeros(*x.shape[:-1], 7)
    full[..., dims] = x
    return full


def landscape(model, z0: torch.Tensor, state: torch.Tensor, goal: torch.Tensor, extent: float,
              points: int = 21, batch: int = 800) -> tuple[torch.Tensor, torch.Tensor]:
    """Energy over a grid of one-step (dx, dy) actions in [-extent, extent]^2 (other dims 0).

    Returns the grid values [points] and the energies [points (dy), points (dx)].
    """
    grid = torch.linspace(-extent, extent, points)
    dy, dx = torch.meshgrid(grid, grid, indexing="ij")
    actions = torch.zeros(points * points, 1, 7)
    actions[:, 0, 0], actions[:, 0, 1] = dx.flatten(), dy.flatten()
    e = energies(model, z0, state, goal, actions.to(z0.device), batch).cpu()
    return grid, e.view(points, points)


def plot_landscape(grid: torch.Tensor, energy: torch.Tensor, true_action: torch.Tensor | None,
                   planned: torch.Tensor | None, path) -> None:
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


def store_pair(store, episode: int, start: int, goal: int, device: torch.device):
    """(z_start [N, D], state [7], z_goal [N, D], true actions [goal-start, 7]) from a store episode."""
    n = store.num_frames(episode)
    if not 0 <= start < n:
        raise UserError(f"--start {start} is outside episode {episode} (frames 0..{n - 1})")
    if not start < goal < n:
        raise UserError(f"--goal must be after --start and inside the episode (frames {start + 1}..{n - 1})")
    feats, states = store.read_window(episode, start, goal - start + 1)
    z = normalize(feats.to(device))
    return z[0], states[0].to(device), z[-1], actions_from_states(states)


def offline_planning(model, store, episodes: list[int], k: int, pairs: int, cfg: CEMConfig,
                     device: torch.device, on_pair=None) -> dict:
    """Plan between held-out frames k apart and compare with the true displacement.

    Per pair: xyz error of the planned total displacement (m), direction cosine, gripper
    error; the zero-action baseline's errors are |true displacement| and |true gripper change|.
    """
    candidates = [(e, s) for e in episodes for s in range(store.num_frames(e) - k)]
    if not candidates:
        raise UserError(f"no held-out episode has more than {k} frames")
    step = max(1, len(candidates) // pairs)
    rows = []
    for e, s in candidates[::step][:pairs]:
        z0, state, goal, true = store_pair(store, e, s, s + k, device)
        plan = plan_to_goal(model, z0, state, goal, CEMConfig(**{**cfg.__dict__, "horizon": k}))
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
    return {"pairs": len(rows), "k": k, "mean": mean, "rows": rows}


def encode_images(paths: list, ckpt: dict, encoder_checkpoint, device: torch.device) -> torch.Tensor:
    """Normalised features [len(paths), N, D] of image files, through the encoder the model was trained on.

    The encoder preset and weights id come from the checkpoint's store attributes (ours), or are
    the released ViT-g with the encoder inside the checkpoint itself (vjepa2-ac-vitg.pt).
    """
    from PIL import Image

    from extract.encoder import ENCODER_ENTRIES, build_encoder
    from extract.preprocess import preprocess
    from extract.vit import ENCODER_PRESETS, VisionTransformer
    from extract.weights import checkpoint_entry, load_strict

    attrs = ckpt.get("store", {"preset": "vit_giant", "checkpoint_sha256": None})
    weights = attrs["checkpoint_sha256"]
    if weights and weights.startswith("random-init-seed"):
        encoder, _ = build_encoder(attrs["preset"], random_init=True, seed=int(weights.removeprefix("random-init-seed")))
    elif encoder_checkpoint is not None:
        encoder, got = build_encoder(attrs["preset"], checkpoint=encoder_checkpoint)
        if weights and got != weights:
            raise UserError(f"{encoder_checkpoint} is not the encoder the features were made with "
                            f"(sha256 {got[:12]}... vs {weights[:12]}...)")
    elif any(isinstance(ckpt.get(e), dict) for e in ENCODER_ENTRIES):
        encoder = VisionTransformer(ENCODER_PRESETS[attrs["preset"]])
        load_strict(encoder, checkpoint_entry(ckpt, ENCODER_ENTRIES, "the checkpoint")[1], "encoder of the checkpoint")
        encoder.eval().requires_grad_(False)
    else:
        raise UserError("give --encoder-checkpoint: the encoder the store's features were made with")
    frames = []
    for p in paths:
        try:
            frames.append(np.asarray(Image.open(p).convert("RGB")))
        except OSError as e:
            raise UserError(f"cannot read image {p}: {e}") from None
    size = encoder.preset.image_size
    x = torch.cat([preprocess(f[None], size) for f in frames]).to(device)
    encoder.to(device)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
        return normalize(encoder(x)).float()
