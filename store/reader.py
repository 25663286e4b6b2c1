"""Reading a store: the episode table and windows of frames, cheap enough for DataLoader workers."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import zarr

from common.errors import StoreError

from . import codecs, manifest
from .format import EPISODES_FILE, MANIFEST_FILE, ROW_ARRAYS, StoreConfig, read_root_attrs, sealed_units, shard_dir


class Store:
    """A read-only view of the sealed shards of a store.

    Zarr arrays are opened lazily, per process: a Store made before a fork (or pickled
    into a DataLoader worker) reopens its files in the child.
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self.attrs = read_root_attrs(self.root)
        self.config = StoreConfig.from_attrs(self.attrs)
        self.num_units: int = self.attrs["num_units"]
        self.sealed = sealed_units(self.root)
        self.complete = len(self.sealed) == self.num_units
        if (self.root / MANIFEST_FILE).exists():
            self.episodes = manifest.read_table(self.root / MANIFEST_FILE)
        else:
            self.episodes = manifest.concat(
                [manifest.read_table(shard_dir(self.root, u) / EPISODES_FILE) for u in self.sealed]
            )
        cols = self.episodes.select(["episode_id", "unit", "first_row", "num_frames"]).to_pydict()
        self._where = {e: (u, r, n) for e, u, r, n in zip(*cols.values())}
        self._arrays: dict[int, dict[str, zarr.Array]] = {}
        self._pid = os.getpid()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_arrays"] = {}
        return state

    @property
    def ok_episodes(self) -> list[int]:
        """Ids of the episodes that hold frames (status ok), in id order."""
        ok = pc.equal(self.episodes["status"], "ok")
        return self.episodes.filter(ok)["episode_id"].to_pylist()

    @property
    def total_frames(self) -> int:
        return int(pc.sum(self.episodes["num_frames"]).as_py() or 0)

    def episode(self, episode_id: int) -> dict:
        """The manifest row of one episode as a dict."""
        if episode_id not in self._where:
            raise StoreError(f"episode {episode_id} is not in a sealed shard of {self.root}")
        mask = pc.equal(self.episodes["episode_id"], episode_id)
        return self.episodes.filter(mask).to_pylist()[0]

    def num_frames(self, episode_id: int) -> int:
        return self._locate(episode_id)[2]

    def _locate(self, episode_id: int) -> tuple[int, int, int]:
        try:
            return self._where[episode_id]
        except KeyError:
            raise StoreError(f"episode {episode_id} is not in a sealed shard of {self.root}") from None

    def _unit_arrays(self, unit: int) -> dict[str, zarr.Array]:
        if self._pid != os.getpid():  # forked: file handles of the parent are not ours
            self._arrays, self._pid = {}, os.getpid()
        if unit not in self._arrays:
            self._arrays[unit] = shard_arrays(shard_dir(self.root, unit), self.config.codec)
        return self._arrays[unit]

    def read_window(self, episode_id: int, start: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames [start, start + length) of an episode: (features [L, tokens, D], state [L, 7]).

        Features come back in the stored precision (bf16, or float16 for fp16/int8), raw
        encoder output: layer-normalise them before use.
        """
        unit, first, n = self._locate(episode_id)
        if start < 0 or length < 1 or start + length > n:
            raise StoreError(f"window [{start}, {start + length}) outside episode {episode_id} of {n} frames")
        a = self._unit_arrays(unit)
        rows = slice(first + start, first + start + length)
        scales = a["scales"][rows] if "scales" in a else None
        features = codecs.decode(a["features"][rows], scales, self.config.codec)
        return features, torch.from_numpy(a["state"][rows])

    def read_episode(self, episode_id: int) -> dict[str, np.ndarray | torch.Tensor]:
        """All rows of an episode: features, state, frame_index, timestamp."""
        n = self._locate(episode_id)[2]
        features, state = self.read_window(episode_id, 0, n)
        unit, first, _ = self._locate(episode_id)
        a = self._unit_arrays(unit)
        rows = slice(first, first + n)
        return {"features": features, "state": state.numpy(),
                "frame_index": a["frame_index"][rows], "timestamp": a["timestamp"][rows]}


def shard_arrays(directory: Path, codec: str) -> dict[str, zarr.Array]:
    """The row arrays of one shard, opened by name (no directory listing)."""
    names = [n for n in ROW_ARRAYS if n != "scales" or codec == "int8"]
    return {n: zarr.open_array(Path(directory) / n, mode="r") for n in names}


def open_store(root: Path | str) -> Store:
    return Store(Path(root))
