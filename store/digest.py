"""The digests a seal may name (docs/store-format.md, "Seals"): the one place that hashes a store's bytes.

New seals use xxh3-128: it detects any accidental damage as surely as a cryptographic digest and is
2.4-5x faster per core than BLAKE3, 7-17x than SHA-256 (BENCHMARKS.md, checked-reads); what it gives up
(a chunk altered on purpose to match) is in docs/store-format.md, "Seals". Seals written by earlier
format-3 code name `blake3`; seals without a `digest` field (format 2) are SHA-256.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import blake3
import xxhash

from common.errors import StoreError
from common.files import file_digest

from .location import RemotePath

SEAL_DIGEST = "xxh3-128"  # what new seals use
LEGACY_DIGEST = "sha256"  # a seal that names none (format 2)
_HASHERS: dict[str, Callable] = {"xxh3-128": xxhash.xxh3_128, "blake3": blake3.blake3, "sha256": hashlib.sha256}
DIGESTS = tuple(_HASHERS)  # the names a seal may give
THREADS = min(4, os.cpu_count() or 1)  # hashing threads per process
_pool: tuple[int, ThreadPoolExecutor] | None = None  # (pid, pool): threads do not survive a fork


def check_digest(name: str, where: str) -> str:
    """`name` if this code knows it, else a one-line StoreError that names `where` it was found."""
    if not isinstance(name, str) or name not in _HASHERS:
        raise StoreError(f"{where} names an unknown digest {name!r} (this code knows {', '.join(DIGESTS)}); "
                         "upgrade the package")
    return name


def digest_bytes(data: bytes | memoryview, name: str) -> str:
    """Hex digest of some bytes."""
    return _HASHERS[name](data).hexdigest()


def digest_parts(parts: list[memoryview], name: str) -> str:
    """Hex digest of the concatenation of some buffers (one file read scattered into several)."""
    h = _HASHERS[name]()
    for part in parts:
        h.update(part)
    return h.hexdigest()


def digest_many(buffers: list[bytes | memoryview], name: str) -> list[str]:
    """Hex digests of several buffers, on this process's hashing threads (every digest here releases the GIL):
    `store verify`, `store migrate` and sealing hash a chunk file and its rows on several cores at once."""
    global _pool
    if _pool is None or _pool[0] != os.getpid():  # first use in this process (a forked loader worker too)
        _pool = (os.getpid(), ThreadPoolExecutor(THREADS, thread_name_prefix="digest"))
    return list(_pool[1].map(digest_bytes, buffers, [name] * len(buffers)))


def _rows(data: bytes | memoryview, frame: int) -> list[memoryview]:
    data = memoryview(data)
    return [data[i:i + frame] for i in range(0, len(data), frame)]


def chunk_digests(data: bytes | memoryview, name: str, frame: int) -> tuple[str, list[str]]:
    """A feature chunk file's digest and those of its rows, from its bytes."""
    whole, *per_row = digest_many([data, *_rows(data, frame)], name)
    return whole, per_row


def digest_file(path: Path | RemotePath, name: str) -> str:
    """Hex digest of a file's bytes (a local one read in blocks)."""
    if isinstance(path, RemotePath):
        return digest_bytes(path.read_bytes(), name)
    return file_digest(path, _HASHERS[name])
