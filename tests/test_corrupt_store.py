"""A damaged store is named by `store verify` (exit 1) and refused by `train` in one line; nothing trains on garbage."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from store import verify
from store.format import shard_dir
from tests.conftest import assert_one_error_line, cli_main, run_cli
from tests.fake_store import tiny_store

CHUNK = "features/c/1/0/0"  # frames 4..7 of unit 1


def flip(path: Path, at: float) -> None:
    data = bytearray(path.read_bytes())
    i = min(int(len(data) * at), len(data) - 1)
    data[i] ^= 0x5A
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def edit_num_units(root: Path) -> None:
    meta = json.loads((root / "zarr.json").read_text())
    meta["attributes"]["num_units"] -= 1
    (root / "zarr.json").write_text(json.dumps(meta))


# (name, damage, what verify says, what train says)
DAMAGE = [
    ("deleted chunk", lambda r: (shard_dir(r, 1) / CHUNK).unlink(), f"shard 00001: missing file {CHUNK}",
     f"shard 00001: {CHUNK} is missing"),
    ("truncated chunk", lambda r: truncate(shard_dir(r, 1) / CHUNK), f"shard 00001: checksum mismatch in {CHUNK}",
     f"shard 00001: {CHUNK} does not match its checksum"),
    ("appended chunk byte", lambda r: (shard_dir(r, 1) / CHUNK).open("ab").write(b"\0"),
     f"shard 00001: checksum mismatch in {CHUNK}", f"shard 00001: {CHUNK} does not match its checksum"),
    ("flipped chunk byte", lambda r: flip(shard_dir(r, 1) / CHUNK, 0.5), f"shard 00001: checksum mismatch in {CHUNK}",
     f"shard 00001: {CHUNK} does not match its checksum"),
    *[(f"flipped manifest byte at {at:.0%}", lambda r, at=at: flip(r / "manifest.parquet", at),
       "manifest.parquet: checksum mismatch", "manifest.parquet: does not match its recorded checksum")
      for at in (0.0, 0.1, 0.3, 0.5, 0.8, 0.99)],
    ("deleted manifest", lambda r: (r / "manifest.parquet").unlink(), "manifest.parquet: missing although the store "
     "was merged", "manifest.parquet: missing although the store was merged"),
    ("deleted seal", lambda r: (shard_dir(r, 1) / "sealed.json").unlink(), "shard 00001: unsealed",
     "manifest.parquet: lists episodes of unit(s) [1] that are not sealed"),
    ("edited num_units", edit_num_units, "zarr.json says 1 units but plan.parquet has 2",
     "zarr.json says 1 units but plan.parquet has 2"),
    *[(f"flipped plan byte at {at:.0%}", lambda r, at=at: flip(r / "plan.parquet", at),
       "plan.parquet: does not match its recorded checksum", "plan.parquet: does not match its recorded checksum")
      for at in (0.2, 0.6)],
]


def train_args(store: Path, out: Path) -> list:
    """One training step that reads every chunk of the `intact` store."""
    return ["train", "--store", store, "--out", out, "--preset", "ac_test", "--frames", 8, "--batch-size", 4,
            "--val-fraction", 0, "--steps", 2, "--val-every", 0]


@pytest.fixture(scope="module")
def intact(tmp_path_factory) -> Path:
    """2 units x 2 episodes of 8 frames: with 8-frame clips and batch 4, one training step reads every chunk."""
    root = tiny_store(tmp_path_factory.mktemp("corrupt") / "store", episodes=4, frames=8, per_unit=2)
    assert verify(root) == []
    return root


@pytest.mark.parametrize("name,damage,verify_says,train_says", DAMAGE, ids=[d[0] for d in DAMAGE])
def test_damage_is_named_and_refused(intact, tmp_path, name, damage, verify_says, train_says):
    root = tmp_path / "store"
    shutil.copytree(intact, root)
    damage(root)
    problems = verify(root)
    assert any(verify_says in p for p in problems), problems
    code, out, _ = cli_main("store", "verify", root)
    assert code == 1 and verify_says in out
    code, _, err = cli_main(*train_args(root, tmp_path / "run"), "--workers", 0)
    assert_one_error_line(code, err, train_says)
    assert not (tmp_path / "run" / "latest.pt").exists()


def test_damage_found_by_a_dataloader_worker_is_one_line_too(intact, tmp_path):
    root = tmp_path / "store"
    shutil.copytree(intact, root)
    flip(shard_dir(root, 1) / CHUNK, 0.5)
    r = run_cli(*train_args(root, tmp_path / "run"), "--workers", 1, check=False)  # torch wraps worker errors
    assert_one_error_line(r.returncode, r.stderr, f"shard 00001: {CHUNK} does not match its checksum")
    # stderr is a pipe here, as in a log: the error line is all, no progress bar left over from the failed run
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_unreadable_root_metadata(intact, tmp_path):
    root = tmp_path / "store"
    shutil.copytree(intact, root)
    (root / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {')
    for args in (["store", "verify", root], ["store", "show", root, 0]):
        code, _, err = cli_main(*args)
        assert_one_error_line(code, err, "zarr.json is unreadable or damaged")


def test_a_chunk_removed_while_verify_reads_the_shard_is_named(intact, tmp_path, monkeypatch):
    """A relaunched writer may clear a shard between verify's listing of it and its reads: a problem, no raise."""
    import store.integrity

    root = tmp_path / "store"
    shutil.copytree(intact, root)
    listed = store.integrity.shard_files

    def then_removed(d):
        files = listed(d)
        if d == shard_dir(root, 1):
            (d / CHUNK).unlink()
        return files

    monkeypatch.setattr(store.integrity, "shard_files", then_removed)
    assert verify(root) == [f"shard 00001: missing file {CHUNK}"]
