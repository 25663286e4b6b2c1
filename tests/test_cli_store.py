"""`python cli.py store ...` on a small real store, including bad input."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
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
    from store.inspect import shard_rows

    assert cli("store", "ls", store).returncode == 0
    rows = shard_rows(store)
    assert [(r.unit, r.sealed, r.episodes, r.codec) for r in rows] == [(u, True, 5, "bf16") for u in range(3)]
    frames = sum(6 + e % 7 for e in range(5) if e != 3)  # unit 0: episodes 0-4, 3 skipped
    assert rows[0].frames == frames and all(r.bytes > 0 for r in rows)


def test_info(store):
    from store import open_store
    from store.inspect import summary

    assert cli("store", "info", store).returncode == 0
    s = summary(open_store(store))
    assert s.attrs["encoder"] == "vjepa2-vit" and (s.units_sealed, s.num_units) == (3, 3)
    assert s.frames == sum(6 + e % 7 for e in range(15) if e % 5 != 3)
    assert (s.episodes_ok, s.episodes_skipped) == (12, 3)
    assert s.hours == pytest.approx(s.frames / 4 / 3600)


def test_show_and_png(store, tmp_path):
    from store import open_store
    from store.inspect import episode_summary

    png = tmp_path / "ep.png"
    assert cli("store", "show", store, 2, "--png", png).returncode == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    s = episode_summary(open_store(store), 2)
    assert s.row["task"] == "task 2" and len(s.frames["mean"]) == 6 + 2 % 7
    assert s.frames["delta_l1"][0] == 0 and all(d > 0 for d in s.frames["delta_l1"][1:])
    assert cli("store", "show", store, 3).returncode == 0  # a skipped episode
    s = episode_summary(open_store(store), 3)
    assert s.row["status"] == "skipped" and s.row["reason"] == "corrupt video" and not s.frames


def test_stats(store):
    from store import open_store
    from store.inspect import feature_stats

    assert cli("store", "stats", store).returncode == 0
    stats = feature_stats(open_store(store))
    assert stats["nan"] == 0 and stats["inf"] == 0 and stats["token_norm_mean"] > 0
    assert abs(stats["mean"]) < 0.05 and stats["std"] == pytest.approx(1.0, abs=0.05)  # randn features


def test_verify_ok_then_bad(tmp_path):
    root = complete_store(tmp_path / "s", merge=False)
    assert cli("store", "verify", root).returncode == 0
    chunk = shard_dir(root, 2) / "state" / "c" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[5] ^= 0xFF
    chunk.write_bytes(bytes(data))
    r = cli("store", "verify", root)
    assert r.returncode == 1
    assert "shard 00002: checksum mismatch in state/c/0/0" in r.stdout  # the problem, named


def test_merge(tmp_path):
    root = tmp_path / "s"
    make_store(root)
    write_unit(root, 0)
    r = cli("store", "merge", root)
    assert r.returncode == 2 and "2 of 3 units not sealed yet (1, 2)" in r.stderr
    write_unit(root, 1)
    write_unit(root, 2)
    assert cli("store", "merge", root).returncode == 0
    assert pq.read_table(root / "manifest.parquet").num_rows == 15


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
