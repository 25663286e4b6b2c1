"""Small stores with known content, for tests; also runnable as a writer subprocess:

    python tests/fake_store.py ROOT UNIT [--hang-after N] [--delay S] [--go FILE]

writes one unit of a store made by `make_store`; with --hang-after it writes N episodes,
prints READY and sleeps (to be killed), without sealing. With --go it opens its shard, prints
READY and waits for FILE to exist before writing (so that two writers write at once).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from store import (  # noqa: E402
    EpisodeInfo, ShardWriter, StoreConfig, StoredEpisode, create_store, write_store,
)

TOKENS, DIM = 16, 32
PER_UNIT = 5
UNITS = [[f"episode_{u * PER_UNIT + i}" for i in range(PER_UNIT)] for u in range(3)]  # 3 units x 5 episodes, as
# write_store names them


def config(codec: str = "bf16", compression: str = "none") -> StoreConfig:
    return StoreConfig(
        encoder="vjepa2-vit", preset="test", checkpoint_sha256="random-init", feature_dim=DIM,
        grid=(4, 4), image_size=64, fps=4.0, crop="test", camera="test", codec=codec,
        compression=compression, chunk_frames=4, source_format="test", state_dim=7, action_dim=7,
        actions="pose-delta", state_names=None, action_names=None,
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


def stored_episode(episode_id: int) -> StoredEpisode:
    info = EpisodeInfo(task=f"task {episode_id}")
    if is_skipped(episode_id):
        return StoredEpisode(info=info, skip="corrupt video")
    f, s = episode_data(episode_id)
    return StoredEpisode(f, s, info=info)


def complete_store(root: Path, codec: str = "bf16", compression: str = "none", merge: bool = True) -> Path:
    """Every unit of make_store's plan written and sealed, the manifest merged (unless merge=False)."""
    episodes = [stored_episode(e) for e in range(sum(map(len, UNITS)))]
    return write_store(root, episodes, PER_UNIT, merge, **config(codec, compression).to_attrs())


def write_unit(root: Path, unit: int, hang_after: int | None = None, delay: float = 0.0,
               go: Path | None = None) -> None:
    """One unit of a make_store store, as complete_store writes it (episode by episode, as a writer process)."""
    w = ShardWriter(root, unit)
    if go is not None:
        print("READY", flush=True)
        while not go.exists():
            time.sleep(0.01)
    for i, episode_id in enumerate(w.expected):
        if hang_after is not None and i == hang_after:
            print("READY", flush=True)
            time.sleep(600)
        ep = stored_episode(episode_id)
        info = EpisodeInfo(episode_id, UNITS[unit][i], task=ep.info.task)
        if ep.features is None:
            w.add_skipped(info, ep.skip)
        else:
            w.add_episode(info, ep.features, ep.state, np.arange(len(ep.state)), np.arange(len(ep.state)) / 4.0)
        time.sleep(delay)
    w.seal()


def tiny_store(root: Path, nan_episodes: set[int] = frozenset(), dim: int = 16, episodes: int = 12,
               frames: int = 12, per_unit: int | None = None) -> Path:
    """A store of random features (2x2 tokens) with smoothly moving states; optionally NaN in some episodes."""
    g = torch.Generator().manual_seed(0)
    data = []
    for e in range(episodes):
        f = torch.randn(frames, 4, dim, generator=g)
        if e in nan_episodes:
            f[-1] = float("nan")  # only the last window of the episode holds it
        data.append(StoredEpisode(f, np.cumsum(np.full((frames, 7), 0.01, np.float32), 0)))
    return write_store(root, data, per_unit, codec="fp16")


if __name__ == "__main__":
    args = sys.argv[1:]
    hang = int(args[args.index("--hang-after") + 1]) if "--hang-after" in args else None
    delay = float(args[args.index("--delay") + 1]) if "--delay" in args else 0.0
    go = Path(args[args.index("--go") + 1]) if "--go" in args else None
    write_unit(Path(args[0]), int(args[1]), hang_after=hang, delay=delay, go=go)
