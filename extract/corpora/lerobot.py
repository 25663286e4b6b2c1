"""LeRobot datasets: codebase v2.0/v2.1 (a video file per episode) and v3.0 (many episodes per file)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from common.errors import SkipEpisode, UserError
from store.format import STATE_DELTA, check_source, column_key

from .base import STATE_KEY, Corpus, open_video, opened, pick_camera, require_dir
from .sampling import Episode, sampled_episode


def _names(value) -> tuple[str, ...] | None:
    """LeRobot `names` of a feature: a list, or a dict holding one list (e.g. {"motors": [...]}), else None."""
    if isinstance(value, dict) and len(value) == 1:
        value = next(iter(value.values()))
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    return None


class LeRobotCorpus(Corpus):
    """LeRobot datasets, codebase v2.0/v2.1 (a file per episode) and v3.0 (many episodes per file)."""

    format = "lerobot"

    def __init__(self, root: str | Path, video_key: str | None = None, state_key: str | None = None,
                 actions: str | None = None):
        self.root = require_dir(root, "a LeRobot dataset")
        info_path = self.root / "meta" / "info.json"
        if not info_path.is_file():
            raise UserError(f"{self.root} is not a LeRobot dataset (no meta/info.json)")
        try:
            self._read_meta(info_path, video_key, state_key or STATE_KEY, actions)
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
        video_key = pick_camera(video_key, videos, self.root, "video keys")
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
            rows = []
            for f in files:
                with opened(f) as source:
                    rows += pq.read_table(source).to_pylist()
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
            with opened(data) as source:
                table = pq.read_table(source, columns=columns)
        except (OSError, ValueError) as e:  # missing file or column, bad parquet
            raise SkipEpisode(f"unreadable {data.relative_to(self.root)}: {e}") from None
        table = table.filter(pc.equal(table["episode_index"], i)).sort_by("frame_index")
        if table.num_rows == 0:
            raise SkipEpisode(f"no rows of episode {i} in {data.relative_to(self.root)}")
        state = _column(table, self.state_key)
        timestamp = table["timestamp"].to_numpy().astype(np.float64)
        if not video_path.is_file():
            raise SkipEpisode(f"missing video {video_path.relative_to(self.root)}")
        video = open_video(video_path, shared=self.v3)
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
