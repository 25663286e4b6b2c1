"""DROID raw 1.0.1: one folder per episode with metadata_*.json, trajectory.h5 and recordings/MP4/<serial>.mp4."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from common.errors import SkipEpisode, UserError
from store.format import POSE_DELTA, POSE_STATE_NAMES, check_source, column_key
from store.location import where

from ..config import DROID_CAMERAS
from .base import Corpus, open_video, opened, require_dir
from .sampling import Episode, sampled_episode

DROID_HZ = 15.0


class DroidCorpus(Corpus):
    """DROID raw: `<lab>/<success|failure>/<date>/<time>/` folders with metadata_*.json,
    trajectory.h5 and recordings/MP4/<serial>.mp4. `root` may also be a text file listing
    episode folders, one per line (relative to the file's folder or absolute)."""

    format = "droid"

    def __init__(self, root: str | Path, camera: str | None = None, actions: str | None = None):
        root = where(root)
        camera = camera or DROID_CAMERAS[0]
        if camera not in DROID_CAMERAS:
            raise UserError(f"unknown DROID camera {camera!r}; choose one of {', '.join(DROID_CAMERAS)}")
        self.camera = camera
        self.actions = actions or POSE_DELTA
        check_source(self.actions)
        if root.is_file():
            self.base = root.parent
            lines = [s.strip() for s in root.read_text().splitlines()]
            self._sources = [s for s in lines if s and not s.startswith("#")]
            # one missing folder is a skipped episode; none at all is not a list of episode folders
            if self._sources and not any((self.base / s).is_dir() for s in self._sources):
                raise UserError(f"{root}: read as a list of DROID episode folders, but none of its "
                                f"{len(self._sources)} lines is a folder (first: {self._sources[0][:60]!r})")
        else:
            self.base = require_dir(root, "DROID episode folders or a list file")
            # an episode folder holds metadata_*.json and trajectory.h5; one that lacks either is listed
            # (and skipped with the reason), not silently dropped
            found = [*self.base.rglob("metadata_*.json"), *self.base.rglob("trajectory.h5")]
            self._sources = sorted({p.parent.relative_to(self.base).as_posix() for p in found})
        if not self._sources:
            raise UserError(f"no DROID episodes (folders holding metadata_*.json or trajectory.h5) found in {root}")

    def sources(self) -> list[str]:
        return self._sources

    def _state_shape(self) -> tuple[int, tuple[str, ...] | None]:
        return 7, POSE_STATE_NAMES

    def _column_shape(self, key: str) -> tuple[int, tuple[str, ...] | None]:
        """From the first episode's trajectory.h5: `key` is an HDF5 path such as action/joint_velocity."""
        with_h5 = [s for s in self._sources if (self.base / s / "trajectory.h5").is_file()]
        path = self.base / (with_h5 or self._sources)[0] / "trajectory.h5"
        try:
            with opened(path) as source, h5py.File(source, "r") as f:
                shape = f[key].shape
        except (OSError, KeyError):
            raise UserError(f"--actions column:{key}: no dataset {key!r} in {path} (give an HDF5 path such as "
                            "action/joint_velocity)") from None
        return int(np.prod(shape[1:], dtype=int)), None

    def _native_fps(self) -> float:
        return DROID_HZ

    def load(self, source: str, fps: float) -> Episode:
        folder = self.base / source
        metas = sorted(folder.glob("metadata_*.json"))
        if not metas:
            raise SkipEpisode(f"no metadata_*.json in {folder}")
        try:
            meta = json.loads(metas[0].read_text())
        except ValueError as e:
            raise SkipEpisode(f"unreadable {metas[0].name}: {e}") from None
        key = f"{self.camera}_mp4_path"
        if not meta.get(key):
            raise SkipEpisode(f"{metas[0].name} has no {key}")
        # the stored path is relative to the lab folder on the collecting machine: keep the file name
        video_name = "recordings/MP4/" + str(meta[key]).split("recordings/MP4/")[-1].lstrip("/")
        mp4 = folder / video_name
        key = column_key(self.actions)
        try:
            with opened(folder / "trajectory.h5") as source, h5py.File(source, "r") as f:
                cartesian = f["observation/robot_state/cartesian_position"][:]
                gripper = f["observation/robot_state/gripper_position"][:]
                native_actions = None if key is None else f[key][:]
        except FileNotFoundError:
            raise SkipEpisode("no trajectory.h5") from None
        except KeyError as e:
            needed = "observation/robot_state/{cartesian_position, gripper_position}" + (f" and {key}" if key else "")
            raise SkipEpisode(f"trajectory.h5 lacks {str(e).split('(')[0].strip()}: {needed} needed") from None
        except OSError as e:
            raise SkipEpisode(f"unreadable trajectory.h5: {e}") from None
        if len(cartesian) != len(gripper) or cartesian.ndim != 2 or cartesian.shape[1] != 6:
            raise SkipEpisode(f"trajectory.h5 state shapes {list(cartesian.shape)} and {list(gripper.shape)} do not fit")
        state = np.concatenate([cartesian, gripper.reshape(-1, 1)], axis=1)
        if not mp4.is_file():
            raise SkipEpisode(f"missing video {video_name}")
        video = open_video(mp4)
        notes = []
        container_fps = video.fps
        if abs(container_fps - DROID_HZ) > 0.01:
            notes.append(f"container reports {container_fps:.2f} fps; used the {DROID_HZ:g} Hz control rate")
        idx = np.arange(len(state))
        success = meta.get("success")
        return sampled_episode(
            state, idx, idx / DROID_HZ, idx, video, DROID_HZ, fps, self.robot(fps), f"{self.camera}:{mp4.stem}",
            notes, task=str(meta.get("current_task", "")), success=None if success is None else bool(success),
            native_actions=native_actions,
        )
