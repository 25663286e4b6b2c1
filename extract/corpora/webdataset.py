"""WebDataset tar shards, one sample per episode: `<key>.mp4` and a `<key>.json` sidecar."""

from __future__ import annotations

import io
import json
import math
import tarfile
from pathlib import Path

import numpy as np

from common.errors import SkipEpisode, UserError
from common.media import Video
from store.format import STATE_DELTA, check_source, column_key
from store.location import where

from .base import Corpus, require_dir
from .sampling import Episode, sampled_episode


def _split_key(name: str) -> tuple[str | None, str | None]:
    from webdataset.tariterators import base_plus_ext  # webdataset's own key/extension rule

    return base_plus_ext(name)


class WebDatasetCorpus(Corpus):
    """WebDataset tar shards, one sample per episode: `<key>.mp4` and a `<key>.json` sidecar with
    per-frame `state` (T x S; or the state as `<key>.npy`), optional per-frame action columns
    (e.g. `action`, T x A), `fps`, `camera`, `task`, `success`. The first sample tells the state and
    action dims, and the camera (default "mp4")."""

    format = "webdataset"

    def __init__(self, root: str | Path, actions: str | None = None):
        root = where(root)
        if root.is_file() and root.suffix == ".tar":
            self.base, self.tars = root.parent, [root.name]
        else:
            self.base = require_dir(root, "WebDataset .tar shards")
            self.tars = sorted(p.relative_to(self.base).as_posix() for p in self.base.rglob("*.tar"))
        if not self.tars:
            raise UserError(f"no .tar shards in {root}")
        self._members: dict[str, dict[str, dict[str, tuple[int, int]]]] = {}
        self._first = self.sources()[0] if self.sources() else None
        if self._first is None:
            raise UserError(f"no samples in the .tar shards of {root}")
        first = self._first_sample()[0]
        self.actions = actions or ("column:action" if "action" in first else STATE_DELTA)
        self.camera = str(first.get("camera", "mp4"))
        check_source(self.actions)

    def _index(self, tar: str) -> dict[str, dict[str, tuple[int, int]]]:
        """key -> {ext: (offset, size)} of one tar, from its headers only."""
        if tar not in self._members:
            samples: dict[str, dict[str, tuple[int, int]]] = {}
            try:
                with (self.base / tar).open("rb") as f, tarfile.open(fileobj=f) as tf:
                    for m in tf:
                        key, ext = _split_key(m.name) if m.isfile() else (None, None)
                        if key is not None:
                            samples.setdefault(key, {})[ext.lower()] = (m.offset_data, m.size)
            except (tarfile.TarError, OSError) as e:
                raise UserError(f"unreadable tar shard {tar}: {e}") from None
            self._members[tar] = samples
        return self._members[tar]

    def sources(self) -> list[str]:
        return [f"{tar}#{key}" for tar in self.tars for key in self._index(tar)]

    def _read(self, tar: str, where: tuple[int, int]) -> bytes:
        with (self.base / tar).open("rb") as f:
            f.seek(where[0])
            return f.read(where[1])

    def _sidecar(self, source: str) -> tuple[dict, np.ndarray]:
        """(sidecar json, state [T, S]) of a sample."""
        tar, key = source.split("#", 1)
        members = self._index(tar)[key]
        meta = {}
        if "json" in members:
            try:
                meta = json.loads(self._read(tar, members["json"]))
            except ValueError as e:
                raise SkipEpisode(f"unreadable .json sidecar: {e}") from None
            if not isinstance(meta, dict):
                raise SkipEpisode("the .json sidecar is not an object")
        if "state" in meta:
            state = meta["state"]
        elif "npy" in members:
            state = np.load(io.BytesIO(self._read(tar, members["npy"])))
        else:
            raise SkipEpisode("sidecar has no per-frame 'state' (T x S)")
        try:
            state = np.asarray(state, np.float32)
            if state.ndim == 0 or state.size == 0:
                raise ValueError
        except (TypeError, ValueError):
            raise SkipEpisode("sidecar 'state' is not a T x S array of numbers") from None
        if meta.get("fps") is not None:
            try:
                fps = float(meta["fps"])
                if not math.isfinite(fps) or fps <= 0:
                    raise ValueError
            except (TypeError, ValueError):
                raise SkipEpisode(f"sidecar 'fps' {meta['fps']!r} is not a positive number") from None
            meta = {**meta, "fps": fps}
        return meta, state.reshape(len(state), -1)

    def _first_sample(self) -> tuple[dict, np.ndarray]:
        try:
            return self._sidecar(self._first)
        except SkipEpisode as e:
            raise UserError(f"the first sample {self._first} tells the state and action dims, but: {e}") from None

    def _state_shape(self) -> tuple[int, tuple[str, ...] | None]:
        return self._first_sample()[1].shape[1], None

    def _column_shape(self, key: str) -> tuple[int, tuple[str, ...] | None]:
        meta = self._first_sample()[0]
        if key not in meta:
            raise UserError(f"--actions column:{key}: the first sample's sidecar ({self._first}) has no {key!r}; "
                            f"it has {sorted(meta)}")
        column = np.asarray(meta[key], np.float32)
        return int(np.prod(column.shape[1:], dtype=int)), None

    def _native_fps(self) -> float:
        meta = self._first_sample()[0]
        if meta.get("fps") is not None:
            return float(meta["fps"])
        tar, key = self._first.split("#", 1)
        return Video(self._read(tar, self._index(tar)[key]["mp4"])).fps

    def load(self, source: str, fps: float) -> Episode:
        tar, key = source.split("#", 1)
        members = self._index(tar)[key]
        if "mp4" not in members:
            raise SkipEpisode(f"sample has no .mp4 (has {sorted(members)})")
        meta, state = self._sidecar(source)
        column = column_key(self.actions)
        if column is not None and column not in meta:
            raise SkipEpisode(f"sidecar has no action column {column!r}")
        video = Video(self._read(tar, members["mp4"]))
        notes = []
        native, container = meta.get("fps"), video.fps
        if native is None:
            native = container
            notes.append(f"no fps in the sidecar; used the container's {container:.2f}")
        elif abs(float(native) - container) > 0.01:
            notes.append(f"container reports {container:.2f} fps; used the sidecar's {float(native):g}")
        idx = np.arange(len(state))
        success = meta.get("success")
        return sampled_episode(state, idx, idx / float(native), idx, video, float(native), fps, self.robot(fps),
                               self.camera, notes, task=str(meta.get("task", "")),
                               success=None if success is None else bool(success),
                               native_actions=None if column is None else _numbers(meta[column], column))


def _numbers(value, what: str) -> np.ndarray:
    try:
        return np.asarray(value, np.float32)
    except (TypeError, ValueError):
        raise SkipEpisode(f"sidecar {what!r} is not an array of numbers") from None
