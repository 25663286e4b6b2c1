"""Integrity checks of a store: metadata, seals, checksums, shapes and manifest consistency.

`verify` never stops at the first problem and never raises on damage: it returns one line per
problem it finds (an unreadable root zarr.json, which makes it no store at all, is the exception).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa

from common.errors import StoreError

from . import codecs, manifest
from .digest import digest_bytes
from .format import (
    FEATURE_CHUNKS_DIR, MANIFEST_FILE, Location, StoreConfig, in_row_order, read_checked, read_plan,
    read_root_attrs, read_seal, sealed_units, shard_digests, shard_dir, shard_episodes, shard_files, unsealed_units,
)
from .location import where
from .reader import shard_arrays

FEATURE_CHUNKS = (FEATURE_CHUNKS_DIR, "scales/c/")


def verify(root: Location | str, on_shard: Callable[[int], None] | None = None) -> list[str]:
    """Return one line per problem found (empty list: the store is complete and intact)."""
    root = where(root)
    attrs = read_root_attrs(root)
    config = StoreConfig.from_attrs(attrs)
    problems: list[str] = []
    try:
        plan = read_plan(root, attrs).to_pydict()
        planned: dict[int, list[int]] | None = {}
        for u, e in zip(plan["unit"], plan["episode_id"]):
            planned.setdefault(u, []).append(e)
    except StoreError as e:
        problems.append(str(e))
        planned = None
    units = set(planned) if planned is not None else set(range(attrs["num_units"]))

    sealed, unsealed = sealed_units(root), unsealed_units(root)
    for u in unsealed:
        problems.append(f"shard {u:05d}: unsealed (its writer did not finish; resume removes and redoes it)")
    for u in sorted(units - set(sealed) - set(unsealed)):
        problems.append(f"shard {u:05d}: not written yet")
    tables = []
    for u in sealed:
        if u not in units:
            problems.append(f"shard {u:05d}: not in the plan")
            continue
        shard_problems, table = check_shard(root, u, config, None if planned is None else planned[u])
        problems += shard_problems
        if table is not None:
            tables.append(table)
        if on_shard:
            on_shard(u)
    if planned is not None:
        complete = set(sealed) >= units
        problems += _verify_manifest(root, attrs, manifest.concat(tables), complete, planned)
    return problems


def check_shard(root: Location, unit: int, config: StoreConfig, planned: list[int] | None,
                chunks: bool = True) -> tuple[list[str], pa.Table | None]:
    """A sealed shard against its seal and the plan: (problems, its episode table if it has none). Without
    `chunks` the feature chunks (nearly all of its bytes) are not hashed, only listed; every other file is, and
    the arrays' shapes and rows are checked: what a crash or a second writer leaves is found at a small cost."""
    name = f"shard {unit:05d}"
    d = shard_dir(root, unit)
    try:
        seal = read_seal(root, unit)
    except StoreError as e:
        return [str(e)], None
    expected, files = seal["files"], shard_files(d)
    frame = codecs.frame_bytes(config) if chunks and "frame_digests" in seal else None
    hashed = [f for f in files if chunks or not f.startswith(FEATURE_CHUNKS)]
    lost: dict[str, str] = {}  # files listed but not read: removed since (a relaunched writer's claim) or an I/O error

    def read(f: str) -> bytes:
        try:
            return (d / f).read_bytes()
        except OSError as e:
            gone = isinstance(e, FileNotFoundError)
            lost[f] = f"missing file {f}" if gone else f"cannot read {f} ({e.strerror or e})"
            return b""

    actual, row_digests = shard_digests(hashed, read, seal["digest"], frame)
    bad = [f"{name}: {lost[f]}" for f in sorted(lost)]
    bad += [f"{name}: checksum mismatch in {f}" for f in sorted(expected)
            if f in actual and f not in lost and actual[f] != expected[f]]
    bad += [f"{name}: missing file {f}" for f in sorted(set(expected) - set(files))]
    bad += [f"{name}: unexpected file {f}" for f in sorted(set(files) - set(expected))]
    if frame is not None and not bad:  # the rows' own digests, which a reader checks the rows it reads against
        per_row = in_row_order(row_digests, seal["rows"], config.chunk_frames)
        wrong = [r for r, (got, want) in enumerate(zip(per_row, seal["frame_digests"])) if got != want]
        bad += [f"{name}: frame_digests differ from the feature rows (row {wrong[0]} first)"] if wrong else []
    if bad:
        return bad, None

    rows = seal["rows"]
    try:
        arrays = shard_arrays(root, unit, config, seal)
        table = shard_episodes(root, unit, seal)
    except StoreError as e:
        return [str(e)], None
    for key, (row, dtype) in codecs.shard_layout(config).items():
        if arrays[key].shape != (rows, *row) or arrays[key].dtype != dtype:
            bad.append(f"{name}: array {key} is {arrays[key].dtype}{list(arrays[key].shape)}, "
                       f"expected {dtype}{[rows, *row]}")
    t = table.to_pydict()
    if planned is not None and t["episode_id"] != planned:
        bad.append(f"{name}: holds episodes {t['episode_id']}, planned {planned}")
    if bad:
        return bad, None

    row_episode = arrays["episode"][:]
    action = arrays["action"][:] if config.stored_actions else None
    offset = 0
    for e, first, n, status in zip(t["episode_id"], t["first_row"], t["num_frames"], t["status"]):
        where = f"{name} episode {e}"
        if first != offset:
            bad.append(f"{where}: starts at row {first}, expected {offset}")
        elif (status == "ok") != (n > 0):
            bad.append(f"{where}: status {status} with {n} frames")
        elif not np.all(row_episode[first:first + n] == e):
            bad.append(f"{where}: rows {first}..{first + n - 1} are not all labelled with it")
        elif n and action is not None and not (np.isfinite(action[first:first + n - 1]).all()
                                               and np.isnan(action[first + n - 1]).all()):
            bad.append(f"{where}: actions are not finite with a NaN last row")
        offset = first + n
    if offset != rows:
        bad.append(f"{name}: episodes cover {offset} rows, arrays hold {rows}")
    return bad, (None if bad else table)


def _verify_manifest(root: Location, attrs: dict, shards: pa.Table, complete: bool,
                     planned: dict[int, list[int]]) -> list[str]:
    """The merged manifest against its recorded checksum and, row by row, the shards' own tables."""
    path, digest = root / MANIFEST_FILE, attrs.get("manifest_sha256")
    if not path.exists():  # fine before the merge; after it (a checksum was recorded), the file was lost
        return [f"{MANIFEST_FILE}: missing although the store was merged; `cli.py store merge` rewrites it"] \
            if digest else []
    if not complete:
        return [f"{MANIFEST_FILE}: present although not every unit is sealed"]
    try:
        data = read_checked(path, None)  # read once; checked against the digest here, compared row by row below
    except StoreError as e:
        return [str(e)]
    bad = [] if not digest or digest_bytes(data, "sha256") == digest else [
        f"{MANIFEST_FILE}: checksum mismatch (damaged, or changed after `store merge`; the merge rewrites it)"]
    try:
        merged = manifest.parse_table(data, manifest.SCHEMA, path).to_pylist()
    except StoreError as e:
        return bad + [str(e)]
    good = {r["episode_id"]: r for r in shards.to_pylist()}  # episodes of the shards that passed their checks
    listed = [r["episode_id"] for r in merged]
    bad += [f"{MANIFEST_FILE}: episode {r['episode_id']} differs from its shard's table"
            for r in merged if r["episode_id"] in good and good[r["episode_id"]] != r]
    expected = sorted(e for episodes in planned.values() for e in episodes)
    if listed != expected:  # merge writes the episodes in id order
        bad.append(f"{MANIFEST_FILE}: lists {len(listed)} episodes, not the plan's {len(expected)} episodes")
    return bad
