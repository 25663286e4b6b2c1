"""Summaries of a store for people: shard listing, totals, one episode, feature statistics."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .format import (
    POSE_DELTA, Location, read_root_attrs, read_seal, sealed_units, shard_dir, state_names, unsealed_units,
)
from .location import tree_bytes, where
from .reader import Store

PCA_SAMPLE_TOKENS = 20_000  # tokens the principal components are fitted on (enough for 3 components)
PCA_RANGE_EVERY = 7  # the colour range is taken from every 7th projected token (quantiles need no more)
FILMSTRIP_FRAMES = 16  # at most this many frames of an episode in `store show --png`


@dataclass
class ShardRow:
    unit: int
    sealed: bool
    episodes: int | None  # from the seal; None when unsealed
    frames: int | None
    bytes: int
    codec: str


def shard_rows(root: Location | str) -> list[ShardRow]:
    """One row per shard directory present (sealed or not)."""
    root = where(root)
    codec = read_root_attrs(root)["codec"]
    out = []
    sealed = set(sealed_units(root))
    for unit in sorted(sealed | set(unsealed_units(root))):
        seal = read_seal(root, unit) if unit in sealed else {}
        out.append(ShardRow(unit, unit in sealed, seal.get("episodes"), seal.get("rows"),
                            tree_bytes(shard_dir(root, unit)), codec))
    return out


@dataclass
class StoreSummary:
    attrs: dict  # the root attributes: format version and extraction settings
    units_sealed: int
    num_units: int
    episodes_ok: int
    episodes_skipped: int
    frames: int
    hours: float  # of video, at the stored fps
    bytes: int


def summary(store: Store) -> StoreSummary:
    """Store attributes plus totals."""
    status = store.episodes["status"].to_pylist()
    ok = sum(s == "ok" for s in status)
    frames = store.total_frames
    return StoreSummary(store.attrs, len(store.sealed), store.num_units, ok, len(status) - ok, frames,
                        frames / store.config.fps / 3600, tree_bytes(store.root))


@dataclass
class EpisodeSummary:
    row: dict  # the manifest row
    state: dict = field(default_factory=dict)  # names, first, last, min, max, path_length (ok episodes)
    frames: dict = field(default_factory=dict)  # per-frame lists: frame_index, timestamp, mean, std, ...


def episode_summary(store: Store, episode_id: int) -> EpisodeSummary:
    """Manifest row, state trajectory summary and per-frame feature statistics of an episode."""
    out = EpisodeSummary(store.episode(episode_id))
    if out.row["status"] != "ok":
        return out
    data = store.read_episode(episode_id)
    f = data["features"].float()
    s = data["state"]
    out.state = {
        "first": s[0].tolist(), "last": s[-1].tolist(), "min": s.min(0).tolist(),
        "max": s.max(0).tolist(),
        "names": state_names(store.config.state_names, store.config.actions, store.config.state_dim),
        # how far the robot moved: of the end effector's xyz for pose-delta stores, else of the whole state
        "path_length": float(np.linalg.norm(np.diff(s[:, :3] if store.config.actions == POSE_DELTA else s, axis=0),
                                            axis=1).sum()),
    }
    out.frames = {
        "frame_index": data["frame_index"].tolist(),
        "timestamp": data["timestamp"].tolist(),
        "mean": f.mean((1, 2)).tolist(),
        "std": f.std((1, 2)).tolist(),
        "token_norm": f.norm(dim=2).mean(1).tolist(),
        # how much the features change from one frame to the next (motion the model must predict)
        "delta_l1": [0.0] + (f[1:] - f[:-1]).abs().mean((1, 2)).tolist(),
    }
    return out


def feature_stats(store: Store, on_episode: Callable[[int], None] | None = None) -> dict[str, float]:
    """Mean/std of all feature values, token-norm range and NaN/Inf counts (features and states)."""
    n = nan = inf = state_nan = state_inf = 0
    total = total_sq = 0.0
    norm_min, norm_max, norm_sum, tokens = float("inf"), 0.0, 0.0, 0
    per_dim = torch.zeros(store.config.feature_dim, dtype=torch.float64)
    for e in store.ok_episodes:
        data = store.read_episode(e)
        state_nan += int(np.isnan(data["state"]).sum())
        state_inf += int(np.isinf(data["state"]).sum())
        f = data["features"].double()
        nan += int(torch.isnan(f).sum())
        inf += int(torch.isinf(f).sum())
        f = torch.nan_to_num(f, nan=0.0, posinf=0.0, neginf=0.0)
        n += f.numel()
        total += float(f.sum())
        total_sq += float((f * f).sum())
        per_dim += f.sum((0, 1))
        norms = f.norm(dim=-1)
        norm_min, norm_max = min(norm_min, float(norms.min())), max(norm_max, float(norms.max()))
        norm_sum += float(norms.sum())
        tokens += norms.numel()
        if on_episode:
            on_episode(e)
    counts = {"values": n, "nan": nan, "inf": inf, "state_nan": state_nan, "state_inf": state_inf}
    if n == 0:
        return counts
    mean = total / n
    dim_means = per_dim / (n / store.config.feature_dim)
    return {
        **counts, "mean": mean, "std": max(total_sq / n - mean * mean, 0.0) ** 0.5,
        "token_norm_mean": norm_sum / tokens, "token_norm_min": norm_min, "token_norm_max": norm_max,
        "dim_mean_min": float(dim_means.min()), "dim_mean_max": float(dim_means.max()),
    }


def pca_rgb(features: torch.Tensor, grid: tuple[int, int]) -> np.ndarray:
    """[n, tokens, D] -> [n, rows, cols, 3] in [0, 1]: the first three principal components."""
    x = features.float().reshape(-1, features.shape[-1])
    x = x - x.mean(0)
    sample = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:PCA_SAMPLE_TOKENS]]
    _, _, v = torch.linalg.svd(sample, full_matrices=False)
    proj = x @ v[:3].T
    every = proj[::PCA_RANGE_EVERY]
    lo, hi = torch.quantile(every, 0.01, dim=0), torch.quantile(every, 0.99, dim=0)
    rgb = ((proj - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1)
    return rgb.reshape(features.shape[0], *grid, 3).numpy()


def episode_png(store: Store, episode_id: int, path: Path) -> None:
    """A filmstrip of the episode's features (PCA to RGB) above its state trajectory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = store.read_episode(episode_id)
    n = len(data["state"])
    show = np.unique(np.linspace(0, n - 1, min(n, FILMSTRIP_FRAMES)).round().astype(int))
    rgb = pca_rgb(data["features"], store.config.grid)
    fig = plt.figure(figsize=(max(8, 1.2 * len(show)), 5.5))
    grid = fig.add_gridspec(2, len(show), height_ratios=[1, 1.6])
    for i, t in enumerate(show):
        ax = fig.add_subplot(grid[0, i])
        ax.imshow(rgb[t], interpolation="nearest")
        ax.set_title(f"t={t}", fontsize=8)
        ax.axis("off")
    ax = fig.add_subplot(grid[1, :])
    s = data["state"]
    names = state_names(store.config.state_names, store.config.actions, store.config.state_dim)
    for j, name in enumerate(names):
        ax.plot(np.arange(n), s[:, j], label=name, linestyle="-" if j < 3 or j == 6 else ":")
    ax.set_xlabel("stored frame")
    ax.set_ylabel("state")
    ax.legend(ncol=min(len(names), 8), fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.15))
    row = store.episode(episode_id)
    fig.suptitle(f"episode {episode_id}: {row['source']}  {row['task']}"[:120], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")  # (named: a path without a suffix is written as given, not as .png)
    plt.close(fig)
