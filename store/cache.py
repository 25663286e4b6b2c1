"""A local, bounded, content-addressed copy of shard objects read from a remote store (`--cache DIR`).

Every object a sealed shard holds has its digest in the seal, so the cache keys each copy by the
seal's algorithm and that digest: `DIR/ab/blake3-abcdef...` (a format-2 store's: `sha256-...`). A copy
is trusted only after its bytes hash to its name (the reader checks; a damaged copy is dropped and
fetched again). Writes go to a temporary name and are renamed
into place, so any number of DataLoader workers and runs may share one folder. The size is bounded:
a process that has added an eighth of the bound since it last looked removes the least recently
used copies until the folder holds 90% of the bound (so it may overshoot by an eighth per worker).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from common.files import TMP_MARK, output_dir, temp_name

from .digest import DIGESTS

log = logging.getLogger(__name__)
TRIM_EVERY = 8  # look at the folder's size after adding 1/8 of the bound
TRIM_TO = 0.9
_COPY = re.compile(rf"(?:{'|'.join(map(re.escape, DIGESTS))})-([0-9a-f]{{2}})[0-9a-f]*")  # ALGORITHM-DIGEST, in the
# folder named by the digest's first two characters


def _own(folder: str, name: str) -> bool:
    """Whether a file of the cache folder is a copy the cache made (or a temporary file of one being written)."""
    if name.startswith(".") and TMP_MARK in name:
        name = name[1:name.index(TMP_MARK)]
    return (m := _COPY.fullmatch(name)) is not None and m.group(1) == folder


class ChunkCache:
    def __init__(self, directory: Path, max_bytes: int):
        self.dir, self.max_bytes = output_dir(Path(directory), "--cache"), max_bytes
        self.added = 0
        self.failed = False  # a write failed: this process adds nothing more
        self.trim()

    def _path(self, algorithm: str, digest: str) -> Path:
        return self.dir / digest[:2] / f"{algorithm}-{digest}"

    def copy(self, algorithm: str, digest: str) -> Path | None:
        """The file of the object's copy, marked recently used; None if there is none."""
        path = self._path(algorithm, digest)
        try:
            os.utime(path)
            return path
        except FileNotFoundError:
            return None

    def get(self, algorithm: str, digest: str) -> bytes | None:
        try:
            return path.read_bytes() if (path := self.copy(algorithm, digest)) else None
        except FileNotFoundError:  # another worker trimmed it meanwhile
            return None

    def drop(self, algorithm: str, digest: str) -> None:
        self._path(algorithm, digest).unlink(missing_ok=True)

    def put(self, algorithm: str, digest: str, data: bytes | memoryview) -> None:
        if self.failed or len(data) > self.max_bytes * (1 - TRIM_TO):
            return  # after a failed write, or an object this large would evict most of the cache
        path = self._path(algorithm, digest)
        tmp = temp_name(path)
        try:
            path.parent.mkdir(exist_ok=True)
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError as e:  # a full disk, say: the cache is an optimisation, so reads go on without it
            tmp.unlink(missing_ok=True)
            self.failed = True
            log.warning("--cache %s: cannot write to it (%s); reading through without caching", self.dir,
                        e.strerror or e)
            return
        self.added += len(data)
        if self.added * TRIM_EVERY > self.max_bytes:
            self.trim()

    def trim(self) -> None:
        """Remove the least recently used copies while the folder holds more than the bound. Only the cache's
        own files count and go: `--cache` may name a folder that holds other files too."""
        self.added = 0
        entries = []
        for sub in self.dir.iterdir():
            for f in sub.iterdir() if sub.is_dir() else ():
                if not _own(sub.name, f.name):
                    continue
                try:
                    st = f.stat()
                except FileNotFoundError:  # another worker removed it meanwhile
                    continue
                entries.append((st.st_mtime, st.st_size, f))
        total = sum(size for _, size, _ in entries)
        if total <= self.max_bytes:
            return
        for _, size, f in sorted(entries, key=lambda e: e[0]):
            f.unlink(missing_ok=True)
            total -= size
            if total <= self.max_bytes * TRIM_TO:
                break
