"""Episode tables (Parquet): one row per episode, per shard and merged for the whole store."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA = pa.schema(
    [
        ("episode_id", pa.int64()),
        ("unit", pa.int32()),  # the shard that holds it
        ("first_row", pa.int64()),  # within the shard
        ("num_frames", pa.int32()),
        ("source", pa.string()),
        ("camera", pa.string()),
        ("task", pa.string()),
        ("success", pa.bool_()),  # null when the source does not say
        ("status", pa.string()),  # "ok" | "skipped"
        ("reason", pa.string()),  # why skipped; "" when ok
        ("native_fps", pa.float64()),
        ("stride", pa.int32()),
        ("note", pa.string()),  # e.g. which of two disagreeing lengths or rates was used
    ]
)
PLAN_SCHEMA = pa.schema([("unit", pa.int32()), ("episode_id", pa.int64()), ("source", pa.string())])


@dataclass
class EpisodeInfo:
    """What the extraction job knows about an episode besides its frames."""

    episode_id: int
    source: str
    camera: str = ""
    task: str = ""
    success: bool | None = None
    native_fps: float = 0.0
    stride: int = 0
    note: str = ""


def write_table(table: pa.Table, path: Path) -> None:
    """Write a Parquet file atomically (temp file + rename), so readers never see half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_table(path: Path, schema: pa.Schema = SCHEMA) -> pa.Table:
    return pq.read_table(path, schema=schema)


def empty() -> pa.Table:
    return SCHEMA.empty_table()


def concat(tables: list[pa.Table]) -> pa.Table:
    if not tables:
        return empty()
    return pa.concat_tables(tables).sort_by("episode_id")
