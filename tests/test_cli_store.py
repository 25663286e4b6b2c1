"""`python cli.py store ...` on a small real store, including bad input."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from store.format import shard_dir
from tests.conftest import run_cli
from tests.fake_store import complete_store, make_store, write_unit



def cli(*args) -> subprocess.CompletedProcess:
    return run_cli(*args, check=False)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return complete_store(tmp_path_factory.mktemp("cli") / "store")


def test_ls(store):
    r = cli("store", "ls", store)
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stdout.splitlines() if "sealed" in line]
    assert len(lines) == 3 and all("bf16" in line for line in lines)
    frames = sum(6 + e % 7 for e in range(5) if e != 3)  # unit 0: episodes 0-4, 3 skipped
    assert "00002" in r.stdout and " 5 " in lines[0] and f" {frames} " in lines[0]


def test_info(store):
    r = cli("store", "info", store)
    assert r.returncode == 0, r.stderr
    assert "vjepa2-vit" in r.stdout and "3/3" in r.stdout
    frames = sum(6 + e % 7 for e in range(15) if e % 5 != 3)
    assert f"│ {frames} " in r.stdout


def test_show_and_png(store, tmp_path):
    png = tmp_path / "ep.png"
    r = cli("store", "show", store, 2, "--png", png)
    assert r.returncode == 0, r.stderr
    assert "task 2" in r.stdout and "per-frame features" in r.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = cli("store", "show", store, 3)  # a skipped episode
    assert r.returncode == 0 and "skipped" in r.stdout and "corrupt video" in r.stdout


def test_stats(store):
    r = cli("store", "stats", store)
    assert r.returncode == 0, r.stderr
    assert "nan" in r.stdout and "token_norm_mean" in r.stdout


def test_verify_ok_then_bad(tmp_path):
    root = complete_store(tmp_path / "s", merge=False)
    r = cli("store", "verify", root)
    assert r.returncode == 0 and "OK" in r.stdout
    chunk = shard_dir(root, 2) / "state" / "c" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[5] ^= 0xFF
    chunk.write_bytes(bytes(data))
    r = cli("store", "verify", root)
    assert r.returncode == 1
    assert "shard 00002: checksum mismatch in state/c/0/0" in r.stdout


def test_merge(tmp_path):
    root = tmp_path / "s"
    make_store(root)
    write_unit(root, 0)
    r = cli("store", "merge", root)
    assert r.returncode == 2 and "2 of 3 units not sealed yet (1, 2)" in r.stderr
    write_unit(root, 1)
    write_unit(root, 2)
    r = cli("store", "merge", root)
    assert r.returncode == 0 and "15 episodes" in r.stdout
    assert (root / "manifest.parquet").exists()


@pytest.mark.parametrize("cmd", ["ls", "verify"])
def test_bad_paths_give_one_line(cmd, tmp_path):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    not_store = tmp_path / "plain"
    not_store.mkdir()
    newer = tmp_path / "newer"
    newer.mkdir()
    (newer / "zarr.json").write_text(json.dumps(
        {"zarr_format": 3, "node_type": "group", "attributes": {"format_version": 99}}))
    cases = {
        tmp_path / "missing": "no such file or directory",
        a_file: "is a file, not a store directory",
        not_store: "not a feature store",
        newer: "newer than this code supports",
    }
    for path, message in cases.items():
        r = cli("store", cmd, path)
        assert r.returncode == 2, (path, r.stdout, r.stderr)
        assert message in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("cmd", ["info", "stats", "merge"])
def test_missing_store(cmd, tmp_path):
    r = cli("store", cmd, tmp_path / "missing")
    assert r.returncode == 2 and r.stderr.strip() == f"error: {tmp_path / 'missing'}: no such file or directory"


def test_show_bad_episode(store):
    r = cli("store", "show", store, 99)
    assert r.returncode == 2 and "episode 99 is not in a sealed shard" in r.stderr
    assert "Traceback" not in r.stderr
