"""The corpus interface: a source of episodes, and the state and action space it gives the store."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from common.errors import UserError
from common.media import Video
from store.format import POSE_DELTA, column_key
from store.location import RemotePath, where

from .sampling import Episode, Robot, stride_for

STATE_KEY = "observation.state"  # LeRobot's and RLDS's usual state key, the --state-key default


class Corpus:
    """A source of episodes. Subclasses set `actions` (resolved: the user's choice or the format's
    default) and say what their states and action columns look like; `robot` turns that into the
    store's state and action space."""

    format: str = ""
    camera: str = ""
    actions: str = POSE_DELTA
    _robots: dict[float, Robot]

    def sources(self) -> list[str]:
        """Episode identifiers in a deterministic order (they go into the store's plan)."""
        raise NotImplementedError

    def load(self, source: str, fps: float) -> Episode:
        raise NotImplementedError

    def _state_shape(self) -> tuple[int, tuple[str, ...] | None]:
        """(S, names) of the per-frame state."""
        raise NotImplementedError

    def _column_shape(self, key: str) -> tuple[int, tuple[str, ...] | None]:
        """(A_native, names) of an action column; UserError if there is none of that name."""
        raise NotImplementedError

    def _native_fps(self) -> float:
        raise NotImplementedError

    def robot(self, fps: float) -> Robot:
        """The store's state and action space when frames are kept at `fps` (computed once)."""
        self._robots = getattr(self, "_robots", {})
        if fps not in self._robots:
            self._robots[fps] = self._make_robot(fps)
        return self._robots[fps]

    def _make_robot(self, fps: float) -> Robot:
        state_dim, state_names = self._state_shape()
        if self.actions == POSE_DELTA and state_dim != 7:
            raise UserError(f"--actions pose-delta needs a 7-D state (x, y, z, roll, pitch, yaw, gripper); this "
                            f"one has {state_dim} dims: use --actions state-delta or column:KEY")
        stride = stride_for(self._native_fps(), fps)
        key = column_key(self.actions)
        if key is None:
            names = None if state_names is None else tuple(f"d{n}" for n in state_names)
            return Robot(self.actions, state_dim, state_dim, state_names, names, stride)
        native_dim, native_names = self._column_shape(key)
        names = None if native_names is None else tuple(f"{n}@{k}" for k in range(stride) for n in native_names)
        return Robot(self.actions, state_dim, stride * native_dim, state_names, names, stride)


def require_dir(root: str | Path, what: str) -> Path | RemotePath:
    """The corpus folder: local, or a prefix in an object store (s3://, gs://: read where it lies)."""
    root = where(root)
    if not root.exists():
        raise UserError(f"corpus {root} does not exist")
    if not root.is_dir():
        raise UserError(f"corpus {root} is not a directory ({what} expected)")
    return root


@contextmanager
def opened(path: Path | RemotePath) -> Iterator[str | BinaryIO]:
    """A file as h5py and pyarrow take it: a local path, or an object read in ranges."""
    if isinstance(path, RemotePath):
        with path.open("rb") as f:
            yield f
    else:
        yield str(path)


def open_video(path: Path | RemotePath, shared: bool = False) -> Video:
    """An episode's video: an object in a bucket is fetched whole, or read in ranges if other episodes share it."""
    return Video(path.read_bytes() if isinstance(path, RemotePath) and not shared else path)


def pick_camera(given: str | None, available: list[str], root: Path, what: str) -> str:
    """--video-key: the one given (it must be among `available`), or the only one there is."""
    if given is None:
        if len(available) != 1:
            raise UserError(f"{root} has {what} {available}; choose one with --video-key")
        return available[0]
    if given not in available:
        raise UserError(f"no {what[:-1]} {given!r} in {root}; it has {available}")
    return given
