"""Tiny corpora in each source format, written for real (MP4/AV1, HDF5, Parquet, tar).

Frame i of a video is a flat grey of brightness `code(i)`, and the state of step i is
(i / 100, 0, 0, 0, 0, 0, 0), so a test can read back which source frame and which state
row a reader delivered. LeRobot datasets take other state and action dims; their action of
the dataset's row r (over all episodes) is (r, r + 0.01, r + 0.02, ...), unique per row.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from common.media import write_mp4

H, W = 72, 128  # 16:9


def code(i: int) -> int:
    return 16 + 6 * (i % 36)


def decode_code(frames: np.ndarray) -> np.ndarray:
    """Source frame number (mod 36) of each decoded frame [k, H, W, 3]."""
    return np.round((frames.reshape(len(frames), -1).mean(1) - 16) / 6).astype(int) % 36


def frames(first: int, n: int) -> list[np.ndarray]:
    return [np.full((H, W, 3), code(first + i), np.uint8) for i in range(n)]


# writes a video of source frames first .. first + n - 1: (path, first, n, fps); the default: frames() in H.264
VideoWriter = Callable[[Path, int, int, int], None]


def h264(path: Path, first: int, n: int, fps: int) -> None:
    write_mp4(path, frames(first, n), fps=fps)


def states(n: int) -> np.ndarray:
    s = np.zeros((n, 7), np.float32)
    s[:, 0] = np.arange(n) / 100
    return s


def droid_episode(root: Path, name: str, steps: int, video_frames: int | None = None,
                  drop_key: str | None = None, task: str = "stack cups", success: bool = True,
                  bad_value: float | None = None, metadata: bool = True, video: VideoWriter = h264) -> Path:
    """One DROID raw episode folder; `bad_value` (NaN, Inf) replaces x of state row 2; no metadata json if asked."""
    folder = root / "LAB" / ("success" if success else "failure") / "2024-01-01" / name
    (folder / "recordings" / "MP4").mkdir(parents=True)
    video(folder / "recordings" / "MP4" / "111.mp4", 0, video_frames or steps, 15)
    s = states(steps).astype(np.float64)
    if bad_value is not None:
        s[2, 0] = bad_value
    with h5py.File(folder / "trajectory.h5", "w") as f:
        if drop_key != "cartesian_position":
            f["observation/robot_state/cartesian_position"] = s[:, :6]
        f["observation/robot_state/gripper_position"] = s[:, 6]
    meta = {"uuid": name, "lab": "LAB", "success": success, "current_task": task, "trajectory_length": steps,
            "left_mp4_path": f"success/2024-01-01/{name}/recordings/MP4/111.mp4"}
    if metadata:
        (folder / f"metadata_{name}.json").write_text(json.dumps(meta))
    return folder


VIDEO_KEY = "observation.images.front"


def lerobot_actions(first_index: int, n: int, dim: int) -> np.ndarray:
    """The action column of dataset rows first_index .. first_index + n - 1."""
    return (np.arange(first_index, first_index + n)[:, None] + np.arange(dim)[None] / 100).astype(np.float32)


def _frame_table(episode: int, n: int, first_index: int, fps: int, state: np.ndarray, action: np.ndarray) -> pa.Table:
    return pa.table({
        "observation.state": pa.array(state.tolist(), pa.list_(pa.float32(), state.shape[1])),
        "action": pa.array(action.tolist(), pa.list_(pa.float32(), action.shape[1])),
        "timestamp": pa.array(np.arange(n, dtype=np.float32) / fps),
        "frame_index": pa.array(np.arange(n, dtype=np.int64)),
        "episode_index": pa.array(np.full(n, episode, np.int64)),
        "index": pa.array(np.arange(first_index, first_index + n, dtype=np.int64)),
        "task_index": pa.array(np.zeros(n, np.int64)),
    })


def _info(version: str, fps: int, data_path: str, video_path: str, codec: str, state_dim: int, action_dim: int,
          names: dict | None) -> dict:
    names = names or {}
    return {
        "codebase_version": version, "robot_type": "test", "fps": fps, "chunks_size": 1000,
        "data_path": data_path, "video_path": video_path,
        "features": {
            "observation.state": {"dtype": "float32", "shape": [state_dim], "names": names.get("observation.state")},
            "action": {"dtype": "float32", "shape": [action_dim], "names": names.get("action")},
            VIDEO_KEY: {"dtype": "video", "shape": [H, W, 3], "names": ["height", "width", "channels"],
                        "info": {"video.fps": fps, "video.codec": codec}},
            "timestamp": {"dtype": "float32", "shape": [1], "names": None},
            "frame_index": {"dtype": "int64", "shape": [1], "names": None},
            "episode_index": {"dtype": "int64", "shape": [1], "names": None},
            "index": {"dtype": "int64", "shape": [1], "names": None},
            "task_index": {"dtype": "int64", "shape": [1], "names": None},
        },
    }


def _state(n: int, dim: int) -> np.ndarray:
    s = np.zeros((n, dim), np.float32)
    s[:, 0] = np.arange(n) / 100
    return s


def lerobot_v21(root: Path, lengths: list[int], fps: int = 15, state_dim: int = 7, action_dim: int = 7,
                names: dict | None = None, state_of=None, action_of=None, video: VideoWriter = h264) -> Path:
    """`state_of(episode, n)` and `action_of(episode, first_index, n)` replace the default columns."""
    (root / "meta").mkdir(parents=True)
    info = _info("v2.1", fps, "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
                 "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4", "h264",
                 state_dim, action_dim, names)
    (root / "meta" / "info.json").write_text(json.dumps(info))
    (root / "meta" / "tasks.jsonl").write_text(json.dumps({"task_index": 0, "task": "open the drawer"}) + "\n")
    lines, first = [], 0
    for e, n in enumerate(lengths):
        data = root / f"data/chunk-000/episode_{e:06d}.parquet"
        data.parent.mkdir(parents=True, exist_ok=True)
        state = state_of(e, n) if state_of else _state(n, state_dim)
        action = action_of(e, first, n) if action_of else lerobot_actions(first, n, action_dim)
        pq.write_table(_frame_table(e, n, first, fps, state, action), data)
        path = root / f"videos/chunk-000/{VIDEO_KEY}/episode_{e:06d}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        video(path, 0, n, fps)
        lines.append(json.dumps({"episode_index": e, "tasks": ["open the drawer"], "length": n}))
        first += n
    (root / "meta" / "episodes.jsonl").write_text("\n".join(lines) + "\n")
    return root


def svt_av1(path: Path, first: int, n: int, fps: int, faststart: bool = False) -> None:
    write_mp4(path, frames(first, n), fps=fps, codec="libsvtav1", faststart=faststart)


def lerobot_v30(root: Path, lengths: list[int], fps: int = 15, faststart: bool = False, state_dim: int = 7,
                action_dim: int = 7, names: dict | None = None, video: VideoWriter | None = None) -> Path:
    """All episodes in one data file and one video file (AV1, as LeRobot writes it), cut by from/to timestamps:
    the file's frame `first + i` is frame i of the episode whose rows start at dataset index `first`."""
    (root / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
    info = _info("v3.0", fps, "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
                 "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4", "av1",
                 state_dim, action_dim, names)
    (root / "meta" / "info.json").write_text(json.dumps(info))
    pq.write_table(pa.table({"task": ["open the drawer"], "task_index": [0]}), root / "meta" / "tasks.parquet")
    tables, rows, first = [], [], 0
    for e, n in enumerate(lengths):
        tables.append(_frame_table(e, n, first, fps, _state(n, state_dim), lerobot_actions(first, n, action_dim)))
        rows.append({
            "episode_index": e, "tasks": ["open the drawer"], "length": n,
            "data/chunk_index": 0, "data/file_index": 0,
            "dataset_from_index": first, "dataset_to_index": first + n,
            f"videos/{VIDEO_KEY}/chunk_index": 0, f"videos/{VIDEO_KEY}/file_index": 0,
            f"videos/{VIDEO_KEY}/from_timestamp": first / fps, f"videos/{VIDEO_KEY}/to_timestamp": (first + n) / fps,
        })
        first += n
    (root / "data" / "chunk-000").mkdir(parents=True)
    pq.write_table(pa.concat_tables(tables), root / "data" / "chunk-000" / "file-000.parquet")
    pq.write_table(pa.Table.from_pylist(rows), root / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    path = root / "videos" / VIDEO_KEY / "chunk-000" / "file-000.mp4"
    path.parent.mkdir(parents=True)
    if video is None:
        svt_av1(path, 0, first, fps, faststart)
    else:
        video(path, 0, first, fps)
    return root


def mp4_bytes(n: int, fps: int = 15, video: VideoWriter = h264) -> bytes:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        video(Path(d) / "v.mp4", 0, n, fps)
        return (Path(d) / "v.mp4").read_bytes()


def webdataset_shard(path: Path, samples: list[dict], video: VideoWriter = h264) -> Path:
    """samples: {"key", "n", optional "fps", "task", "sidecar" (raw json bytes), "npy" (state array), "mp4" (bytes)}."""
    import webdataset as wds

    path.parent.mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(path)) as tw:
        for s in samples:
            sidecar = s.get("sidecar")
            if sidecar is None:
                meta = {"state": states(s["n"]).tolist(), "task": s.get("task", "wipe")}
                if "fps" in s:
                    meta["fps"] = s["fps"]
                sidecar = json.dumps(meta).encode()
            mp4 = s["mp4"] if "mp4" in s else mp4_bytes(s["n"], s.get("video_fps", 15), video)
            sample = {"__key__": s["key"], "mp4": mp4, "json": sidecar}
            if "npy" in s:
                sample["npy"] = s["npy"]
            tw.write(sample)
    return path
