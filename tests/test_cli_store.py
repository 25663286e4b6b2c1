"""`python cli.py store ...` on a small real store, including bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from store.format import shard_dir
from tests.conftest import cli_main, cli_ok
from tests.fake_store import (
    DIM,
    PER_UNIT,
    TOKENS,
    UNITS,
    complete_store,
    episode_data,
    is_skipped,
    make_store,
    write_unit,
)


def cli(*args) -> subprocess.CompletedProcess:
    """`python cli.py ARGS`, run in this process (4-5 s less each than starting Python and torch again)."""
    code, out, err = cli_main(*args)
    return subprocess.CompletedProcess(args, code or 0, out, err)


def table_rows(text: str) -> list[list[str]]:
    """The cells of the body rows of the tables in a command's output (a wrapped cell continues on a row
    whose first cell is empty)."""
    return [[c.strip() for c in line.strip()[1:-1].split("│")] for line in text.splitlines() if line.startswith("│")]


def kib(n: int) -> str:
    return f"{n / 1024:.1f} KiB"


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def stored_features(episode_id: int) -> torch.Tensor:
    """What the bf16 store holds of an episode's features, from the data it was written from."""
    return episode_data(episode_id)[0].to(torch.bfloat16).double()


def ok_ids(ids) -> list[int]:
    return [e for e in ids if not is_skipped(e)]


def frames_of(ids) -> int:
    return sum(len(episode_data(e)[1]) for e in ok_ids(ids))


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return complete_store(tmp_path_factory.mktemp("cli") / "store")


def test_ls(store):
    out = cli_ok("store", "ls", store)
    assert "(3 of 3 units present)" in " ".join(out.split())
    ids = [range(u * PER_UNIT, (u + 1) * PER_UNIT) for u in range(len(UNITS))]
    assert table_rows(out) == [[f"{u:05d}", "sealed", str(PER_UNIT), str(frames_of(ids[u])),
                                kib(folder_bytes(shard_dir(store, u))), "bf16"] for u in range(len(UNITS))]


def test_info(store):
    rows = {row[0]: row[1] for row in table_rows(cli_ok("store", "info", store)) if row[0]}
    frames = frames_of(range(15))
    assert frames == 104
    assert {k: rows[k] for k in ("encoder", "num_units", "feature_dim", "grid", "fps", "codec", "actions")} == {
        "encoder": "vjepa2-vit", "num_units": "3", "feature_dim": str(DIM), "grid": "[4, 4]", "fps": "4.0",
        "codec": "bf16", "actions": "pose-delta"}
    assert {k: rows[k] for k in ("units sealed", "episodes ok", "episodes skipped", "frames", "hours", "size")} == {
        "units sealed": "3/3", "episodes ok": "12", "episodes skipped": "3", "frames": str(frames),
        "hours": f"{frames / 4.0 / 3600:.3f}", "size": kib(folder_bytes(store))}


def test_a_path_with_brackets_prints_as_it_is(store, tmp_path):
    """rich reads "[word]" as a style tag: a store's path (and a dataset's strings) must print unchanged."""
    odd = Path(shutil.copytree(store, tmp_path / "[run]" / "store"))
    assert "[run]" in cli_ok("store", "info", odd)
    assert f"OK {odd}: every unit sealed" in cli_ok("store", "verify", odd)


def test_show_and_png(store, tmp_path):
    png = tmp_path / "ep.png"
    out = cli_ok("store", "show", store, 2, "--png", png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"wrote {png}" in out
    bare = tmp_path / "picture"  # no suffix: written where it was said to be
    assert f"wrote {bare}" in cli_ok("store", "show", store, 2, "--png", bare)
    assert bare.read_bytes()[:4] == b"\x89PNG" and not bare.with_suffix(".png").exists()
    lines = [line.strip() for line in out.splitlines()]
    features, state = stored_features(2), episode_data(2)[1]
    n = len(state)
    assert lines[0] == "episode 2  status=ok"
    assert {"source: episode_2", "task: task 2", f"num_frames: {n}", "unit: 0"} <= set(lines)
    for name, values in (("first", state[0]), ("last", state[-1]), ("min", state.min(0)), ("max", state.max(0))):
        assert f"state {name:5s} [{', '.join(f'{x:.3f}' for x in values)}]" in lines
    path = np.linalg.norm(np.diff(state[:, :3], axis=0), axis=1).sum()  # pose-delta: of the xyz
    assert f"path length: {path:.4f}" in lines
    table = np.array([[float(c) for c in row] for row in table_rows(out)])
    assert table.shape == (n, 7)
    assert np.array_equal(table[:, :3], np.stack([np.arange(n), np.arange(n), np.round(np.arange(n) / 4.0, 2)], 1))
    f = features.numpy()
    expected = np.stack([f.mean((1, 2)), f.reshape(n, -1).std(1, ddof=1), np.linalg.norm(f, axis=2).mean(1),
                         np.r_[0, np.abs(np.diff(f, axis=0)).mean((1, 2))]], 1)
    assert np.allclose(table[:, 3:], expected, atol=6e-4)  # printed to 4 (token norm: 3) decimals

    out = cli_ok("store", "show", store, 3)  # a skipped episode: its row, nothing else
    lines = [line.strip() for line in out.splitlines()]
    assert lines[0] == "episode 3  status=skipped corrupt video" and "num_frames: 0" in lines
    assert not table_rows(out) and "path length" not in out


def test_stats(store):
    rows = dict(table_rows(cli_ok("store", "stats", store)))
    f = torch.cat([stored_features(e) for e in ok_ids(range(15))])  # [frames, tokens, D]
    norms = f.norm(dim=-1)
    dim_means = f.mean((0, 1))
    counts = {"values": f.numel(), "nan": 0, "inf": 0, "state_nan": 0, "state_inf": 0}
    assert f.numel() == 104 * TOKENS * DIM and {k: int(rows[k]) for k in counts} == counts
    expected = {"mean": f.mean(), "std": f.std(unbiased=False), "token_norm_mean": norms.mean(),
                "token_norm_min": norms.min(), "token_norm_max": norms.max(), "dim_mean_min": dim_means.min(),
                "dim_mean_max": dim_means.max()}
    assert set(rows) == set(counts) | set(expected)
    for k, v in expected.items():  # printed to 5 significant digits
        assert float(rows[k]) == pytest.approx(float(v), rel=1e-4), k


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


def test_long_jobs_show_progress_in_a_log(store, monkeypatch):
    """Where stderr is a log, not a terminal, a counted job writes its count and the time left (here after
    every shard: LOG_EVERY 0), and its summary goes to stdout as before."""
    import cli
    from tests.conftest import cli_main

    monkeypatch.setattr(cli, "LOG_EVERY", 0)
    code, out, err = cli_main("store", "verify", store)
    lines = [line for line in err.splitlines() if line.startswith("verifying shards: ")]
    assert code in (None, 0) and "ok" in out.lower()
    assert [line.split(" after ")[0] for line in lines] == [f"verifying shards: {k}/3" for k in (1, 2, 3)]
    assert all(line.endswith(" left") and "about 0:00" in line for line in lines)
