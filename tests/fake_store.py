"""Small stores with known content, for tests; also runnable as a writer subprocess:

    python tests/fake_store.py ROOT UNIT [--hang-after N]

writes one unit of a store made by `make_store`; with --hang-after it writes N episodes,
prints READY and sleeps (to be killed), without sealing.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from store import EpisodeInfo, ShardWriter, StoreConfig, create_store, merge_manifest  # noqa: E402

TOKENS, DIM = 16, 32
UNITS = [[f"ep{u}_{i}" for i in range(5)] for u in range(3)]  # 3 units x 5 episodes


def config(codec: str = "bf16", compression: str = "none") -> StoreConfig:
    return StoreConfig(
        encoder="vjepa2-vit", preset="test", checkpoint_sha256="random-init", feature_dim=DIM,
        grid=(4, 4), image_size=64, fps=4.0, crop="test", camera="left", codec=codec,
        compression=compression, chunk_frames=4, source_format="test",
    )


def episode_data(episode_id: int) -> tuple[torch.Tensor, np.ndarray]:
    """Deterministic features and states of an episode; episode 3 of each unit is 'skipped'."""
    g = torch.Generator().manual_seed(episode_id)
    n = 6 + episode_id % 7
    return torch.randn(n, TOKENS, DIM, generator=g), np.random.default_rng(episode_id).random((n, 7), np.float32)


def is_skipped(episode_id: int) -> bool:
    return episode_id % 5 == 3


def make_store(root: Path, codec: str = "bf16", compression: str = "none") -> None:
    create_store(root, config(codec, compression), UNITS)


def complete_store(root: Path, codec: str = "bf16", compression: str = "none", merge: bool = True) -> Path:
    """make_store, every unit written and sealed, the manifest merged."""
    make_store(root, codec, compression)
    for unit in range(len(UNITS)):
        write_unit(root, unit)
    if merge:
        merge_manifest(root)
    return root


def write_unit(root: Path, unit: int, hang_after: int | None = None, delay: float = 0.0) -> None:
    w = ShardWriter(root, unit)
    for i, episode_id in enumerate(w.expected):
        if hang_after is not None and i == hang_after:
            print("READY", flush=True)
            time.sleep(600)
        info = EpisodeInfo(episode_id, UNITS[unit][i], camera="left", task=f"task {episode_id}")
        if is_skipped(episode_id):
            w.add_skipped(info, "corrupt video")
        else:
            f, s = episode_data(episode_id)
            w.add_episode(info, f, s, np.arange(len(s)) * 4, np.arange(len(s)) / 4.0)
        time.sleep(delay)
    w.seal()


if __name__ == "__main__":
    args = sys.argv[1:]
    hang = int(args[args.index("--hang-after") + 1]) if "--hang-after" in args else None
    delay = float(args[args.index("--delay") + 1]) if "--delay" in args else 0.0
    write_unit(Path(args[0]), int(args[1]), hang_after=hang, delay=delay)
