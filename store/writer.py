"""Creating a store, writing and sealing one unit's shard, and the resume helpers."""

from __future__ import annotations

import glob
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
import zarr

from common.errors import StoreError
from common.files import disk_full, fsync_path, output_dir, read_flushed, remove_stale_temps, temp_name

from . import codecs, manifest
from .format import (
    EPISODES_FILE,
    FORMAT_VERSION,
    MANIFEST_FILE,
    PLAN_FILE,
    SEAL_FILE,
    SHARDS_DIR,
    Location,
    StoreConfig,
    in_row_order,
    read_checked,
    read_plan,
    read_root_attrs,
    read_seal,
    sealed_units,
    shard_digests,
    shard_dir,
    shard_files,
    shard_episodes,
    unsealed_units,
    update_root_attrs,
)
from .digest import SEAL_DIGEST, digest_bytes, digest_file
from .location import RemotePath, list_files, remove_tree, upload, where, write_bytes
from .stats import robot_stats

ROW_CHUNK = 4096  # rows per chunk of the small per-row arrays


def plan_units(sources: list[str], per_unit: int) -> list[list[str]]:
    """The corpus's sources cut, in order, into work units (shards) of `per_unit` episodes."""
    return [sources[i:i + per_unit] for i in range(0, len(sources), per_unit)]


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


def create_store(root: Location | str, config: StoreConfig, units: list[list[str]]) -> bool:
    """Create the store, or check that an existing one has this config and plan.

    Creation is atomic, so several ranks may call this at once without talking to each other: a
    local store is built beside its place and renamed into it; a remote one is uploaded with the
    root zarr.json (what makes it a store) last. Returns True if this call created it.
    """
    root = where(root)
    plan = plan_table(units)
    if root.exists() and not root.is_dir():
        raise StoreError(f"{root} is a file, not a store folder")
    if root.exists() and any(True for _ in root.iterdir()):
        check_compatible(root, config, plan)
        return False
    if isinstance(root, Path) and root.name in ("", ".."):  # built beside its place: it needs a name there
        raise StoreError(f"{str(root)!r} names no folder of its own; give the store's folder by its name")
    if config.codec not in codecs.CODECS:
        raise StoreError(f"unknown codec {config.codec!r}; choose one of {', '.join(codecs.CODECS)}")
    codecs.compressors(config.compression)  # validates the name
    remote = isinstance(root, RemotePath)
    if remote:
        if not root.bucket_exists():
            raise StoreError(f"{root}: the bucket does not exist")
        tmp = Path(tempfile.mkdtemp(prefix="store-"))
    else:
        output_dir(root.parent, "store folder")
        remove_stale_temps(root.parent, glob.escape(root.name))  # of a creation that was killed
        tmp = temp_name(root)
        shutil.rmtree(tmp, ignore_errors=True)
    plan_bytes = manifest.table_bytes(plan)
    attrs = {"format_version": FORMAT_VERSION, "num_units": len(units), **config.to_attrs(),
             "plan_sha256": digest_bytes(plan_bytes, "sha256")}
    zarr.open_group(tmp, mode="w", attributes=attrs).create_group(SHARDS_DIR)
    (tmp / PLAN_FILE).write_bytes(plan_bytes)
    if remote:
        try:
            files = {rel: tmp / rel for rel in list_files(tmp)}
            upload({k: v for k, v in files.items() if k != "zarr.json"}, root)
            upload({"zarr.json": files["zarr.json"]}, root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        check_compatible(root, config, plan)  # a rank that raced this one with other settings loses here
        return True
    try:
        os.rename(tmp, root)  # replaces an empty directory, fails on a non-empty one
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        check_compatible(root, config, plan)  # another rank created it first
        return False
    fsync_path(root.parent)
    return True


def check_compatible(root: Location, config: StoreConfig, plan: pa.Table) -> None:
    attrs = read_root_attrs(root)
    diffs = StoreConfig.from_attrs(attrs).differences(config)
    if diffs:
        raise StoreError(
            f"{root} was made with other settings ({'; '.join(diffs)}); "
            "use another output path or the original settings"
        )
    if not read_plan(root, attrs).equals(plan):
        raise StoreError(
            f"{root} holds a different plan of episodes than this corpus gives now; "
            "the corpus or the units option changed. Use another output path."
        )


class ShardWriter:
    """Writes one unit: its planned episodes, in plan order, then the seal.

    One writer per unit. A leftover unsealed directory (a crashed writer) is removed first. For a
    store in an object store the shard is written to a local staging folder and uploaded by `seal`,
    the seal object last: an object PUT is atomic, so readers see a complete shard or none.
    """

    def __init__(self, root: Location | str, unit: int):
        self.root = where(root)
        attrs = read_root_attrs(self.root)
        self.config = StoreConfig.from_attrs(attrs)
        if not 0 <= unit < attrs["num_units"]:
            raise StoreError(f"unit {unit} out of range 0..{attrs['num_units'] - 1}")
        plan = read_plan(self.root, attrs).to_pydict()
        self.unit = unit
        self.expected = [e for u, e in zip(plan["unit"], plan["episode_id"]) if u == unit]
        self.target = shard_dir(self.root, unit)
        if (self.target / SEAL_FILE).exists():
            raise StoreError(f"unit {unit} is already sealed")
        remove_tree(self.target)
        remote = isinstance(self.target, RemotePath)
        self.dir = Path(tempfile.mkdtemp(prefix=f"shard-{unit:05d}-")) if remote else self.target
        c = self.config
        with disk_full(self.dir):
            group = zarr.open_group(self.dir, mode="w-", attributes={"unit": unit})
            kw = dict(fill_value=0, config={"write_empty_chunks": True})
            comp = codecs.compressors(c.compression)
            self.arrays = {}
            for name, (shape, dtype) in codecs.shard_layout(c).items():
                per_frame = name in codecs.FRAME_ARRAYS  # the small per-row arrays keep zarr's default compressor
                self.arrays[name] = group.create_array(
                    name, shape=(0, *shape), dtype=dtype, chunks=(c.chunk_frames if per_frame else ROW_CHUNK, *shape),
                    **({"compressors": comp} if per_frame else {}), **kw)
        self.rows = 0
        self.records: list[dict] = []

    def _next(self, info: manifest.EpisodeInfo) -> None:
        done = len(self.records)
        if done >= len(self.expected) or info.episode_id != self.expected[done]:
            want = self.expected[done] if done < len(self.expected) else "none (unit is full)"
            raise StoreError(f"unit {self.unit}: got episode {info.episode_id}, expected {want}")

    def _record(self, info: manifest.EpisodeInfo, n: int, status: str, reason: str) -> None:
        self.records.append(manifest.manifest_row(info, self.unit, self.rows, n, status, reason))
        self.rows += n

    def add_episode(
        self,
        info: manifest.EpisodeInfo,
        features: torch.Tensor,
        state: np.ndarray,
        frame_index: np.ndarray,
        timestamp: np.ndarray,
        action: np.ndarray | None = None,
    ) -> None:
        """Append an episode's rows: features [n, tokens, D] (raw encoder output), state [n, S], and for a
        store of column actions action [n, A] (the last row NaN)."""
        self._next(info)
        c = self.config
        n = features.shape[0]
        if tuple(features.shape[1:]) != (c.tokens, c.feature_dim):
            raise StoreError(f"features of shape {tuple(features.shape)} do not fit "
                             f"[n, {c.tokens}, {c.feature_dim}]")
        if n == 0 or np.shape(state) != (n, c.state_dim) or len(frame_index) != n or len(timestamp) != n:
            raise StoreError(f"episode {info.episode_id}: {n} feature rows but state "
                             f"{np.shape(state)}, {len(frame_index)} frame indices, {len(timestamp)} timestamps")
        if (action is not None) != c.stored_actions or (action is not None and np.shape(action) != (n, c.action_dim)):
            raise StoreError(f"episode {info.episode_id}: action {None if action is None else np.shape(action)} "
                             f"does not fit this store ({c.actions}, {n} x {c.action_dim})")
        stored, scales = codecs.encode(features, c.codec)
        with disk_full(self.dir, stored.nbytes):
            self.arrays["features"].append(stored)
            if scales is not None:
                self.arrays["scales"].append(scales)
            self.arrays["state"].append(np.asarray(state, np.float32))
            if action is not None:
                self.arrays["action"].append(np.asarray(action, np.float32))
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
        remote = self.dir != self.target
        frame, load = codecs.frame_bytes(self.config), Path.read_bytes if remote else read_flushed
        with disk_full(self.dir):  # flushing the shard's files to disk can be where a full disk shows
            files, rows = shard_digests(shard_files(self.dir), lambda rel: load(self.dir / rel), SEAL_DIGEST, frame)
        seal = {"unit": self.unit, "rows": self.rows, "episodes": len(self.records), "digest": SEAL_DIGEST,
                "files": files}
        if frame is not None:
            seal["frame_digests"] = in_row_order(rows, self.rows, self.config.chunk_frames)
        if remote:
            upload({rel: self.dir / rel for rel in seal["files"]}, self.target)
            shutil.rmtree(self.dir, ignore_errors=True)
        write_seal(self.target, seal)

    def discard(self) -> None:
        """Remove the unsealed shard (a stop or a failure before the seal): no half-written unit stays."""
        remove_tree(self.target)
        if self.dir != self.target:
            shutil.rmtree(self.dir, ignore_errors=True)


def write_seal(directory: Location, seal: dict) -> None:
    """Replace a shard's seal whole (an atomic rename, or one PUT)."""
    write_bytes(directory / SEAL_FILE, json.dumps(seal, indent=1).encode())


def reseal(root: Location | str, algorithm: str = SEAL_DIGEST, on_shard: Callable[[int], None] | None = None) -> int:
    """Rewrite every sealed shard's seal with `algorithm`'s digests, and the row digests of stores whose chunks
    hold the rows as they are (`store migrate`); returns how many changed.

    Each file is checked against its old digest as it is read for the new ones, so damage is refused,
    never sealed anew. The store is marked format 3 first (older code refuses it in one line) and each
    seal is replaced atomically, so a killed run leaves a readable store with seals of both digests,
    which the next run finishes. Call it where no writer is sealing shards.
    """
    root = where(root)
    attrs = read_root_attrs(root)
    if attrs["format_version"] < FORMAT_VERSION:  # version 1 gets its implicit robot attributes written out
        update_root_attrs(root, **StoreConfig.from_attrs(attrs).to_attrs(), format_version=FORMAT_VERSION)
    config = StoreConfig.from_attrs(attrs)
    frame = codecs.frame_bytes(config)
    changed = 0
    for unit in sealed_units(root):
        seal, folder = read_seal(root, unit), shard_dir(root, unit)
        if isinstance(folder, Path):
            remove_stale_temps(folder, SEAL_FILE)  # of a run that was killed while replacing this seal
        if seal["digest"] != algorithm or (frame is not None and "frame_digests" not in seal):
            old = seal["files"]  # each file checked against its old digest as it is read for the new ones
            files, rows = shard_digests(sorted(old), lambda rel: read_checked(folder / rel, old[rel], seal["digest"]),
                                        algorithm, frame)
            new = {**seal, "digest": algorithm, "files": files}
            if frame is not None:
                new["frame_digests"] = in_row_order(rows, seal["rows"], config.chunk_frames)
            write_seal(folder, new)
            changed += 1
        if on_shard:
            on_shard(unit)
    return changed


def remove_unsealed(root: Location | str, units: list[int] | None = None) -> list[int]:
    """Delete the shards that a crashed writer left unsealed (only among `units` if given).

    Call it only where no writer is at work on those units. Returns the removed units.
    """
    removed = [u for u in unsealed_units(root) if units is None or u in set(units)]
    for unit in removed:
        remove_tree(shard_dir(root, unit))
    return removed


def merge_manifest(root: Location | str) -> pa.Table:
    """Write manifest.parquet from every unit's episode table (all units must be sealed), and the
    states' and actions' statistics (store.stats) into the root attributes."""
    root = where(root)
    attrs = read_root_attrs(root)
    num_units = len(set(read_plan(root, attrs)["unit"].to_pylist()))  # checked against the attributes
    sealed = set(sealed_units(root))
    missing = [u for u in range(num_units) if u not in sealed]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise StoreError(f"{root}: {len(missing)} of {num_units} units not sealed yet ({shown})")
    table = manifest.concat([shard_episodes(root, u) for u in range(num_units)])
    if isinstance(root, Path):
        remove_stale_temps(root, MANIFEST_FILE)  # of a merge that was killed
    data = manifest.table_bytes(table)
    digest = digest_bytes(data, "sha256")
    path = root / MANIFEST_FILE
    if attrs.get("manifest_sha256") != digest or not path.is_file() or digest_file(path, "sha256") != digest \
            or "stats" not in attrs:  # (an identical merge, as every finishing rank does, writes nothing)
        write_bytes(path, data)
        update_root_attrs(root, manifest_sha256=digest,
                          stats=robot_stats(root, StoreConfig.from_attrs(attrs), table))
    return table


@dataclass
class StoredEpisode:
    """An episode for `write_store`: its rows, or the reason it was skipped."""

    features: torch.Tensor | None = None  # [n, tokens, D] raw encoder output
    state: np.ndarray | None = None  # [n, S]
    action: np.ndarray | None = None  # [n, A] for a store of column actions (the last row NaN)
    info: manifest.EpisodeInfo = field(default_factory=manifest.EpisodeInfo)  # id and source are set here
    skip: str = ""


def write_store(root: Location | str, episodes: Sequence[StoredEpisode], per_unit: int | None = None, merge: bool = True,
                **config) -> Path:
    """A complete store from episodes already in memory (tests, benchmarks, features computed elsewhere).

    `config` sets StoreConfig fields; feature_dim, state_dim and action_dim come from the arrays, the
    grid is square and the actions pose-delta (7-D states), a column (given actions) or state-delta
    unless given. Episodes are read in order when they are written (the first one with features
    once more, for its shapes), so `episodes` may build them lazily. Stored frame i has frame_index
    i and timestamp i / fps; episode i has source `episode_i`.
    """
    first = next(e for e in episodes if e.features is not None)
    tokens, state_dim = first.features.shape[1], np.shape(first.state)[1]
    side = math.isqrt(tokens)
    actions = "column:action" if first.action is not None else "pose-delta" if state_dim == 7 else "state-delta"
    defaults = dict(encoder="vjepa2-vit", preset="test", checkpoint_sha256="random-init",
                    feature_dim=first.features.shape[2], grid=(side, side), image_size=16 * side, fps=4.0, crop="test",
                    camera="test", codec="bf16", compression="none", chunk_frames=4, source_format="test",
                    state_dim=state_dim, action_dim=state_dim if first.action is None else np.shape(first.action)[1],
                    actions=actions, state_names=None, action_names=None)
    cfg = StoreConfig.from_attrs({**defaults, **config})
    sources = [f"episode_{i}" for i in range(len(episodes))]
    units = plan_units(sources, per_unit or len(episodes))
    create_store(root, cfg, units)
    for unit in range(len(units)):
        writer = ShardWriter(root, unit)
        for i in writer.expected:
            ep = episodes[i]
            info = replace(ep.info, episode_id=i, source=sources[i])
            if ep.features is None:
                writer.add_skipped(info, ep.skip)
            else:
                n = len(ep.features)
                writer.add_episode(info, ep.features, ep.state, np.arange(n), np.arange(n) / cfg.fps, ep.action)
        writer.seal()
    if merge:
        merge_manifest(root)
    return where(root)
