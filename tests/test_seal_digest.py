"""Seal digests: xxh3-128 seals, stores sealed with BLAKE3 or SHA-256 (format 2) still read, `store migrate`, the
cache's keys."""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path
from unittest import mock

import pytest
import torch

from store import ChunkCache, open_store, sealed_units, verify, writer
from common.errors import StoreError
from store.digest import SEAL_DIGEST, digest_bytes, digest_many
from store.format import SEAL_FILE, feature_chunk, read_root_attrs, read_seal, shard_dir
from tests.conftest import ROOT, assert_one_error_line, cli_main
from tests.fake_store import tiny_store
from train.config import TrainConfig
from train.loop import run_train

FORMAT2 = ROOT / "tests" / "data" / "format2-store"  # written by tests/fake_store.py's tiny_store before format 3


@pytest.fixture
def format2(tmp_path) -> Path:
    return Path(shutil.copytree(FORMAT2, tmp_path / "format2"))


def seals(root: Path) -> dict[int, dict]:
    return {u: json.loads((shard_dir(root, u) / SEAL_FILE).read_text()) for u in sealed_units(root)}


def windows(root: Path) -> list[torch.Tensor]:
    store = open_store(root)
    return [store.read_window(e, 0, store.num_frames(e))[0] for e in store.ok_episodes]


def test_new_stores_are_sealed_with_xxh3_and_a_flipped_byte_is_caught(tmp_path):
    root = tiny_store(tmp_path / "s", episodes=4, frames=8)
    assert read_root_attrs(root)["format_version"] == 3 and SEAL_DIGEST == "xxh3-128"
    assert all(s["digest"] == "xxh3-128" and len(s["files"]["features/c/1/0/0"]) == 32 for s in seals(root).values())
    assert verify(root) == []
    chunk = shard_dir(root, 0) / "features/c/1/0/0"
    data = bytearray(chunk.read_bytes())
    data[5] ^= 0x01
    chunk.write_bytes(bytes(data))
    assert verify(root) == ["shard 00000: checksum mismatch in features/c/1/0/0"]
    with pytest.raises(Exception, match="features/c/1/0/0 does not match its checksum"):
        windows(root)


def test_a_format2_store_opens_verifies_and_trains(format2, tmp_path):
    assert read_root_attrs(format2)["format_version"] == 2 and all("digest" not in s for s in seals(format2).values())
    assert verify(format2) == [] and len(windows(format2)) == 6
    # its rows are what tiny_store writes today from the same seeds: features and states, bit for bit
    now, then = open_store(tiny_store(tmp_path / "now", episodes=6, frames=8, per_unit=3)), open_store(format2)
    assert now.ok_episodes == then.ok_episodes
    for e in now.ok_episodes:
        for a, b in zip(now.read_window(e, 0, 8)[:2], then.read_window(e, 0, 8)[:2]):
            assert torch.equal(a, b), e
    run_train(TrainConfig(store=format2, out=tmp_path / "run", preset="ac_test", frames=4, steps=2, batch_size=2,
                          workers=0, val_every=0))
    assert (tmp_path / "run" / "latest.pt").exists()


def test_migrate_reseals_in_place_and_a_killed_run_is_finished_by_the_next(format2):
    before = windows(format2)
    original = seals(format2)
    real = writer.write_seal

    def killed_after_one(directory, seal):
        if directory.name != "00000":
            raise KeyboardInterrupt  # the process dies before the second seal is replaced
        real(directory, seal)

    with mock.patch("store.writer.write_seal", killed_after_one):
        assert cli_main("store", "migrate", format2)[0] == 130
    stale = shard_dir(format2, 1) / f".{SEAL_FILE}.tmp-{socket.gethostname()}-999999999"  # a torn write's leftover
    stale.write_text("{")
    half = seals(format2)
    assert half[0]["digest"] == "xxh3-128" and "digest" not in half[1]  # mixed, yet a valid format-3 store:
    assert read_root_attrs(format2)["format_version"] == 3 and verify(format2) == []  # older code refuses it
    code, out, err = cli_main("store", "migrate", format2)
    assert code == 0 and "1 shard(s) resealed with xxh3-128" in out, (out, err)
    after = seals(format2)
    assert all(s["digest"] == "xxh3-128" for s in after.values()) and not stale.exists()
    for u, seal in after.items():  # the same files, each under its new digest
        assert seal["files"].keys() == original[u]["files"].keys()
        assert not set(seal["files"].values()) & set(original[u]["files"].values())
    assert verify(format2) == [] and all(torch.equal(a, b) for a, b in zip(before, windows(format2)))
    code, out, _ = cli_main("store", "migrate", format2)
    assert code == 0 and "0 shard(s) resealed" in out
    # BLAKE3 seals (earlier format-3 code's, or `--digest blake3` for tamper-evidence) read, verify and migrate back
    code, out, _ = cli_main("store", "migrate", format2, "--digest", "blake3")
    assert code == 0 and "2 shard(s) resealed with blake3" in out
    assert all(s["digest"] == "blake3" and len(s["files"]["features/c/0/0/0"]) == 64 for s in seals(format2).values())
    assert verify(format2) == [] and all(torch.equal(a, b) for a, b in zip(before, windows(format2)))
    code, out, _ = cli_main("store", "migrate", format2)
    assert code == 0 and "2 shard(s) resealed with xxh3-128" in out and seals(format2) == after
    code, _, err = cli_main("store", "migrate", format2, "--digest", "md5")
    assert_one_error_line(code, err, "--digest 'md5' is not one of: xxh3-128, blake3, sha256")


def test_migrate_refuses_damage_instead_of_sealing_it(format2):
    chunk = shard_dir(format2, 1) / "features/c/0/0/0"
    chunk.write_bytes(chunk.read_bytes()[:-1] + b"\0")
    code, _, err = cli_main("store", "migrate", format2)
    assert_one_error_line(code, err, "features/c/0/0/0: does not match its recorded checksum")
    assert "digest" not in seals(format2)[1]  # that shard's seal is left as it was
    code, _, err = cli_main("store", "migrate", format2.parent / "no-store")
    assert_one_error_line(code, err, "no-store: no such file or directory")


def test_a_seal_naming_an_unknown_digest_is_one_line(tmp_path):
    root = tiny_store(tmp_path / "s", episodes=4, frames=8, per_unit=2)
    path = shard_dir(root, 1) / SEAL_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), "digest": "md5"}))
    for command in (["store", "ls", root], ["store", "show", root, 3]):
        code, _, err = cli_main(*command)
        assert_one_error_line(code, err, "shard 00001: its seal names an unknown digest 'md5'")
    assert verify(root) == ["shard 00001: its seal names an unknown digest 'md5' (this code knows xxh3-128, "
                            "blake3, sha256); upgrade the package"]


@pytest.mark.parametrize("algorithm", ["sha256", "xxh3-128"])
def test_cache_keys_follow_the_seal_digest(algorithm, format2, tmp_path):
    root = format2 if algorithm == "sha256" else tiny_store(tmp_path / "s", episodes=6, frames=8, per_unit=3)
    store = open_store(root, cache=ChunkCache(tmp_path / "cache", 10**8))
    store.read_window(store.ok_episodes[0], 0, 4)
    names = {p.name for p in (tmp_path / "cache").rglob("*") if p.is_file()}
    digests = {f"{algorithm}-{d}" for d in read_seal(root, 0)["files"].values()}
    assert names and names <= digests


def test_a_window_reads_and_checks_only_its_rows_and_migrate_adds_row_digests_to_older_seals(tmp_path):
    root = tiny_store(tmp_path / "s", episodes=4, frames=8, per_unit=2)
    written = seals(root)
    assert all(len(s["frame_digests"]) == s["rows"] == 16 for s in written.values())
    expect = windows(root)
    store = open_store(root)
    assert store.episodes.to_pylist()[0]["unit"] == 0 and store.num_frames(0) == 8  # rows 0..7 of shard 0
    chunk = shard_dir(root, 0) / feature_chunk(1)  # its rows 4..7
    data = bytearray(chunk.read_bytes())
    data[3 * len(data) // 4 + 5] ^= 0x01  # in row 7
    chunk.write_bytes(bytes(data))
    assert torch.equal(open_store(root).read_window(0, 4, 3)[0], expect[0][4:7])  # rows 4..6: intact, read
    with pytest.raises(StoreError, match=f"{feature_chunk(1)} does not match its checksum"):
        open_store(root).read_window(0, 5, 3)
    assert verify(root) == [f"shard 00000: checksum mismatch in {feature_chunk(1)}"]
    data[3 * len(data) // 4 + 5] ^= 0x01
    chunk.write_bytes(bytes(data))
    # a seal whose row digests do not describe its rows is named by verify
    seal = {**written[1], "frame_digests": written[1]["frame_digests"][::-1]}
    writer.write_seal(shard_dir(root, 1), seal)
    assert verify(root) == ["shard 00001: frame_digests differ from the feature rows (row 0 first)"]
    # seals from before row digests: windows read whole chunks; migrate adds the writer's row digests
    for u, s in written.items():
        writer.write_seal(shard_dir(root, u), {k: v for k, v in s.items() if k != "frame_digests"})
    assert all(torch.equal(a, b) for a, b in zip(windows(root), expect, strict=True))
    code, out, err = cli_main("store", "migrate", root)
    assert code == 0 and "2 shard(s) resealed" in out, (out, err)
    assert seals(root) == written and verify(root) == []


def test_hashing_threads_work_in_a_process_forked_after_they_started():
    """`store verify` hashes on a pool of threads; a forked child (a DataLoader worker) has none of them, so it
    must start its own instead of queueing work for threads that exist only in its parent (it would wait forever)."""
    rows = [bytes([i]) * 5000 for i in range(6)]
    want = [digest_bytes(r, SEAL_DIGEST) for r in rows]
    assert digest_many(rows, SEAL_DIGEST) == want  # the parent's threads exist now
    pid = os.fork()
    if pid == 0:
        os._exit(0 if digest_many(rows, SEAL_DIGEST) == want else 1)
    deadline = time.monotonic() + 60
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    assert done[0] == pid and os.waitstatus_to_exitcode(done[1]) == 0, "the forked child hung or hashed wrong"
