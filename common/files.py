"""Crash-safe local file writes and checksums.

Every file that readers trust is written to a temporary name beside it, flushed to disk,
renamed into place and the directory entry flushed too: after a crash there is either the
old file or the complete new one, never a torn one. Temporary names carry the host and pid,
so a later run can tell a crashed writer's leftover from a live writer's file.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError

TMP_MARK = ".tmp-"


def output_dir(path: Path, option: str) -> Path:
    """Create the folder a command writes into (and its parents); one-line error if a file is in the way."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"{option} {path}: a file is in the way of this folder") from None
    except OSError as e:
        raise UserError(f"{option} {path}: cannot create this folder ({e.strerror})") from None
    return path


def output_file(path: Path, option: str) -> Path:
    """A file a command will write: its folder must exist, and it must not be a folder itself."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{option} {path} is a folder; give a file name")
    if not path.parent.is_dir():
        raise UserError(f"{option} {path}: folder {path.parent} does not exist")
    return path


def fsync_path(path: Path) -> None:
    """Flush a file's or a folder's data (a folder's: the names in it) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_flushed(path: Path) -> bytes:
    """A file's bytes, flushed to disk while it is open (a seal must not name bytes a crash can still lose)."""
    with open(path, "rb") as f:
        data = f.read()
        os.fsync(f.fileno())
    return data


def temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}{TMP_MARK}{socket.gethostname()}-{os.getpid()}")


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


@contextmanager
def disk_full(path: Path, needed: int | None = None) -> Iterator[None]:
    """A write under `path` that finds the disk full (ENOSPC) ends in one line naming the path, the space free
    there and, when known, the size of the write that failed."""
    try:
        yield
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        existing = next(p for p in (Path(path), *Path(path).parents) if p.exists())
        free = human_bytes(shutil.disk_usage(existing).free)
        size = f"; this write needs about {human_bytes(needed)}" if needed else ""
        raise UserError(f"{path}: the disk is full ({free} free there{size}); free some space or write elsewhere, "
                        "then run the command again (train: with --resume)") from None


def atomic_write(path: Path, write: Callable[[Path], object], size: int | None = None) -> None:
    """`write(tmp)` creates the content at a temporary path; it then replaces `path` durably. `size`: about how
    many bytes it writes (for the message if the disk is full)."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        with disk_full(path, size):
            write(tmp)
            fsync_path(tmp)
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data), len(data))


def remove_stale_temps(directory: Path, pattern: str = "*") -> list[Path]:
    """Delete temporaries (files or folders) of `pattern` left by writers of this host that no longer run.

    A SIGKILLed writer cannot clean up after itself; the next run of the same command does.
    Temporaries of live processes (or of other hosts sharing the folder) are left alone.
    """
    removed = []
    host = socket.gethostname()
    for p in Path(directory).glob(f".{pattern}{TMP_MARK}*"):
        owner, _, pid = p.name.rpartition(TMP_MARK)[2].rpartition("-")
        if owner == host and pid.isdigit() and not pid_alive(int(pid)):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def file_digest(path: Path, new: Callable = hashlib.sha256) -> str:
    """Hex digest of a file's bytes, read in blocks (SHA-256 unless `new` makes another hasher)."""
    h = new()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()
