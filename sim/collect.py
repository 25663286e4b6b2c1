"""`sim collect`: episodes of a simulator under its exploratory scripted policy, as a WebDataset corpus.

One tar, one sample per episode: `<key>.mp4` (the camera at the native control rate) and
`<key>.json` with per-frame `state` (the agent's proprioception), `action` (the control applied
after the frame), `fps`, `camera`, and `sim_state` (the full simulator state: for goals and scoring,
never a model input). `extract --format webdataset` reads it unchanged. Deterministic by seed.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.errors import UserError
from common.files import atomic_write, output_dir
from common.media import write_mp4

from .config import CollectConfig
from .envs import make_sim


@dataclass
class CollectResult:
    path: Path
    episodes: int
    frames: int


def rollout_episode(sim, rng: np.random.Generator, steps: int) -> dict:
    """One explored episode from a random start: frames [T, H, W, 3] and the per-frame record."""
    sim.reset(sim.random_start(rng))
    frames, record = [], {"state": [], "action": [], "sim_state": []}
    for control in sim.explore(rng, steps):
        frames.append(sim.image())
        record["state"].append(sim.agent().tolist())
        record["sim_state"].append(sim.sim_state().tolist())
        record["action"].append(np.asarray(control, np.float32).tolist())
        sim.step(control)
    return {"frames": frames, **record}


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), 0  # no clock in the bytes: the same seed gives the same tar
    tar.addfile(info, io.BytesIO(data))


def run_collect(cfg: CollectConfig, on_episode: Callable[[int], None] | None = None) -> CollectResult:
    sim = make_sim(cfg.env, cfg.camera, size=cfg.size)  # one world (the demo's table); the seed varies episodes
    out = output_dir(cfg.out, "--out")
    path, frames = out / "sim-000000.tar", 0
    if path.exists():  # (a store extracted from it would no longer match its corpus)
        raise UserError(f"{path} exists: collect into another --out, or delete it first")

    def write(tmp: Path) -> None:
        nonlocal frames
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for i in range(cfg.episodes):
                ep = rollout_episode(sim, np.random.default_rng([cfg.seed, i]), cfg.steps)
                video = out / f".ep{i:06d}.mp4"
                # lossless: the model trains on exactly the frames the closed loop will show it (at PushT's
                # scale, H.264's artefacts move the features as much as 5 steps of the agent's motion)
                write_mp4(video, ep.pop("frames"), fps=sim.hz, codec="libx264rgb")
                _member(tar, f"ep{i:06d}.mp4", video.read_bytes())
                video.unlink()
                meta = {**ep, "fps": sim.hz, "camera": sim.camera, "env": sim.name, "task": f"explore {sim.name}",
                        "success": True}
                _member(tar, f"ep{i:06d}.json", json.dumps(meta).encode())
                frames += len(ep["state"])
                if on_episode:
                    on_episode(i)

    atomic_write(path, write)
    return CollectResult(path, cfg.episodes, frames)
