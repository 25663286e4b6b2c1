"""The feature store: codecs, concurrent writers, crash safety, corruption detection."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from common.errors import StoreError
from store import ShardWriter, codecs, merge_manifest, open_store, remove_unsealed, sealed_units, verify
from store.format import SEAL_FILE, shard_dir
from tests import fake_store
from tests.fake_store import UNITS, complete_store, episode_data, is_skipped, make_store, write_unit

FAKE = Path(fake_store.__file__)


def test_bf16_roundtrip_is_bit_exact():
    x = torch.randn(50, 16, 32).to(torch.bfloat16)
    x[0, 0, :4] = torch.tensor([0.0, -0.0, 65280.0, 1e-38], dtype=torch.bfloat16)
    stored, scales = codecs.encode(x, "bf16")
    assert stored.dtype == np.uint16 and scales is None
    y = codecs.decode(stored, None, "bf16")
    assert y.dtype == torch.bfloat16
    assert torch.equal(y.view(torch.int16), x.view(torch.int16))


def test_fp16_roundtrip_exact_for_fp16_input():
    x = (torch.randn(50, 16, 32) * 10).to(torch.float16)
    y = codecs.decode(*codecs.encode(x, "fp16"), "fp16")
    assert torch.equal(y.view(torch.int16), x.view(torch.int16))


def test_int8_error_bound():
    """|x - decoded| <= s/2 (quantisation) + |x| 2^-11 (decoding to float16), s <= max|x| / 127 * (1 + 2^-10)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 16, 64, generator=g) * torch.rand(200, 16, 1, generator=g) * 20
    x[0, 0] = 0.0  # an all-zero token
    x[0, 1, 0] = 1e-6  # a tiny one
    stored, scales = codecs.encode(x, "int8")
    assert stored.dtype == np.int8 and scales.dtype == np.float16 and scales.shape == (200, 16)
    s = torch.from_numpy(scales).float()
    amax = x.abs().amax(-1)
    # rounded up to float16: at most one float16 step (relative 2^-10, absolute 2^-24) above max/127
    assert torch.all(s * 127 >= amax) and torch.all(s <= amax / 127 * (1 + 2**-10) + 2**-24)
    y = codecs.decode(stored, scales, "int8").float()
    err = (y - x).abs()
    bound = s.unsqueeze(-1) / 2 + x.abs() * 2**-11 + 1e-7
    assert torch.all(err <= bound), float((err - bound).max())
    assert torch.all(y[0, 0] == 0)
    # and the bound is not vacuous: the error is a sizeable fraction of it somewhere
    assert float((err / bound).max()) > 0.5


@pytest.mark.parametrize("codec,compression", [("bf16", "none"), ("fp16", "zstd"), ("int8", "blosc-zstd")])
def test_write_read_roundtrip(tmp_path, codec, compression):
    root = complete_store(tmp_path / "s", codec, compression)
    store = open_store(root)
    assert store.complete and verify(root) == []
    assert store.episodes["episode_id"].to_pylist() == list(range(sum(len(u) for u in UNITS)))  # in id order
    for e in range(store.episodes.num_rows):
        row = store.episode(e)
        if is_skipped(e):
            assert row["status"] == "skipped" and row["reason"] == "corrupt video" and row["num_frames"] == 0
            continue
        f, s = episode_data(e)
        expect = codecs.decode(*codecs.encode(f, codec), codec)
        for start in range(len(f)):  # windows over every chunk of the episode, a shard's padded last one included
            assert torch.equal(store.read_window(e, start, len(f) - start)[0], expect[start:])
        out = torch.full_like(expect[1:5], 7)  # into a given tensor, as a DataLoader batch is read
        got_f, got_s, _ = store.read_window(e, 1, 4, out=out)
        assert got_f.data_ptr() == out.data_ptr() and torch.equal(out, expect[1:5])
        assert np.array_equal(got_s.numpy(), s[1:5])
        assert row["task"] == f"task {e}"
    with pytest.raises(StoreError, match="outside episode"):
        store.read_window(0, 4, 100)


def _read_after_fork(store) -> None:
    f, _, _ = store.read_window(1, 0, 3)
    assert torch.equal(f, episode_data(1)[0][:3].to(torch.bfloat16))


def test_store_reopens_after_fork(tmp_path):
    root = tmp_path / "s"
    make_store(root)
    write_unit(root, 0)
    store = open_store(root)
    store.read_window(0, 0, 2)  # opens arrays in the parent
    child = multiprocessing.get_context("fork").Process(target=_read_after_fork, args=(store,))
    child.start()  # must reopen and read correctly
    child.join(timeout=60)
    if child.exitcode is None:
        child.kill()
        child.join()
        pytest.fail("the forked reader hung (killed after 60 s)")
    assert child.exitcode == 0  # 1: it raised (its traceback is on stderr)


def test_two_writer_processes_at_once(tmp_path):
    root = tmp_path / "s"
    make_store(root)
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, str(FAKE), str(root), str(u), "--delay", "0.05", "--go", str(go)],
                              stdout=subprocess.PIPE, text=True) for u in (0, 2)]
    assert [p.stdout.readline().strip() for p in procs] == ["READY", "READY"]  # both have opened their shards
    go.touch()  # and now write at once
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    write_unit(root, 1)
    merge_manifest(root)
    assert verify(root) == []
    store = open_store(root)
    for e in store.ok_episodes:
        f, _ = episode_data(e)
        assert torch.equal(store.read_window(e, 0, len(f))[0], f.to(torch.bfloat16))


def test_sigkill_mid_shard_then_resume(tmp_path):
    root = tmp_path / "s"
    make_store(root)
    write_unit(root, 0)
    p = subprocess.Popen([sys.executable, str(FAKE), str(root), "1", "--hang-after", "3"],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "READY"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert shard_dir(root, 1).exists() and not (shard_dir(root, 1) / SEAL_FILE).exists()

    store = open_store(root)  # readers see only the sealed unit
    assert store.sealed == [0] and not store.complete
    assert sorted(store.episodes["episode_id"].to_pylist()) == list(range(5))
    with pytest.raises(StoreError):
        store.read_window(5, 0, 1)
    problems = verify(root)
    assert any("shard 00001: unsealed" in p for p in problems)
    with pytest.raises(StoreError, match="not sealed"):
        merge_manifest(root)

    assert remove_unsealed(root) == [1]
    assert not shard_dir(root, 1).exists()
    write_unit(root, 1)
    write_unit(root, 2)
    merge_manifest(root)
    assert verify(root) == []
    store = open_store(root)
    assert store.complete and store.episodes.num_rows == 15
    assert sealed_units(root) == [0, 1, 2]


def test_flipped_byte_is_caught(tmp_path):
    root = complete_store(tmp_path / "s")
    chunk = shard_dir(root, 1) / "features" / "c" / "1" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x01
    chunk.write_bytes(bytes(data))
    problems = verify(root)
    assert problems == ["shard 00001: checksum mismatch in features/c/1/0/0"]


def test_writer_refuses_out_of_plan_and_double_seal(tmp_path):
    root = tmp_path / "s"
    make_store(root)
    w = ShardWriter(root, 0)
    f, s = episode_data(1)
    from store import EpisodeInfo

    with pytest.raises(StoreError, match="expected 0"):
        w.add_episode(EpisodeInfo(1, "x"), f, s, np.arange(len(s)), np.arange(len(s)))
    with pytest.raises(StoreError, match="cannot seal"):
        w.seal()
    write_unit(root, 0)
    with pytest.raises(StoreError, match="already sealed"):
        ShardWriter(root, 0)


def test_existing_store_with_other_settings_is_refused(tmp_path):
    from store import create_store

    root = tmp_path / "s"
    make_store(root)
    with pytest.raises(StoreError, match="codec: 'bf16' != 'int8'"):
        create_store(root, fake_store.config("int8"), UNITS)
    with pytest.raises(StoreError, match="different plan"):
        create_store(root, fake_store.config(), UNITS[:2])
    assert create_store(root, fake_store.config(), UNITS) is False


def test_manifest_tampering_is_caught(tmp_path):
    import pyarrow.parquet as pq

    root = complete_store(tmp_path / "s")
    t = pq.read_table(root / "manifest.parquet")
    t = t.set_column(t.schema.get_field_index("num_frames"), "num_frames",
                     [[n + (1 if i == 2 else 0) for i, n in enumerate(t["num_frames"].to_pylist())]])
    pq.write_table(t, root / "manifest.parquet")
    assert verify(root) == [
        "manifest.parquet: checksum mismatch (damaged, or changed after `store merge`; the merge rewrites it)",
        "manifest.parquet: episode 2 differs from its shard's table"]


def test_seal_records_every_file(tmp_path):
    root = tmp_path / "s"
    make_store(root, "int8")
    write_unit(root, 0)
    folder = shard_dir(root, 0)
    seal = json.loads((folder / SEAL_FILE).read_text())
    on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} - {SEAL_FILE}
    assert set(seal["files"]) == on_disk  # listed here without the writer's and verify's own listing
    assert {"episodes.parquet", "zarr.json", "features/zarr.json", "scales/zarr.json", "state/c/0/0"} <= on_disk
    assert seal["rows"] == sum(len(episode_data(e)[1]) for e in range(5) if not is_skipped(e))


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_leftovers_of_killed_writers_are_cleaned(tmp_path):
    """A store creation, merge or checkpoint write killed mid-way leaves a temporary; the next run of the
    command removes it (and leaves alone the temporaries of writers still running)."""
    import socket

    from train.config import TrainConfig
    from train.loop import run_train

    host = socket.gethostname()
    half_made = tmp_path / f".s.tmp-{host}-{dead_pid()}"  # a store folder built beside its place
    (half_made / "shards").mkdir(parents=True)
    (half_made / "plan.parquet").write_bytes(b"half a plan")
    building = tmp_path / f".s.tmp-{host}-{os.getppid()}"
    building.mkdir()
    root = complete_store(tmp_path / "s", merge=False)
    assert not half_made.exists() and building.exists()

    dead = root / f".manifest.parquet.tmp-{host}-{dead_pid()}"
    live = root / f".manifest.parquet.tmp-{host}-{os.getppid()}"
    dead.write_bytes(b"half a manifest")
    live.write_bytes(b"another writer's")
    merge_manifest(root)
    assert not dead.exists() and live.exists()

    run = tmp_path / "run"
    run.mkdir()
    stale = run / f".step_00000002.pt.tmp-{host}-{dead_pid()}"
    stale.write_bytes(b"x" * 1000)
    run_train(TrainConfig(store=fake_store.tiny_store(tmp_path / "t", episodes=4), out=run, preset="ac_test",
                          frames=4, steps=1, batch_size=2, workers=0, val_every=0))
    assert not stale.exists() and (run / "latest.pt").exists()
    assert not list(run.glob(".*tmp*")) and not list(root.glob(".*tmp-*" + str(os.getpid())))
