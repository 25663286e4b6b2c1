"""Creating a store, writing and sealing one unit's shard, and the resume helpers."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
import zarr

from . import codecs, manifest
from .format import (
    EPISODES_FILE,
    FORMAT_VERSION,
    MANIFEST_FILE,
    PLAN_FILE,
    SEAL_FILE,
    SHARDS_DIR,
    STATE_DIM,
    StoreConfig,
    StoreError,
    read_root_attrs,
    shard_dir,
)

ROW_CHUNK = 4096  # rows per chunk of the small per-row arrays


def plan_table(units: list[list[str]]) -> pa.Table:
    """Episode ids are positions in the plan: stable across runs, ranks and resumes."""
    unit_col, sources = [], []
    for u, episodes in enumerate(units):
        unit_col += [u] * len(episodes)
        sources += episodes
    return pa.table(
        {"unit": unit_col, "episode_id": list(range(len(sources))), "source": sources},
        schema=manifest.PLAN_SCHEMA,
    )


def read_plan(root: Path) -> pa.Table:
    return manifest.read_table(Path(root) / PLAN_FILE, manifest.PLAN_SCHEMA)


def create_store(root: Path, config: StoreConfig, units: list[list[str]]) -> bool:
    """Create the store, or check that an existing one has this config and plan.

    Creation is atomic (built beside, then renamed into place), so several ranks may call
    this at once without talking to each other. Returns True if this call created it.
    """
    root = Path(root)
    plan = plan_table(units)
    if root.exists() and any(root.iterdir()):
        check_compatible(root, config, plan)
        return False
    if config.codec not in codecs.CODECS:
        raise StoreError(f"unknown codec {config.codec!r}; choose one of {', '.join(codecs.CODECS)}")
    codecs.compressors(config.compression)  # validates the name
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    attrs = {"format_version": FORMAT_VERSION, "num_units": len(units), **config.to_attrs()}
    zarr.open_group(tmp, mode="w", attributes=attrs).create_group(SHARDS_DIR)
    manifest.write_table(plan, tmp / PLAN_FILE)
    try:
        os.rename(tmp, root)  # replaces an empty directory, fails on a non-empty one
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        check_compatible(root, config, plan)  # another rank created it first
        return False
    return True


def check_compatible(root: Path, config: StoreConfig, plan: pa.Table) -> None:
    attrs = read_root_attrs(root)
    diffs = StoreConfig.from_attrs(attrs).differences(config)
    if diffs:
        raise StoreError(
            f"{root} was made with other settings ({'; '.join(diffs)}); "
            "use another output path or the original settings"
        )
    if not read_plan(root).equals(plan):
        raise StoreError(
            f"{root} holds a different plan of episodes than this corpus gives now; "
            "the corpus or the units option changed. Use another output path."
        )


def file_digests(directory: Path, fsync: bool = False) -> dict[str, str]:
    """SHA-256 of every file under a shard directory except the seal itself."""
    out = {}
    for path in sorted(p for p in Path(directory).rglob("*") if p.is_file()):
        rel = path.relative_to(directory).as_posix()
        if rel == SEAL_FILE or rel.startswith(f".{SEAL_FILE}"):
            continue
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(1 << 22):
                h.update(block)
            if fsync:
                os.fsync(f.fileno())
        out[rel] = h.hexdigest()
    return out


class ShardWriter:
    """Writes one unit: its planned episodes, in plan order, then the seal.

    One writer per unit. A leftover unsealed directory (a crashed writer) is removed first.
    """

    def __init__(self, root: Path, unit: int):
        self.root = Path(root)
        attrs = read_root_attrs(self.root)
        self.config = StoreConfig.from_attrs(attrs)
        if not 0 <= unit < attrs["num_units"]:
            raise StoreError(f"unit {unit} out of range 0..{attrs['num_units'] - 1}")
        plan = read_plan(self.root).to_pydict()
        self.unit = unit
        self.expected = [e for u, e in zip(plan["unit"], plan["episode_id"]) if u == unit]
        self.dir = shard_dir(self.root, unit)
        if (self.dir / SEAL_FILE).exists():
            raise StoreError(f"unit {unit} is already sealed")
        shutil.rmtree(self.dir, ignore_errors=True)
        c = self.config
        group = zarr.open_group(self.dir, mode="w-", attributes={"unit": unit})
        kw = dict(fill_value=0, config={"write_empty_chunks": True})
        comp = codecs.compressors(c.compression)
        self.arrays = {
            "features": group.create_array(
                "features", shape=(0, c.tokens, c.feature_dim), dtype=codecs.STORED_DTYPE[c.codec],
                chunks=(c.chunk_frames, c.tokens, c.feature_dim), compressors=comp, **kw),
            "state": group.create_array(
                "state", shape=(0, STATE_DIM), dtype="float32", chunks=(ROW_CHUNK, STATE_DIM), **kw),
            "frame_index": group.create_array(
                "frame_index", shape=(0,), dtype="int64", chunks=(ROW_CHUNK,), **kw),
            "timestamp": group.create_array(
                "timestamp", shape=(0,), dtype="float64", chunks=(ROW_CHUNK,), **kw),
            "episode": group.create_array(
                "episode", shape=(0,), dtype="int64", chunks=(ROW_CHUNK,), **kw),
        }
        if c.codec == "int8":
            self.arrays["scales"] = group.create_array(
                "scales", shape=(0, c.tokens), dtype="float16",
                chunks=(c.chunk_frames, c.tokens), compressors=comp, **kw)
        self.rows = 0
        self.records: list[dict] = []

    def _next(self, info: manifest.EpisodeInfo) -> None:
        done = len(self.records)
        if done >= len(self.expected) or info.episode_id != self.expected[done]:
            want = self.expected[done] if done < len(self.expected) else "none (unit is full)"
            raise StoreError(f"unit {self.unit}: got episode {info.episode_id}, expected {want}")

    def _record(self, info: manifest.EpisodeInfo, n: int, status: str, reason: str) -> None:
        self.records.append({
            "episode_id": info.episode_id, "unit": self.unit, "first_row": self.rows,
            "num_frames": n, "source": info.source, "camera": info.camera, "task": info.task,
            "success": info.success, "status": status, "reason": reason,
            "native_fps": info.native_fps, "stride": info.stride, "note": info.note,
        })
        self.rows += n

    def add_episode(
        self,
        info: manifest.EpisodeInfo,
        features: torch.Tensor,
        state: np.ndarray,
        frame_index: np.ndarray,
        timestamp: np.ndarray,
    ) -> None:
        """Append an episode's rows: features [n, tokens, D] (raw encoder output), state [n, 7]."""
        self._next(info)
        c = self.config
        n = features.shape[0]
        if tuple(features.shape[1:]) != (c.tokens, c.feature_dim):
            raise StoreError(f"features of shape {tuple(features.shape)} do not fit "
                             f"[n, {c.tokens}, {c.feature_dim}]")
        if n == 0 or np.shape(state) != (n, STATE_DIM) or len(frame_index) != n or len(timestamp) != n:
            raise StoreError(f"episode {info.episode_id}: {n} feature rows but state "
                             f"{np.shape(state)}, {len(frame_index)} frame indices, {len(timestamp)} timestamps")
        stored, scales = codecs.encode(features, c.codec)
        self.arrays["features"].append(stored)
        if scales is not None:
            self.arrays["scales"].append(scales)
        self.arrays["state"].append(np.asarray(state, np.float32))
        self.arrays["frame_index"].append(np.asarray(frame_index, np.int64))
        self.arrays["timestamp"].append(np.asarray(timestamp, np.float64))
        self.arrays["episode"].append(np.full(n, info.episode_id, np.int64))
        self._record(info, n, "ok", "")

    def add_skipped(self, info: manifest.EpisodeInfo, reason: str) -> None:
        self._next(info)
        self._record(info, 0, "skipped", reason)

    def seal(self) -> None:
        if len(self.records) != len(self.expected):
            missing = self.expected[len(self.records):]
            raise StoreError(f"unit {self.unit}: cannot seal, episodes {missing} not written")
        table = pa.Table.from_pylist(self.records, schema=manifest.SCHEMA)
        manifest.write_table(table, self.dir / EPISODES_FILE)
        seal = {
            "unit": self.unit,
            "rows": self.rows,
            "episodes": len(self.records),
            "files": file_digests(self.dir, fsync=True),
        }
        tmp = self.dir / f".{SEAL_FILE}.tmp"
        with open(tmp, "w") as f:
            json.dump(seal, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.dir / SEAL_FILE)
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _units(root: Path, sealed: bool) -> list[int]:
    shards = Path(root) / SHARDS_DIR
    if not shards.is_dir():
        read_root_attrs(root)  # names the problem if root is no store at all
        raise StoreError(f"{root}: feature store without a {SHARDS_DIR}/ directory")
    return sorted(int(d.name) for d in shards.iterdir() if d.name.isdigit() and (d / SEAL_FILE).exists() == sealed)


def sealed_units(root: Path) -> list[int]:
    return _units(root, sealed=True)


def unsealed_units(root: Path) -> list[int]:
    return _units(root, sealed=False)


def remove_unsealed(root: Path, units: list[int] | None = None) -> list[int]:
    """Delete the shards that a crashed writer left unsealed (only among `units` if given).

    Call it only where no writer is at work on those units. Returns the removed units.
    """
    removed = [u for u in unsealed_units(root) if units is None or u in set(units)]
    for unit in removed:
        shutil.rmtree(shard_dir(root, unit))
    return removed


def merge_manifest(root: Path) -> pa.Table:
    """Write manifest.parquet from every unit's episode table; all units must be sealed."""
    root = Path(root)
    num_units = read_root_attrs(root)["num_units"]
    sealed = set(sealed_units(root))
    missing = [u for u in range(num_units) if u not in sealed]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise StoreError(f"{root}: {len(missing)} of {num_units} units not sealed yet ({shown})")
    table = manifest.concat(
        [manifest.read_table(shard_dir(root, u) / EPISODES_FILE) for u in range(num_units)]
    )
    manifest.write_table(table, root / MANIFEST_FILE)
    return table
