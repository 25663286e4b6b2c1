"""Clips of consecutive stored frames for the trainer: episode split, windows, a resumable shuffle."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import torch
from torch.utils.data import Dataset, Sampler, default_collate, get_worker_info

from common.errors import UserError
from store import Store
from store.actions import clip_actions
from store.codecs import FEATURE_DTYPE

EPOCH_SEED_STRIDE = 100_003  # epoch e of run seed s shuffles with seed s * 100003 + e: a prime, so no two
# (seed, epoch) pairs of a practical run collide


def evenly_spaced(n: int, k: int) -> list[int]:
    """At most k indices spread evenly over range(n), always the same ones (validation and evaluation sets)."""
    return list(range(0, n, max(1, n // k)))[:k]


def split_episodes(store: Store, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic episode-level (train, validation) split of the store's ok episodes."""
    ids = store.ok_episodes
    perm = torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = round(val_fraction * len(ids))
    if val_fraction > 0 and len(ids) > 1:
        n_val = min(max(n_val, 1), len(ids) - 1)
    val = sorted(ids[i] for i in perm[:n_val])
    train = sorted(ids[i] for i in perm[n_val:])
    return train, val


class ClipDataset(Dataset):
    """Every window of `frames` consecutive stored frames inside one episode.

    An item: features [F, N, D] (stored precision, raw), states [F, S], actions [F-1, A] (store.actions).
    A DataLoader fetches a batch whole (`__getitems__`, with `collate_fn=collate`): each window's features
    are read from the chunks straight into the batch tensor, which inside a worker is made in shared memory
    as default_collate makes it; so no clip is copied after it is read.
    """

    def __init__(self, store: Store, episodes: list[int], frames: int):
        self.store, self.frames = store, frames
        self.windows = [(e, s) for e in episodes for s in range(store.num_frames(e) - frames + 1)]

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        episode, start = self.windows[i]
        features, states, stored = self.store.read_window(episode, start, self.frames)
        return {"features": features, "states": states,
                "actions": clip_actions(self.store.config.actions, states, stored)}

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        c = self.store.config
        features = _batch_tensor((len(indices), self.frames, c.tokens, c.feature_dim), FEATURE_DTYPE[c.codec])

        def read(b: int) -> tuple[torch.Tensor, torch.Tensor]:
            episode, start = self.windows[indices[b]]
            _, s, stored = self.store.read_window(episode, start, self.frames, out=features[b])
            return s, clip_actions(c.actions, s, stored)

        states, actions = zip(*_readers().map(read, range(len(indices))))
        return {"features": features, "states": torch.stack(states), "actions": torch.stack(actions)}


_READERS: dict[int, ThreadPoolExecutor] = {}  # pid -> pool: a forked worker does not inherit its parent's threads


def _readers(threads: int = 4) -> ThreadPoolExecutor:
    """This process's pool that reads a batch's windows at once, so one window's chunks come off the disk while
    another's are checked and copied (digests and copies release the GIL)."""
    if os.getpid() not in _READERS:
        _READERS.clear()
        _READERS[os.getpid()] = ThreadPoolExecutor(threads, thread_name_prefix="clip-reader")
    return _READERS[os.getpid()]


def _batch_tensor(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An empty tensor; inside a DataLoader worker in shared memory, so it reaches the trainer uncopied."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    empty = torch.tensor([], dtype=dtype)
    return empty.new(empty._typed_storage()._new_shared(math.prod(shape))).resize_(shape)  # as default_collate


def collate(batch: dict | list):
    """The DataLoader collate_fn for a ClipDataset (its batches come whole) and for any other dataset."""
    return batch if isinstance(batch, dict) else default_collate(batch)


class ShuffledStream(Sampler[int]):
    """An endless stream of dataset indices: epoch e is a permutation seeded by (seed, e);
    rank r of w takes every w-th index of it. `skip` drops that many of this rank's indices
    first, so a resumed run sees exactly the samples an uninterrupted one would."""

    def __init__(self, size: int, seed: int, rank: int = 0, world: int = 1, skip: int = 0):
        if size < world:
            raise UserError(f"{size} training clips cannot be shared by {world} ranks")
        self.size, self.seed, self.rank, self.world, self.skip = size, seed, rank, world, skip
        self.per_rank = size // world

    def __iter__(self) -> Iterator[int]:
        epoch, offset = divmod(self.skip, self.per_rank)
        while True:
            g = torch.Generator().manual_seed(self.seed * EPOCH_SEED_STRIDE + epoch)
            perm = torch.randperm(self.size, generator=g)[: self.per_rank * self.world]
            yield from perm[self.rank::self.world][offset:].tolist()
            epoch, offset = epoch + 1, 0
