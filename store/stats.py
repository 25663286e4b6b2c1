"""Per-dim statistics of a store's states and actions, written into its root attributes by each merge.

For every ok episode's rows (actions: the F-1 actions between its F stored frames): mean, std,
min, max and the 1st and 99th percentile of each dim. The trainer z-scores with mean and std
(`--normalize`); the planner bounds its search by p01..p99 unless the action space has its own box.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from .actions import clip_actions
from .format import Location, StoreConfig
from .reader import shard_arrays

SUMMARIES = ("mean", "std", "min", "max", "p01", "p99")


def summarize(x: np.ndarray) -> dict[str, list[float]]:
    x = np.asarray(x, np.float64)
    values = [x.mean(0), x.std(0), x.min(0), x.max(0), np.percentile(x, 1, axis=0), np.percentile(x, 99, axis=0)]
    return {k: v.tolist() for k, v in zip(SUMMARIES, values)}


def robot_stats(root: Location, config: StoreConfig, episodes: pa.Table) -> dict:
    """{"state": {...}, "action": {...}} over the ok episodes of `episodes` (the merged manifest); {} if none."""
    ok = episodes.filter(pc.equal(episodes["status"], "ok")).to_pylist()
    per_unit = defaultdict(list)
    for row in ok:
        per_unit[row["unit"]].append((row["first_row"], row["num_frames"]))
    states, actions = [], []
    for unit, spans in sorted(per_unit.items()):
        arrays = shard_arrays(root, unit, config)
        st = arrays["state"][:]
        stored = arrays["action"][:] if config.stored_actions else None
        for first, n in spans:
            s = torch.from_numpy(st[first:first + n])
            a = None if stored is None else torch.from_numpy(stored[first:first + n])
            states.append(s.numpy())
            actions.append(clip_actions(config.actions, s, a).numpy())
    if not states:
        return {}
    return {"state": summarize(np.concatenate(states)), "action": summarize(np.concatenate(actions))}
