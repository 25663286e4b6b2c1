"""Faults of shared clusters: full disks and duplicate writers (preemption: test_train, test_extract_job)."""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from store import verify
from store.cache import ChunkCache
from store.format import unsealed_units
from tests.conftest import ROOT, assert_one_error_line, extract_args
from tests.fake_store import tiny_store


def on_small_disk(mount: Path, kib: int, *args) -> subprocess.CompletedProcess:
    """`cli.py ARGS` with a tmpfs of `kib` KiB mounted at `mount`, in a private mount namespace (`unshare`, no root
    needed). The tmpfs ends with the namespace, so what was written there is copied to `mount`.copy first."""
    script = f'mount -t tmpfs -o size={kib}k tmpfs "$0" || exit 99; "$@"; rc=$?; cp -a "$0" "$0.copy"; exit $rc'
    mount.mkdir(parents=True)
    return subprocess.run(["unshare", "-rm", "sh", "-c", script, str(mount), sys.executable, str(ROOT / "cli.py"),
                           *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_a_full_disk_is_one_line_and_leaves_no_partial_shard_or_checkpoint(demo_corpus, tmp_path):
    if subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode:
        pytest.skip("no unprivileged mount namespaces here (unshare -rm) to mount a small tmpfs")
    disk = tmp_path / "disk"
    r = on_small_disk(disk, 150, *extract_args(demo_corpus, disk / "store", "--workers", 0))
    assert_one_error_line(r.returncode, r.stderr, f"{disk}/store/shards/")
    assert "the disk is full" in r.stderr
    copy = tmp_path / "disk.copy" / "store"
    assert unsealed_units(copy) == []  # the unit that did not fit is removed, every sealed one verifies
    assert all(p.endswith("not written yet") for p in verify(copy)), verify(copy)

    # a checkpoint is ~870 KiB: the first fits, the second does not, and the first stays latest.pt
    disk = tmp_path / "run-disk"
    r = on_small_disk(disk, 1400, "train", "--store", tiny_store(tmp_path / "store"), "--out", disk / "run",
                      "--preset", "ac_test", "--frames", 4, "--steps", 4, "--batch-size", 2, "--ckpt-every", 2,
                      "--val-every", 0, "--workers", 0)
    assert_one_error_line(r.returncode, r.stderr, f"{disk}/run/step_00000004.pt: the disk is full")
    run = tmp_path / "run-disk.copy" / "run"
    assert sorted(p.name for p in run.glob("*.pt")) == ["latest.pt", "step_00000002.pt"]  # no temporary left
    assert torch.load(run / "latest.pt", weights_only=True)["step"] == 2


def test_a_cache_on_a_full_disk_warns_once_and_reads_through(tmp_path, monkeypatch, caplog):
    cache = ChunkCache(tmp_path / "cache", max_bytes=10_000)

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    for i in range(3):
        cache.put(f"{i:064x}", b"x" * 100)
    assert [r.getMessage() for r in caplog.records] == [
        f"--cache {tmp_path / 'cache'}: cannot write to it (No space left on device); reading through without caching"]
    assert cache.get(f"{0:064x}") is None and not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
