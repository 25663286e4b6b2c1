"""Integrity checks of a store: seals, checksums, shapes and manifest consistency."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa

from . import codecs, manifest
from .format import (
    EPISODES_FILE, MANIFEST_FILE, SEAL_FILE, STATE_DIM, StoreConfig, file_digests, read_plan, read_root_attrs,
    sealed_units, shard_dir, unsealed_units,
)
from .reader import shard_arrays


def verify(root: Path, on_shard: Callable[[int], None] | None = None) -> list[str]:
    """Return one line per problem found (empty list: the store is complete and intact)."""
    root = Path(root)
    attrs = read_root_attrs(root)
    config = StoreConfig.from_attrs(attrs)
    plan = read_plan(root).to_pydict()
    planned: dict[int, list[int]] = {u: [] for u in range(attrs["num_units"])}
    for u, e in zip(plan["unit"], plan["episode_id"]):
        planned[u].append(e)

    problems = []
    sealed, unsealed = sealed_units(root), unsealed_units(root)
    for u in unsealed:
        problems.append(f"shard {u:05d}: unsealed (its writer did not finish; resume removes and redoes it)")
    for u in sorted(set(planned) - set(sealed) - set(unsealed)):
        problems.append(f"shard {u:05d}: not written yet")
    tables = []
    for u in sealed:
        shard_problems, table = _verify_shard(root, u, config, planned.get(u))
        problems += shard_problems
        if table is not None:
            tables.append(table)
        if on_shard:
            on_shard(u)
    if (root / MANIFEST_FILE).exists():
        problems += _verify_manifest(root, manifest.concat(tables), len(sealed) == len(planned), len(plan["unit"]))
    return problems


def _verify_shard(root: Path, unit: int, config: StoreConfig, planned: list[int] | None):
    name = f"shard {unit:05d}"
    if planned is None:
        return [f"{name}: not in the plan"], None
    d = shard_dir(root, unit)
    try:
        seal = json.loads((d / SEAL_FILE).read_text())
        expected = seal["files"]
    except (OSError, ValueError, KeyError) as e:
        return [f"{name}: unreadable seal ({e})"], None
    actual = file_digests(d)
    bad = [f"{name}: checksum mismatch in {f}" for f in sorted(expected) if f in actual and actual[f] != expected[f]]
    bad += [f"{name}: missing file {f}" for f in sorted(set(expected) - set(actual))]
    bad += [f"{name}: unexpected file {f}" for f in sorted(set(actual) - set(expected))]
    if bad:
        return bad, None

    rows = seal["rows"]
    try:
        arrays = shard_arrays(d, config.codec)
    except (OSError, ValueError) as e:
        return [f"{name}: arrays unreadable ({e})"], None
    shapes = {
        "features": ((rows, config.tokens, config.feature_dim), codecs.STORED_DTYPE[config.codec]),
        "state": ((rows, STATE_DIM), np.float32),
        "frame_index": ((rows,), np.int64),
        "timestamp": ((rows,), np.float64),
        "episode": ((rows,), np.int64),
    }
    if config.codec == "int8":
        shapes["scales"] = ((rows, config.tokens), np.float16)
    for key, (shape, dtype) in shapes.items():
        if arrays[key].shape != shape or arrays[key].dtype != np.dtype(dtype):
            bad.append(f"{name}: array {key} is {arrays[key].dtype}{list(arrays[key].shape)}, "
                       f"expected {np.dtype(dtype)}{list(shape)}")
    table = manifest.read_table(d / EPISODES_FILE)
    t = table.to_pydict()
    if t["episode_id"] != planned:
        bad.append(f"{name}: holds episodes {t['episode_id']}, planned {planned}")
    if bad:
        return bad, None

    row_episode = arrays["episode"][:]
    offset = 0
    for e, first, n, status in zip(t["episode_id"], t["first_row"], t["num_frames"], t["status"]):
        where = f"{name} episode {e}"
        if first != offset:
            bad.append(f"{where}: starts at row {first}, expected {offset}")
        elif (status == "ok") != (n > 0):
            bad.append(f"{where}: status {status} with {n} frames")
        elif not np.all(row_episode[first:first + n] == e):
            bad.append(f"{where}: rows {first}..{first + n - 1} are not all labelled with it")
        offset = first + n
    if offset != rows:
        bad.append(f"{name}: episodes cover {offset} rows, arrays hold {rows}")
    return bad, (None if bad else table)


def _verify_manifest(root: Path, shards: pa.Table, complete: bool, num_episodes: int) -> list[str]:
    """Compare the merged manifest with the episode tables of the shards that passed their checks."""
    if not complete:
        return [f"{MANIFEST_FILE}: present although not every unit is sealed"]
    try:
        merged = manifest.read_table(root / MANIFEST_FILE).to_pylist()
    except (OSError, pa.ArrowException) as e:
        return [f"{MANIFEST_FILE}: unreadable ({e})"]
    good = {r["episode_id"]: r for r in shards.to_pylist()}
    units = {r["unit"] for r in good.values()}
    bad = [f"{MANIFEST_FILE}: episode {r['episode_id']} differs from its shard's table"
           for r in merged if r["unit"] in units and good.get(r["episode_id"]) != r]
    if len(merged) != num_episodes:
        bad.append(f"{MANIFEST_FILE}: {len(merged)} episodes, the plan has {num_episodes}")
    return bad
