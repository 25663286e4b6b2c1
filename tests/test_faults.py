"""Faults of shared clusters: full disks and duplicate writers (preemption: test_train, test_extract_job)."""

from __future__ import annotations

import errno
import json
import logging
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from extract.config import ExtractConfig
from extract.job import run_extract
from store import verify
from store.cache import ChunkCache
from store.format import SEAL_FILE, shard_digests, shard_files, unsealed_units
from tests.conftest import JOB_CONFIG, ROOT, assert_one_error_line, assert_same_store, extract_args
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
        cache.put("blake3", f"{i:064x}", b"x" * 100)
    assert [r.getMessage() for r in caplog.records] == [
        f"--cache {tmp_path / 'cache'}: cannot write to it (No space left on device); reading through without caching"]
    assert cache.get("blake3", f"{0:064x}") is None and not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]


def test_a_rerun_repairs_what_two_writers_left_and_skips_a_unit_another_process_holds(
        reference, demo_corpus, tmp_path, caplog):
    """The state two concurrent writers left before units were locked: a sealed shard whose arrays were recreated
    empty by the second writer before the first sealed (its seal matches its files), a sealed shard whose
    features the second writer removed, and an unsealed partial one. A rerun redoes those and only those, except
    the one another live process holds, which it leaves with one line; once that process is killed, the next
    rerun takes the unit over."""
    out = tmp_path / "store"
    shutil.copytree(reference, out)
    (out / "manifest.parquet").unlink()
    shards = out / "shards"
    meta = shards / "00001" / "features" / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["shape"][0] = 0
    meta.write_text(json.dumps(doc))
    seal = json.loads((shards / "00001" / SEAL_FILE).read_text())
    files, _ = shard_digests(shard_files(shards / "00001"), lambda rel: (shards / "00001" / rel).read_bytes(),
                             seal["digest"], None)
    (shards / "00001" / SEAL_FILE).write_text(json.dumps({**seal, "files": files}))
    shutil.rmtree(shards / "00002" / "features")
    (shards / "00003" / SEAL_FILE).unlink()
    shutil.rmtree(shards / "00003" / "features")
    good = {p: p.stat().st_mtime_ns for p in (shards / "00000").rglob("*")}
    assert len(verify(out)) >= 3

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[2]); "
                               "from store.lease import UnitLocks; assert UnitLocks(sys.argv[1]).take(3) is None; "
                               "print('READY', flush=True); time.sleep(300)", str(out), str(ROOT)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "READY"
        with caplog.at_level(logging.INFO, logger="extract"):
            summary = run_extract(ExtractConfig(corpus=demo_corpus, out=out, workers=0, **JOB_CONFIG))
        assert (summary.units, summary.units_skipped, summary.units_held, summary.merged) == (2, 1, 1, False)
        notes = [r.getMessage() for r in caplog.records]
        assert f"unit 3: {socket.gethostname()} pid {holder.pid} is writing it; skipped here" in notes, notes
        assert any(n.startswith("shard 00001: array features is") for n in notes), notes
    finally:
        holder.kill()
        holder.wait()
    summary = run_extract(ExtractConfig(corpus=demo_corpus, out=out, workers=0, **JOB_CONFIG))
    assert (summary.units, summary.units_skipped, summary.merged) == (1, 3, True)
    assert verify(out) == [] and not list(shards.glob("*.lock"))
    assert_same_store(out, reference)
    assert good == {p: p.stat().st_mtime_ns for p in (shards / "00000").rglob("*")}
