"""Corpus readers: list a corpus's episodes (deterministically) and load one, sampled at a target fps.

Formats (SPEC §7): DROID raw 1.0.1 folders, LeRobot v2.1 / v3.0 datasets, WebDataset tar shards
with `<key>.mp4` + `<key>.json` (per-frame `state`, optional action columns, `fps`, `task`, `success`).
Each corpus also says which state and action space it gives the store (`Robot`, store.actions).

A problem with one episode raises SkipEpisode (recorded in the manifest, the job goes on);
a problem with the corpus as a whole raises UserError (the job stops).
"""

from __future__ import annotations

import io
import json
import math
import tarfile
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from common.errors import SkipEpisode, UserError
from store.actions import column_rows, looks_like_quaternion
from store.format import POSE_DELTA, POSE_STATE_NAMES, STATE_DELTA, check_source, column_key
from store.manifest import EpisodeInfo

from .config import DROID_CAMERAS, FORMATS
from common.media import Video

DROID_HZ = 15.0
# a target rate that divides the native one exactly (15 / 3.75) must not round up to the next stride
STRIDE_TOLERANCE = 1e-9


def stride_for(native_fps: float, target_fps: float) -> int:
    """Source frames between stored frames: ceil(native / target), at least 1."""
    return max(1, math.ceil(native_fps / target_fps - STRIDE_TOLERANCE))


@dataclass
class Episode:
    """A loaded episode: the sampled rows and a way to decode their frames."""

    state: np.ndarray  # [n, S] float32, at the sampled frames
    frame_index: np.ndarray  # [n] index of each sampled frame in the episode's source frames
    timestamp: np.ndarray  # [n] seconds from the episode start
    decode_index: np.ndarray  # [n] frame index in the video file (differs in LeRobot v3 files)
    video: Video
    info: EpisodeInfo  # camera, task, success, native fps, stride, note (id and source: the job's)
    action: np.ndarray | None = None  # [n, A] for column actions (the last row NaN), else None

    def __len__(self) -> int:
        return len(self.state)

    def frames(self, rows: slice) -> np.ndarray:
        """uint8 [k, H, W, 3] frames of the sampled rows."""
        return self.video.frames(self.decode_index[rows])


@dataclass(frozen=True)
class Robot:
    """The state and action space a corpus gives the store (store.actions; StoreConfig's robot fields)."""

    actions: str  # pose-delta | state-delta | column:KEY
    state_dim: int
    action_dim: int
    state_names: tuple[str, ...] | None
    action_names: tuple[str, ...] | None
    stride: int  # native rows per stored frame: a column action concatenates this many rows


def _nonfinite(rows: np.ndarray) -> np.ndarray:
    """Indices of the rows [T, ...] holding a NaN or Inf."""
    return np.flatnonzero(~np.isfinite(rows).reshape(len(rows), -1).all(1)) if len(rows) else np.zeros(0, int)


def sampled_episode(state: np.ndarray, frame_index: np.ndarray, timestamp: np.ndarray,
                    decode_index: np.ndarray, video: Video, native_fps: float, target_fps: float, robot: Robot,
                    camera: str, notes: list[str], task: str = "", success: bool | None = None,
                    shared_video: bool = False, native_actions: np.ndarray | None = None) -> Episode:
    """Keep the rows whose frame the video really holds, then every stride-th of them.

    `shared_video`: the file holds other episodes too (LeRobot v3), so its length says nothing
    about this episode's except where it ends too early. `native_actions` [T, A_native]: the
    action column of a `column:KEY` corpus, at the native rate.
    """
    state = np.asarray(state, np.float32)
    if state.ndim != 2 or state.shape[1] != robot.state_dim:
        raise SkipEpisode(f"state has shape {list(state.shape)}, expected [T, {robot.state_dim}]")
    n_video = len(video)
    usable = int(np.searchsorted(decode_index, n_video))  # decode_index is increasing
    if usable < len(state) and shared_video:
        notes.append(f"the video ended early: the file holds {n_video} frames, this episode needs frames "
                     f"{decode_index[0]}..{decode_index[-1]}; used the first {usable} of {len(state)} states")
    elif usable < len(state):
        notes.append(f"video holds {n_video} frames for {len(state)} states; used the first {usable}")
    elif n_video > len(state) and not shared_video:
        notes.append(f"states end before the video: {len(state)} states for {n_video} video frames; "
                     f"used the first {len(state)} frames")
    bad = _nonfinite(state[:usable])
    if len(bad):
        raise SkipEpisode(f"state holds NaN or Inf in {len(bad)} of {usable} rows (first: row {bad[0]})")
    if robot.actions == POSE_DELTA and looks_like_quaternion(state[:usable]):
        raise UserError("--actions pose-delta: dims 3..6 of every state have unit norm, so the state holds a "
                        "quaternion, not Euler angles and a gripper (SPEC §4); use --actions state-delta or column:KEY")
    stride = stride_for(native_fps, target_fps)
    rows = np.arange(0, usable, stride)
    action = None
    if native_actions is not None:
        key = column_key(robot.actions)
        if stride != robot.stride:
            raise SkipEpisode(f"at {native_fps:g} fps this episode's stride is {stride}; the store's actions "
                              f"concatenate {robot.stride} native rows")
        native_actions = np.asarray(native_actions, np.float32).reshape(len(native_actions), -1)
        if len(native_actions) < usable:
            raise SkipEpisode(f"action column {key!r} has {len(native_actions)} rows for {usable} states")
        bad = _nonfinite(native_actions[:usable])
        if len(bad):
            raise SkipEpisode(f"action column {key!r} holds NaN or Inf in {len(bad)} of {usable} rows "
                              f"(first: row {bad[0]})")
        action = column_rows(native_actions[:usable], rows, stride)
    info = EpisodeInfo(camera=camera, task=task, success=success, native_fps=native_fps, stride=stride,
                       note="; ".join(notes))
    return Episode(state=state[rows], frame_index=np.asarray(frame_index)[rows],
                   timestamp=np.asarray(timestamp, np.float64)[rows],
                   decode_index=np.asarray(decode_index)[rows], video=video, info=info, action=action)


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


def _names(value) -> tuple[str, ...] | None:
    """LeRobot `names` of a feature: a list, or a dict holding one list (e.g. {"motors": [...]}), else None."""
    if isinstance(value, dict) and len(value) == 1:
        value = next(iter(value.values()))
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    return None


def _require_dir(root: Path, what: str) -> Path:
    root = Path(root)
    if not root.exists():
        raise UserError(f"corpus {root} does not exist")
    if not root.is_dir():
        raise UserError(f"corpus {root} is not a directory ({what} expected)")
    return root


class DroidCorpus(Corpus):
    """DROID raw: `<lab>/<success|failure>/<date>/<time>/` folders with metadata_*.json,
    trajectory.h5 and recordings/MP4/<serial>.mp4. `root` may also be a text file listing
    episode folders, one per line (relative to the file's folder or absolute)."""

    format = "droid"

    def __init__(self, root: Path, camera: str = "left", actions: str | None = None):
        root = Path(root)
        if camera not in DROID_CAMERAS:
            raise UserError(f"unknown DROID camera {camera!r}; choose one of {', '.join(DROID_CAMERAS)}")
        self.camera = camera
        self.actions = actions or POSE_DELTA
        check_source(self.actions)
        if root.is_file():
            self.base = root.parent
            lines = [s.strip() for s in root.read_text().splitlines()]
            self._sources = [s for s in lines if s and not s.startswith("#")]
        else:
            self.base = _require_dir(root, "DROID episode folders or a list file")
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
            with h5py.File(path, "r") as f:
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
        mp4 = folder / "recordings" / "MP4" / str(meta[key]).split("recordings/MP4/")[-1]
        key = column_key(self.actions)
        try:
            with h5py.File(folder / "trajectory.h5", "r") as f:
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
            raise SkipEpisode(f"missing video {mp4.relative_to(self.base)}")
        video = Video(mp4)
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


class LeRobotCorpus(Corpus):
    """LeRobot datasets, codebase v2.0/v2.1 (a file per episode) and v3.0 (many episodes per file)."""

    format = "lerobot"

    def __init__(self, root: Path, video_key: str | None = None, state_key: str = "observation.state",
                 actions: str | None = None):
        self.root = _require_dir(root, "a LeRobot dataset")
        info_path = self.root / "meta" / "info.json"
        if not info_path.is_file():
            raise UserError(f"{self.root} is not a LeRobot dataset (no meta/info.json)")
        try:
            self._read_meta(info_path, video_key, state_key, actions)
        except (ValueError, KeyError, TypeError, AttributeError, pa.ArrowException) as e:
            raise UserError(f"{self.root}: damaged LeRobot metadata ({type(e).__name__}: {e})") from None

    def _read_meta(self, info_path: Path, video_key: str | None, state_key: str, actions: str | None) -> None:
        self.info = info = json.loads(info_path.read_text())
        version = str(info.get("codebase_version", ""))
        if version not in ("v2.0", "v2.1", "v3.0"):
            raise UserError(f"LeRobot codebase_version {version!r} is not supported (v2.0, v2.1, v3.0)")
        self.v3 = version == "v3.0"
        features = info["features"]
        videos = [k for k, f in features.items() if f.get("dtype") == "video"]
        if video_key is None:
            if len(videos) != 1:
                raise UserError(f"{self.root} has video keys {videos}; choose one with --video-key")
            video_key = videos[0]
        if video_key not in videos:
            raise UserError(f"no video key {video_key!r} in {self.root}; it has {videos}")
        if state_key not in features:
            raise UserError(f"no state key {state_key!r} in {self.root}; it has {sorted(features)}")
        self.actions = actions or ("column:action" if "action" in features else STATE_DELTA)
        check_source(self.actions)
        self.video_key, self.state_key, self.camera = video_key, state_key, video_key
        self.fps = float(info["fps"])
        self.episodes = self._episode_table()

    def _episode_table(self) -> dict[int, dict]:
        if self.v3:
            files = sorted((self.root / "meta" / "episodes").glob("*/*.parquet"))
            if not files:
                raise UserError(f"{self.root}: no meta/episodes/*/*.parquet")
            rows = [r for f in files for r in pq.read_table(f).to_pylist()]
        else:
            path = self.root / "meta" / "episodes.jsonl"
            if not path.is_file():
                raise UserError(f"{self.root}: no meta/episodes.jsonl")
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return {int(r["episode_index"]): r for r in rows}

    def sources(self) -> list[str]:
        return [f"episode_{i:06d}" for i in sorted(self.episodes)]

    def _shape(self, key: str) -> tuple[int, tuple[str, ...] | None]:
        f = self.info["features"][key]
        return int(np.prod(f.get("shape") or [1], dtype=int)), _names(f.get("names"))

    def _state_shape(self) -> tuple[int, tuple[str, ...] | None]:
        return self._shape(self.state_key)

    def _column_shape(self, key: str) -> tuple[int, tuple[str, ...] | None]:
        if key not in self.info["features"]:
            raise UserError(f"--actions column:{key}: no column {key!r} in {self.root}; it has "
                            f"{sorted(self.info['features'])}")
        return self._shape(key)

    def _native_fps(self) -> float:
        return self.fps

    def load(self, source: str, fps: float) -> Episode:
        i = int(source.rsplit("_", 1)[1])
        ep = self.episodes[i]
        if self.v3:
            key = self.video_key
            data = self.root / self.info["data_path"].format(
                chunk_index=ep["data/chunk_index"], file_index=ep["data/file_index"])
            video_path = self.root / self.info["video_path"].format(
                video_key=key, chunk_index=ep[f"videos/{key}/chunk_index"], file_index=ep[f"videos/{key}/file_index"])
            offset = float(ep[f"videos/{key}/from_timestamp"])
        else:
            chunk = i // int(self.info.get("chunks_size", 1000))
            data = self.root / self.info["data_path"].format(episode_chunk=chunk, episode_index=i)
            video_path = self.root / self.info["video_path"].format(
                episode_chunk=chunk, video_key=self.video_key, episode_index=i)
            offset = 0.0
        key = column_key(self.actions)
        columns = [self.state_key, "timestamp", "frame_index", "episode_index"] + ([key] if key else [])
        try:
            table = pq.read_table(data, columns=columns)
        except (OSError, ValueError) as e:  # missing file or column, bad parquet
            raise SkipEpisode(f"unreadable {data.relative_to(self.root)}: {e}") from None
        table = table.filter(pc.equal(table["episode_index"], i)).sort_by("frame_index")
        if table.num_rows == 0:
            raise SkipEpisode(f"no rows of episode {i} in {data.relative_to(self.root)}")
        state = _column(table, self.state_key)
        timestamp = table["timestamp"].to_numpy().astype(np.float64)
        if not video_path.is_file():
            raise SkipEpisode(f"missing video {video_path.relative_to(self.root)}")
        video = Video(video_path)
        container = video.fps
        decode_index = np.round((offset + timestamp) * container).astype(np.int64)
        notes = []
        if abs(container - self.fps) > 0.01:
            notes.append(f"container reports {container:.2f} fps, info.json {self.fps:g}: frames located "
                         f"by timestamp x container fps, stride from info.json")
        tasks = ep.get("tasks") or []
        return sampled_episode(state, table["frame_index"].to_numpy(), timestamp, decode_index, video,
                               self.fps, fps, self.robot(fps), self.video_key, notes,
                               task="; ".join(map(str, tasks if isinstance(tasks, list) else [tasks])),
                               shared_video=self.v3, native_actions=_column(table, key) if key else None)


def _column(table: pa.Table, key: str) -> np.ndarray:
    """A Parquet column of (fixed-size) lists or scalars as float32 [rows, dims]; null values become NaN."""
    values = table[key].combine_chunks()
    while pa.types.is_list(values.type) or pa.types.is_fixed_size_list(values.type) or \
            pa.types.is_large_list(values.type):
        values = values.flatten()
    flat = values.to_numpy(zero_copy_only=False).astype(np.float32)
    if table.num_rows == 0 or flat.size % table.num_rows:
        raise SkipEpisode(f"column {key!r} has null or ragged rows")
    return flat.reshape(table.num_rows, -1)


def _split_key(name: str) -> tuple[str | None, str | None]:
    from webdataset.tariterators import base_plus_ext  # webdataset's own key/extension rule

    return base_plus_ext(name)


class WebDatasetCorpus(Corpus):
    """WebDataset tar shards, one sample per episode: `<key>.mp4` and a `<key>.json` sidecar with
    per-frame `state` (T x S; or the state as `<key>.npy`), optional per-frame action columns
    (e.g. `action`, T x A), `fps`, `camera`, `task`, `success`. The first sample tells the state and
    action dims, and the camera (default "mp4")."""

    format = "webdataset"

    def __init__(self, root: Path, actions: str | None = None):
        root = Path(root)
        if root.is_file() and root.suffix == ".tar":
            self.base, self.tars = root.parent, [root.name]
        else:
            self.base = _require_dir(root, "WebDataset .tar shards")
            self.tars = sorted(p.relative_to(self.base).as_posix() for p in self.base.rglob("*.tar"))
        if not self.tars:
            raise UserError(f"no .tar shards in {root}")
        self._members: dict[str, dict[str, dict[str, tuple[int, int]]]] = {}
        self._first = self.sources()[0] if self.sources() else None
        if self._first is None:
            raise UserError(f"no samples in the .tar shards of {root}")
        first = self._sidecar(self._first)[0]
        self.actions = actions or ("column:action" if "action" in first else STATE_DELTA)
        self.camera = str(first.get("camera", "mp4"))
        check_source(self.actions)

    def _index(self, tar: str) -> dict[str, dict[str, tuple[int, int]]]:
        """key -> {ext: (offset, size)} of one tar, from its headers only."""
        if tar not in self._members:
            samples: dict[str, dict[str, tuple[int, int]]] = {}
            try:
                with tarfile.open(self.base / tar) as tf:
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
        with open(self.base / tar, "rb") as f:
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
        except (TypeError, ValueError):
            raise SkipEpisode("sidecar 'state' is not a T x S array of numbers") from None
        return meta, state.reshape(len(state), -1) if state.ndim else state

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


def open_corpus(root: Path, fmt: str, camera: str = "left", video_key: str | None = None,
                state_key: str = "observation.state", actions: str | None = None) -> Corpus:
    if fmt == "droid":
        return DroidCorpus(root, camera, actions)
    if fmt == "lerobot":
        return LeRobotCorpus(root, video_key, state_key, actions)
    if fmt == "webdataset":
        return WebDatasetCorpus(root, actions)
    raise UserError(f"unknown corpus format {fmt!r}; choose one of {', '.join(FORMATS)}")
