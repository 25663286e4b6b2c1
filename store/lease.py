"""Unit locks: two processes given the same unit (a relaunched array task while the old one runs) never both
write it.

A local store locks `shards/NNNNN.lock` with flock: the kernel releases the lock when its process ends, however
it ends (on NFS, the server does after its lease time). An object store has no locks: there the lock is a lease
object `shards/NNNNN.lease`, created only where absent (a conditional PUT, If-None-Match) and read back (for
servers that ignore the condition), renewed while its unit is written and deleted after the seal. A lease not
renewed for its `seconds` (its writer was killed), or one of a process of this host that has ended, is stale and
taken over. Readers never look at either file.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path

from common.errors import StoreError
from common.files import disk_full, pid_alive
from common.settings import env_number

from .format import SHARDS_DIR, Location
from .location import RemotePath, where

LEASE_SECONDS = env_number("VJEPA_LEASE_SECONDS", 300, 1)  # an object-store lease's life unless renewed


def _owner() -> str:
    return f"{socket.gethostname()} pid {os.getpid()}"


def _stale(lease: dict, age: float) -> bool:
    """Not renewed for its life, or its process (on this host) is gone."""
    host, _, pid = lease["owner"].rpartition(" pid ")
    return age > lease["seconds"] or (host == socket.gethostname() and pid.isdigit() and not pid_alive(int(pid)))


class UnitLocks:
    """The units this process writes, locked against other writers."""

    def __init__(self, root: Location):
        self.root = where(root)
        self.held: dict[int, int | bytes] = {}  # unit -> locked file descriptor (local) or lease body (remote)
        self.lost: set[int] = set()  # leases another writer took over (this one stalled past their life)
        self.guard = threading.Lock()
        self.stopped = threading.Event()
        self.heartbeat: threading.Thread | None = None

    def _path(self, unit: int) -> Path | RemotePath:
        return self.root / SHARDS_DIR / f"{unit:05d}.{'lease' if isinstance(self.root, RemotePath) else 'lock'}"

    def take(self, unit: int) -> str | None:
        """Lock `unit` for this process: None when it is ours, else who holds it."""
        holder = self._lease(unit) if isinstance(self.root, RemotePath) else self._flock(unit)
        if holder is None and isinstance(self.root, RemotePath) and self.heartbeat is None:
            self.heartbeat = threading.Thread(target=self._renew, daemon=True)
            self.heartbeat.start()
        return holder

    def _flock(self, unit: int) -> str | None:
        path = self._path(unit)
        while True:
            fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 200).decode(errors="replace")
                os.close(fd)
                return holder or "another process"
            try:
                if os.fstat(fd).st_ino == os.stat(path).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)  # its holder released and removed the file before we locked: lock the new one
        with self.guard:
            self.held[unit] = fd
        with disk_full(path):  # (the owner is written for the message another writer gives)
            os.ftruncate(fd, 0)
            os.write(fd, _owner().encode())
        return None

    def _lease(self, unit: int) -> str | None:
        path = self._path(unit)
        token = uuid.uuid4().hex
        body = json.dumps({"owner": _owner(), "token": token, "seconds": LEASE_SECONDS}).encode()
        for _ in range(2):  # a second try after removing a stale lease
            try:
                path.call("pipe_file", path.key, body, mode="create")
                held = json.loads(path.read_bytes())  # read back: a server may ignore If-None-Match
            except FileExistsError:  # held; or this PUT took effect, its answer was lost and the retry was refused
                try:
                    held, info = json.loads(path.read_bytes()), path.call("info", path.key)
                except FileNotFoundError:  # released meanwhile
                    continue
                if held.get("token") != token:
                    if not _stale(held, (datetime.now(UTC) - info["LastModified"]).total_seconds()):
                        return held["owner"]
                    path.call("rm", path.key)
                    continue
            if held.get("token") != token:  # another writer's PUT won on a server that ignored the condition
                return "another writer"
            with self.guard:
                self.held[unit] = body
            return None
        return "another writer"

    def _renew(self) -> None:
        while not self.stopped.wait(LEASE_SECONDS / 4):
            for unit in list(self.held):
                with self.guard:  # (so that a lease being released is not written again)
                    if unit not in self.held:
                        continue
                    path = self._path(unit)
                    try:
                        if path.read_bytes() == self.held[unit]:
                            path.call("pipe_file", path.key, self.held[unit])
                            continue
                    except FileNotFoundError:
                        pass
                    except (OSError, StoreError):  # the store is down: try again at the next beat (4 per life)
                        continue
                    self.lost.add(unit)

    def confirm(self, unit: int) -> None:
        """Before sealing: the unit is still this process's (a writer stalled past its lease lost it)."""
        if unit in self.lost:
            raise StoreError(f"unit {unit}: another writer took over its lease while this one stalled for more "
                             f"than {LEASE_SECONDS:g} s; rerun to resume (raise VJEPA_LEASE_SECONDS)")

    def release(self, unit: int) -> None:
        with self.guard:
            held = self.held.pop(unit, None)
            if held is None:
                return
            path = self._path(unit)
            if isinstance(held, int):
                path.unlink(missing_ok=True)  # (whoever locks it next checks the seal again first)
                os.close(held)
            elif unit not in self.lost:
                path.call("rm", path.key)

    def close(self) -> None:
        """Release every unit still held (after a failure too, which must stay the error reported)."""
        self.stopped.set()
        for unit in list(self.held):
            try:
                self.release(unit)
            except (OSError, StoreError):  # an unreachable object store: the lease goes stale by itself
                pass
