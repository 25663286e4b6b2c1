"""Episode tables (Parquet): one row per episode, per shard and merged for the whole store."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from common.errors import StoreError
from common.files import atomic_write

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
    """What is known about an episode besides its frames: filled by the corpus reader, numbered by
    the extraction job, written by the shard writer as the episode's manifest row."""

    episode_id: int = -1
    source: str = ""
    camera: str = ""
    task: str = ""
    success: bool | None = None
    native_fps: float = 0.0
    stride: int = 0
    note: str = ""


def manifest_row(info: EpisodeInfo, unit: int, first_row: int, num_frames: int, status: str, reason: str) -> dict:
    return {**asdict(info), "unit": unit, "first_row": first_row, "num_frames": num_frames,
            "status": status, "reason": reason}


def table_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def write_table(table: pa.Table, path: Path) -> None:
    """Write a Parquet file atomically, so readers never see half of one."""
    atomic_write(Path(path), lambda tmp: pq.write_table(table, tmp))


def parse_table(data: bytes, schema: pa.Schema, path: Path) -> pa.Table:
    """A Parquet file's bytes as a table of `schema`; damage becomes one StoreError naming the file."""
    try:
        return pq.read_table(pa.BufferReader(data), schema=schema)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise StoreError(f"{path}: unreadable Parquet ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None


def empty() -> pa.Table:
    return SCHEMA.empty_table()


def concat(tables: list[pa.Table]) -> pa.Table:
    if not tables:
        return empty()
    return pa.concat_tables(tables).sort_by("episode_id")
