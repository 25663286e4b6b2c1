"""Stores in an object store: a real S3-compatible server (moto in server mode) on 127.0.0.1.

The server runs in a thread of this test process, so it stops when the module's tests are done (or
with the process); it enforces credentials, so bad keys and missing permissions are real errors.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

from bench.proxy import S3Proxy
from extract.config import ExtractConfig
from extract.job import run_extract
from store import open_store, sealed_units
from store.cache import ChunkCache
from store.format import feature_chunk, read_seal, shard_dir
from store.location import list_files, where
from tests.conftest import (
    JOB_CONFIG,
    ROOT,
    assert_one_error_line,
    assert_same_store,
    cli_main,
    cli_ok,
    extract_args,
    run_cli,
)
from tests.fake_store import tiny_store
from tests.test_train import read_losses, small_predictor
from train.config import TrainConfig
from train.loop import run_train

BUCKET = "features"
ALLOW_ALL = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
TRAIN = ["--preset", "ac_test", "--steps", 6, "--batch-size", 2, "--frames", 4, "--val-every", 3, "--val-clips", 4,
         "--ckpt-every", 6, "--lr", 1e-3, "--device", "cpu"]


def _keys(iam, user: str, policy: dict | None) -> dict[str, str]:
    iam.create_user(UserName=user)
    if policy:
        iam.put_user_policy(UserName=user, PolicyName="s3", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    return {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}


@pytest.fixture(scope="module")
def s3():
    """The server's environment for clients: endpoint, region and the keys of a user allowed everything.

    Yields a dict with `env` (for subprocesses; also set in this process) and `denied` (keys of a user
    with no permissions)."""
    pytest.importorskip("s3fs", reason="the [s3] extra")
    from moto import settings
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ACCESS_KEY_ID": "setup", "AWS_SECRET_ACCESS_KEY": "setup", "AWS_EC2_METADATA_DISABLED": "true",
           "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_CONFIG_FILE": "/nonexistent"}
    no_auth = settings.INITIAL_NO_AUTH_ACTION_COUNT
    try:
        with mock.patch.dict(os.environ, env):
            import boto3

            boto3.client("s3").create_bucket(Bucket=BUCKET)
            iam = boto3.client("iam")
            allowed, denied = _keys(iam, "trainer", ALLOW_ALL), _keys(iam, "nobody", None)
            settings.INITIAL_NO_AUTH_ACTION_COUNT = 0  # from now on every request must be signed by a known user
            env.update(allowed)
            os.environ.update(allowed)
            yield {"env": {**os.environ}, "denied": denied}
    finally:
        settings.INITIAL_NO_AUTH_ACTION_COUNT = no_auth
        server.stop()


@contextmanager
def environment(values: dict, clear: bool = False):
    """This process's environment changed, with clients made anew (fsspec keeps one per process)."""
    from store.s3 import CountingS3FileSystem

    CountingS3FileSystem.clear_instance_cache()
    try:
        with mock.patch.dict(os.environ, values, clear=clear):
            yield
    finally:
        CountingS3FileSystem.clear_instance_cache()


def upload(folder: Path, url: str) -> str:
    """A local store copied object by object (as `aws s3 sync` would)."""
    remote, files = where(url), list_files(folder)
    remote.call("put", [str(folder / rel) for rel in files], [f"{remote.key}/{rel}" for rel in files])
    return url


@pytest.fixture(scope="module")
def s3_copy(s3, reference) -> str:
    """The reference store in the bucket (read only)."""
    return upload(reference, f"s3://{BUCKET}/copy")


@pytest.fixture(scope="module")
def s3_corpus(s3, demo_corpus) -> str:
    """The demo corpus (DROID raw) in the bucket, read where it lies by extract."""
    return upload(demo_corpus, f"s3://{BUCKET}/corpus")


def test_extract_with_two_ranks_from_s3_to_s3_rides_out_a_cut(s3, reference, s3_corpus):
    """Corpus and store in the bucket, two ranks, the connection to the object store cut for a second in the
    middle (at its 100th request): the retries ride it out, and the store is the local corpus's, bit for bit."""
    url = f"s3://{BUCKET}/two-ranks"
    torchrun = Path(sys.executable).parent / "torchrun"
    proxy = S3Proxy(s3["env"]["AWS_ENDPOINT_URL"])
    try:
        proxy.outage_after(100, 1.0)
        r = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", str(ROOT / "cli.py"),
                            *map(str, extract_args(s3_corpus, url, "--workers", 1))], cwd=ROOT, capture_output=True,
                           text=True, timeout=300, env={**s3["env"], "AWS_ENDPOINT_URL": proxy.url,
                                                        "VJEPA_S3_TIMEOUT": "5"})
    finally:
        proxy.close()
    assert r.returncode == 0 and proxy.requests > 150, r.stdout + r.stderr  # the cut came mid-run
    retried = [int(n) for n in re.findall(r"object-store requests retried\D*(\d+)", r.stdout)]
    assert len(retried) == 2 and sum(retried) > 0, r.stdout  # each rank's summary
    assert_same_store(url, reference)
    cli_ok("store", "verify", url)
    root = where(url)
    for u in sealed_units(root):  # each seal lists exactly its shard's other objects
        shard = root / "shards" / f"{u:05d}"
        assert set(json.loads((shard / "sealed.json").read_bytes())["files"]) == \
            set(list_files(shard)) - {"sealed.json"}


def test_sigkill_then_rerun_on_s3(s3, reference, s3_corpus):
    url = f"s3://{BUCKET}/killed"
    args = [sys.executable, str(ROOT / "cli.py"), *map(str, extract_args(s3_corpus, url, "--workers", 0,
                                                                          "--episodes-per-unit", 1))]
    p = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=s3["env"])
    root, deadline = where(url), time.time() + 120
    while time.time() < deadline and p.poll() is None:
        if (root / "shards").exists() and len(sealed_units(root)) >= 3:
            break
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    sealed = len(sealed_units(root))
    assert 3 <= sealed < 8, f"the run was not killed part-way ({sealed} of 8 units sealed)"
    summary = run_extract(ExtractConfig(corpus=s3_corpus, out=url, workers=0,
                                         **{**JOB_CONFIG, "episodes_per_unit": 1}))
    assert summary.units_skipped == sealed and summary.units == 8 - sealed
    store, ref = open_store(url), open_store(reference)
    assert store.complete and store.num_units == 8
    cols = ["episode_id", "num_frames", "source", "status", "note"]
    assert store.episodes.select(cols).equals(ref.episodes.select(cols))
    for e in ref.ok_episodes:
        a, b = store.read_episode(e), ref.read_episode(e)
        assert torch.equal(a["features"], b["features"])
        assert np.array_equal(a["state"], b["state"])

    # a flipped byte in a sealed shard's chunk: verify names it, reading it is refused
    chunk = next(rel for rel in list_files(root) if "/features/c/" in rel)
    data = bytearray((root / chunk).read_bytes())
    data[len(data) // 2] ^= 0x01
    root.call("pipe_file", f"{root.key}/{chunk}", bytes(data))
    code, out, _ = cli_main("store", "verify", url)
    unit = chunk.split("/")[1]
    assert code == 1 and f"shard {unit}: checksum mismatch in {chunk.split('/', 2)[2]}" in out


def test_every_corpus_format_reads_from_a_bucket_as_from_disk(s3, tmp_path):
    """LeRobot v2.1 and v3.0 (a shared AV1 file, read in ranges), WebDataset tars and RLDS shards in the bucket
    extract to the stores their local copies give, bit for bit; an object gone mid-run is a skip with a reason."""
    from tests import corpora
    from tests.test_rlds import DROID_STATE, rlds_dataset

    local = {"v21": (corpora.lerobot_v21(tmp_path / "v21", [9, 13]), "lerobot", {}),
             "v30": (corpora.lerobot_v30(tmp_path / "v30", [9, 13, 7]), "lerobot", {}),
             "wds": (corpora.webdataset_shard(tmp_path / "wds" / "a.tar", [{"key": "e0", "n": 9, "fps": 15},
                                                                          {"key": "e1", "n": 12, "fps": 15}]).parent,
                     "webdataset", {}),
             "rlds": (rlds_dataset(tmp_path / "rlds"), "rlds", dict(
                 video_key="observation.exterior_image_1_left", state_key=DROID_STATE, native_fps=15))}
    job, remote = dict(preset="vit_test", workers=0, device="cpu", episodes_per_unit=2), {}
    for name, (folder, fmt, extra) in local.items():
        url = upload(folder, f"s3://{BUCKET}/corpora/{name}")
        a = run_extract(ExtractConfig(corpus=folder, out=str(tmp_path / f"{name}-local"), format=fmt, **extra, **job))
        remote[name] = run_extract(ExtractConfig(corpus=url, out=str(tmp_path / f"{name}-s3"), format=fmt, **extra,
                                                 **job))
        assert a.episodes_ok == remote[name].episodes_ok > 0 and not remote[name].skipped, name
        assert_same_store(tmp_path / f"{name}-local", tmp_path / f"{name}-s3")
    # the shared v3 file is read in ranges by PyAV; the others are fetched whole and decoded by decord
    ranged = "decord: reads whole files only; this one is read in ranges"
    assert [why for _, why in remote["v30"].fallback] == [ranged] * 3
    assert remote["v21"].fallback == remote["wds"].fallback == []
    url = f"s3://{BUCKET}/corpora/v21"
    where(url).call("rm", f"{BUCKET}/corpora/v21/videos/chunk-000/{corpora.VIDEO_KEY}/episode_000001.mp4")
    summary = run_extract(ExtractConfig(corpus=url, out=str(tmp_path / "gone"), format="lerobot", **job))
    assert summary.episodes_ok == 1 and "missing video" in summary.skipped[0][1]
    code, _, err = cli_main("extract", "--corpus", "s3://no-such-bucket/corpus", "--out", tmp_path / "x")
    assert_one_error_line(code, err, "no-such-bucket")


def test_two_ranks_ride_out_a_cut_and_accumulate_over_ranks_as_one_big_batch(s3, tmp_path):
    """torchrun, 2 ranks x batch 2 x 2 accumulated micro-batches, from the bucket through the proxy: the ranks'
    weights stay identical and end where 1 rank x batch 8 does (the same clips per step: the sampler deals each
    rank every other clip; the same mean loss, the same AdamW steps). The same run with the connection cut for a
    second half-way rides the cut out on retries, counted: the same losses and weights."""
    store = tiny_store(tmp_path / "store")
    url = upload(store, f"s3://{BUCKET}/ddp")
    proxy = S3Proxy(s3["env"]["AWS_ENDPOINT_URL"])
    env = {**s3["env"], "AWS_ENDPOINT_URL": proxy.url, "VJEPA_S3_TIMEOUT": "5"}
    retried = {}
    try:
        for name in ("whole", "cut"):
            if name == "cut":
                proxy.outage_after(proxy.requests * 3 // 2, 1.0)
            r = subprocess.run([str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node", "2",
                                str(ROOT / "tests" / "ddp_train.py"), url, str(tmp_path / name), "2", "2"],
                               cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
            assert r.returncode == 0, r.stdout + r.stderr
            retried[name] = int(re.search(r"retried (\d+)", r.stdout)[1])
    finally:
        proxy.close()
    assert retried["whole"] == 0 < retried["cut"]
    w0, w1 = (torch.load(tmp_path / "whole" / f"rank{i}.pt", weights_only=True) for i in (0, 1))
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    cut = torch.load(tmp_path / "cut" / "rank0.pt", weights_only=True)
    assert all(torch.equal(w0[k], cut[k]) for k in w0)
    assert read_losses(tmp_path / "cut") == read_losses(tmp_path / "whole")
    one = run_train(TrainConfig(store=store, out=tmp_path / "one", preset="ac_test", steps=4, batch_size=8,
                                workers=0, val_every=0, ckpt_every=100, frames=4, device="cpu")).model.state_dict()
    assert max(float((w0[k] - one[k]).abs().max()) for k in one) < 1e-5
    init = small_predictor(dim=16, grid=(2, 2)).state_dict()  # and the runs did move the weights
    assert float((one["predictor_proj.weight"] - init["predictor_proj.weight"]).abs().max()) > 1e-3
    with open(tmp_path / "whole" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["1", "2", "3", "4"] and {r["global_batch"] for r in rows} == {"8"}


def _losses(run: Path) -> list[tuple[str, str]]:
    with open(run / "metrics.csv") as f:
        return [(r["step"], r["loss"]) for r in csv.DictReader(f)]


def test_training_from_s3_with_and_without_cache_equals_local(s3, reference, tmp_path):
    s3_copy = upload(reference, f"s3://{BUCKET}/to-train")
    local = tmp_path / "local"
    code, _, err = cli_main("train", "--store", reference, "--out", local, *TRAIN, "--workers", 1)
    assert code == 0, err
    runs = {}
    for name, extra in [("s3", ["--workers", 2]), ("cold", ["--workers", 2, "--cache", tmp_path / "cache"])]:
        runs[name] = tmp_path / name
        out = cli_ok("train", "--store", s3_copy, "--out", runs[name], *TRAIN, *extra)
        assert "object-store requests retried: 0 (all ranks and their DataLoader workers)" in out, out
    cached = list_files(tmp_path / "cache")
    assert cached, "the cache stayed empty"
    # eval reads the store at a URL like a local one; the run records the URL, never a secret
    reports = []
    for store in (reference, s3_copy):
        cli_ok("eval", "--checkpoint", local / "latest.pt", "--store", store, "--max-clips", 8,
               "--out", tmp_path / "eval")
        reports.append({k: v for k, v in json.loads((tmp_path / "eval" / "report.json").read_text()).items()
                        if k != "store"})
    assert reports[0] == reports[1]
    secret = s3["env"]["AWS_SECRET_ACCESS_KEY"].encode()
    written = [p for p in runs["cold"].rglob("*") if p.is_file()] + [tmp_path / "eval" / "report.json"]
    assert not any(secret in p.read_bytes() for p in written)
    # a damaged cached copy is dropped and fetched again
    root = where(s3_copy)
    seal = read_seal(root, 0)
    digest = seal["files"][feature_chunk(0)]
    copy = tmp_path / "cache" / digest[:2] / f"{seal['digest']}-{digest}"
    copy.write_bytes(b"!" + copy.read_bytes()[1:])
    first = next(r["episode_id"] for r in open_store(reference).episodes.to_pylist()
                 if r["unit"] == r["first_row"] == 0)
    got = open_store(s3_copy, cache=ChunkCache(tmp_path / "cache", 1 << 30)).read_window(first, 0, 2)[0]
    assert torch.equal(got, open_store(reference).read_window(first, 0, 2)[0])
    assert copy.read_bytes() == (shard_dir(reference, 0) / feature_chunk(0)).read_bytes()
    # every feature chunk object gone from the bucket: a warm run reads them from the cache alone
    gone = [rel for rel in list_files(root) if "/features/c/" in rel]
    root.call("rm", [f"{root.key}/{rel}" for rel in gone])
    runs["warm"] = tmp_path / "warm"
    cli_ok("train", "--store", s3_copy, "--out", runs["warm"], *TRAIN, "--workers", 2, "--cache",
           tmp_path / "cache")
    expect = _losses(local)
    assert len(expect) == 6
    for name, run in runs.items():
        assert _losses(run) == expect, name
    # without the cache the missing chunks are an error, not zeros
    code, _, err = cli_main("train", "--store", s3_copy, "--out", tmp_path / "nocache", *TRAIN, "--workers", 0)
    assert_one_error_line(code, err, "is missing (deleted after sealing)")


def test_store_ls_info_show_on_s3(s3, s3_copy, reference):
    code, out, err = cli_main("store", "ls", s3_copy)
    assert code == 0 and out.count("sealed") == 4, out + err
    code, out, err = cli_main("store", "info", s3_copy)
    assert code == 0 and "units sealed" in out and "4/4" in out, out + err
    code, out, err = cli_main("store", "show", s3_copy, 3)
    assert code == 0 and "episode 3" in out and "status=ok" in out, out + err
    local = cli_main("store", "show", reference, 3)[1]  # the same episode read from the local original
    assert out.replace(s3_copy, "STORE") == local.replace(str(reference), "STORE")


def test_object_store_errors(s3, s3_copy, demo_corpus, tmp_path):
    code, _, err = cli_main("store", "info", "s3://no-such-bucket/store")
    assert_one_error_line(code, err, "the bucket does not exist")
    code, _, err = cli_main(*extract_args(demo_corpus, "s3://no-such-bucket/store"))
    assert_one_error_line(code, err, "the bucket does not exist")
    with environment(s3["denied"]):
        code, _, err = cli_main("store", "ls", s3_copy)
        assert_one_error_line(code, err, "access denied")
    with environment({"AWS_ACCESS_KEY_ID": "AKIAUNKNOWNUNKNOWN00", "AWS_SECRET_ACCESS_KEY": "x"}):
        code, _, err = cli_main("train", "--store", s3_copy, "--out", tmp_path / "run")
        assert_one_error_line(code, err, "access denied (Forbidden); check AWS_ACCESS_KEY_ID")
    without = {k: v for k, v in os.environ.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    with environment(without, clear=True):
        code, _, err = cli_main("store", "info", s3_copy)
        assert_one_error_line(code, err, "no credentials")
    code, _, err = cli_main("store", "info", "gs://bucket/store")  # gcsfs is no dependency of ours
    assert_one_error_line(code, err, "gcsfs")


def test_chunk_cache_is_bounded_and_keeps_files_not_its_own(tmp_path):
    others = [tmp_path / "c" / name for name in ("notes.txt", "photos/old.jpg", "00/notes.txt", "00/blake3-ff00",
                                                 "00/blake3-00ff.txt")]
    for path in others:  # `--cache` named a folder that holds other files, older and larger than the bound
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 20_000)
        os.utime(path, (0, 0))
    cache = ChunkCache(tmp_path / "c", max_bytes=10_000)
    blobs = {f"{i:064x}": bytes([i]) * 900 for i in range(30)}
    for digest, data in blobs.items():
        cache.put("blake3", digest, data)
        time.sleep(0.002)  # distinct modification times: the oldest go first
    held = [p for p in (tmp_path / "c").rglob("*") if p.is_file() and p not in others]
    assert sum(p.stat().st_size for p in held) <= 10_000 + 10_000 // 8
    assert all(p.stat().st_size == 20_000 for p in others)
    assert cache.get("blake3", f"{29:064x}") == blobs[f"{29:064x}"] and cache.get("blake3", f"{0:064x}") is None


def test_unit_leases_on_s3(s3):
    """A unit's lease is created only where absent (If-None-Match): a second writer is told who holds it; a lease
    its writer stopped renewing (killed) is taken over once its life has passed."""
    from store.lease import UnitLocks

    root = where(f"s3://{BUCKET}/leases")
    first, second = UnitLocks(root), UnitLocks(root)
    try:
        assert first.take(0) is None
        assert second.take(0) == f"{socket.gethostname()} pid {os.getpid()}"
        first.release(0)
        assert second.take(0) is None
        second.close()
        lease = root / "shards" / "00000.lease"
        assert not lease.exists()
        lease.call("pipe_file", lease.key, json.dumps({"owner": "node7 pid 1", "token": "t", "seconds": 3}).encode())
        assert first.take(0) == "node7 pid 1"  # (object times have whole seconds: its age reads up to 1 s more)
        time.sleep(4.5)
        assert first.take(0) is None and json.loads(lease.read_bytes())["token"] != "t"
    finally:
        first.close()
        second.close()


def test_a_lease_outlives_an_outage_shorter_than_its_life(s3, monkeypatch):
    """The heartbeat that renews a writer's lease rides out beats the object store does not answer: the lease is
    still this writer's after the store is back, renewed: past its life since it was taken, another writer is
    refused it."""
    import store.lease
    from store.lease import UnitLocks

    monkeypatch.setattr(store.lease, "LEASE_SECONDS", 2.0)  # a beat every 0.5 s
    proxy = S3Proxy(s3["env"]["AWS_ENDPOINT_URL"])
    locks = None
    try:
        with environment({"AWS_ENDPOINT_URL": proxy.url, "VJEPA_S3_ATTEMPTS": "1", "VJEPA_S3_TIMEOUT": "0.3"}):
            locks = UnitLocks(where(f"s3://{BUCKET}/heartbeat"))
            assert locks.take(0) is None
            proxy.cut()
            time.sleep(1.2)  # two beats unanswered
            proxy.restore()
            time.sleep(2.0)  # 3.2 s since it was taken: stale unless renewed after the outage
            assert locks.heartbeat.is_alive()
            locks.confirm(0)  # (raises if the lease was lost)
            other = UnitLocks(where(f"s3://{BUCKET}/heartbeat"))
            assert other.take(0) == f"{socket.gethostname()} pid {os.getpid()}"
    finally:
        if locks is not None:
            locks.close()
        proxy.close()


def test_an_outage_is_ridden_out_or_ends_in_one_line_and_a_rerun_resumes(s3, reference, demo_corpus):
    """The connection to the object store cut in the middle of an extraction (at its 100th request): for a second,
    the retries ride it out; for good, the run ends with one line, and after the store is back a rerun completes
    the same store, with one in twenty of its requests answered 503 SlowDown: each one retried, and counted.
    In the first run, each kind of write also takes effect once with its answer lost, so the client sends it again:
    the store's creation, a unit's lease (its conditional PUT is then refused, and the writer must still know the
    lease for its own: taken for another writer's, its unit was written by nobody and a two-rank run through a cut
    ended without a manifest), a shard file, a seal, a lease's release, the manifest and the merged attributes."""
    proxy = S3Proxy(s3["env"]["AWS_ENDPOINT_URL"])
    short, long = f"s3://{BUCKET}/outage-short", f"s3://{BUCKET}/outage-long"
    try:
        for key in ["plan.parquet", "zarr.json", "shards/00000.lease", "shards/00001/episodes.parquet",
                    "shards/00002/sealed.json", "manifest.parquet", "zarr.json"]:  # (zarr.json: created, merged)
            proxy.lose_answer(f"PUT /{BUCKET}/outage-short/{key} ")
        proxy.lose_answer(f"POST /{BUCKET}?delete")  # (a lease released)
        with environment({"AWS_ENDPOINT_URL": proxy.url, "VJEPA_S3_TIMEOUT": "5"}):
            proxy.outage_after(proxy.requests + 100, 1.0)
            summary = run_extract(ExtractConfig(corpus=demo_corpus, out=short, workers=0, **JOB_CONFIG))
            assert summary.retries > 0 and proxy.lose == [] and summary.merged
            proxy.outage_after(proxy.requests + 100)  # in a process of its own, whose leases outlive it
            r = run_cli(*extract_args(demo_corpus, long, "--workers", 0), env={**os.environ, "VJEPA_S3_ATTEMPTS": "2"},
                        check=False, timeout=300)
            assert_one_error_line(r.returncode, r.stderr, "the object store did not answer after 2 attempts")
            proxy.restore()
            assert len(sealed_units(long)) < 4
            proxy.slow_down = 0.05
            summary = run_extract(ExtractConfig(corpus=demo_corpus, out=long, workers=0, **JOB_CONFIG))
            assert summary.retries == proxy.slowed > 0
    finally:
        proxy.close()
    assert_same_store(short, reference)
    assert_same_store(long, reference)
