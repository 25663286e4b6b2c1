"""The soak: faults a cluster throws, at random, during a 2-rank extraction into an object store and a 2-rank
training run from it (torchrun, CPU), each failed run relaunched until it completes; then the store, the final
checkpoint and the metrics against uninterrupted runs. The object store is moto's S3 server on 127.0.0.1, in this
process (it stops with it), behind bench/proxy.py, which drops every connection and refuses new ones for the
outages, answers a fraction of the requests 503 SlowDown and loses the answers of another fraction (the server
did them; the client sends them again).
"""

from __future__ import annotations

import csv
import logging
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from common.errors import UserError
from common.files import output_dir
from sim.demo import make_demo_corpus
from store import open_store
from store.location import list_files, remove_tree, where
from store.reader import shard_arrays

from .config import SoakBench
from .proxy import S3Proxy
from .report import Section, table

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "soak"
SHORT_OUTAGE = 1.0  # seconds: within the retries' backoff (4 waits of up to 1, 2, 4, 8 s)
RETRIES = {"VJEPA_S3_ATTEMPTS": "5", "VJEPA_S3_TIMEOUT": "5"}  # so a long outage fails a run in seconds
RUN_LIMIT = 600  # seconds a run may take before it counts as hung (and is killed)
EXTRACT = ["--preset", "vit_test", "--camera", "wrist", "--episodes-per-unit", "1", "--batch-size", "16",
           "--workers", "1", "--device", "cpu"]
TRAIN = ["--preset", "ac_test", "--batch-size", "2", "--frames", "4", "--ckpt-every", "5", "--val-every", "20",
         "--val-clips", "8", "--lr", "1e-3", "--workers", "1", "--device", "cpu"]
TIMING = {"data_time", "step_time", "clips_per_s"}  # metrics.csv columns that are not results


@dataclass
class Phase:
    """One soaked run: its faults, its launches and how each ended."""

    name: str
    faults: list[str]  # still to inject, in order
    launches: list[list[str]] = field(default_factory=list)  # per launch: the faults injected, as said in the report
    endings: list[str] = field(default_factory=list)  # per launch: how it ended
    slowed: int = 0  # SlowDown answers during the phase
    lost: int = 0  # answers lost during the phase
    retried: int | None = None  # retries the completing run reported
    complete: bool = False

    @property
    def injected(self) -> list[str]:
        return [f for faults in self.launches for f in faults]


def _fault_plan(kills: int, outages: int, rng: random.Random) -> list[str]:
    plan = [rng.choice(["SIGKILL", "SIGTERM"]) for _ in range(kills)]
    plan += ["short outage" if i % 2 == 0 else "long outage" for i in range(outages)]
    rng.shuffle(plan)
    return plan


def _ranks(pid: int) -> dict[int, int]:
    """torchrun's workers: rank -> pid (its children with RANK in their environment)."""
    found = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) != pid:
                continue
            env = dict(e.split(b"=", 1) for e in (d / "environ").read_bytes().split(b"\0") if b"=" in e)
            found[int(env[b"RANK"])] = int(d.name)
        except (OSError, IndexError, ValueError, KeyError):
            continue
    return found


def _torchrun(args: list, env: dict, log: Path) -> subprocess.Popen:
    """`cli.py ARGS` on 2 ranks, in a session of its own, its output into `log`."""
    with open(log, "w") as f:
        return subprocess.Popen([str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node",
                                 "2", str(ROOT / "cli.py"), *map(str, args)], cwd=ROOT, env=env, stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _stop(p: subprocess.Popen, limit: float) -> None:
    """Wait for a launch until `limit` (time.time()), then end its whole session."""
    try:
        p.wait(timeout=max(0.0, limit - time.time()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def _uninterrupted(args: list, env: dict, log: Path) -> None:
    p = _torchrun(args, env, log)
    _stop(p, time.time() + RUN_LIMIT)
    if p.returncode:
        raise UserError(f"the uninterrupted run failed (exit {p.returncode}): see {log}")


def _ending(p: subprocess.Popen, log: Path) -> str:
    """How a launch ended: completed, or the first `preempted:` or `error:` line of its ranks, or its exit code."""
    if p.returncode == 0:
        return "completed"
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("preempted:"):
            return "preempted (exit 3)"
        if line.startswith("error:"):
            return "error: " + line.split(" (")[0].split(": ")[-1]
    return f"exit {p.returncode} without a preempted: or error: line"


def _inject(fault: str, p: subprocess.Popen, proxy: S3Proxy, rng: random.Random) -> str | None:
    """Do it; what was done (None: the ranks are not up yet)."""
    if fault in ("SIGKILL", "SIGTERM"):
        ranks = _ranks(p.pid)
        if not ranks:
            return None
        rank = rng.choice(sorted(ranks))
        os.kill(ranks[rank], signal.Signals[fault])
        return f"{fault} to rank {rank}"
    if fault == "short outage":
        threading.Thread(target=proxy.outage, args=(SHORT_OUTAGE,), daemon=True).start()
        return f"outage of {SHORT_OUTAGE:g} s"
    proxy.cut()
    return "outage until the run ended"


def _soak(phase: Phase, launch: Callable[[int, Path], subprocess.Popen], progress: Callable[[float], int],
          total: int, proxy: S3Proxy, rng: random.Random, logs: Path, on_fault: Callable[[], None]) -> None:
    """Launch; inject the next fault once `progress(since)` reaches a random point of the work left (after a
    short outage, which the run rides out, the next one too); wait; relaunch until a run completes. Faults are
    spread so each has work left to land in."""
    slowed, lost = proxy.slowed, proxy.lost
    for n in range(len(phase.faults) + 3):
        since, log = time.time(), logs / f"{phase.name}-{n}.log"
        p = launch(n, log)
        fault, at, ending = None, 0, False
        phase.launches.append([])
        try:
            while p.poll() is None and time.time() < since + RUN_LIMIT:
                done = progress(since)
                if fault is None and not ending and phase.faults and done < total - 1:
                    fault = phase.faults.pop(0)
                    at = done + 1 + rng.randrange(max(1, (total - done - 1) // (len(phase.faults) + 2)))
                if fault and done >= at and (did := _inject(fault, p, proxy, rng)):
                    phase.launches[-1].append(f"{did} at {done}/{total}")
                    on_fault()
                    fault, ending = None, fault != "short outage"
                time.sleep(0.3)
        finally:
            _stop(p, since + RUN_LIMIT)
            proxy.restore()
        if fault:  # the run ended before its moment
            phase.faults.insert(0, fault)
        phase.endings.append(_ending(p, log))
        if p.returncode == 0:
            phase.complete, phase.retried = True, _retried(log)
            break
    phase.slowed, phase.lost = proxy.slowed - slowed, proxy.lost - lost


def _store_bytes_lost(store: str, reference: Path) -> int:
    """Bytes of the reference store's rows (and manifest) that differ in `store` or are missing from it."""
    a, b = open_store(store), open_store(reference)
    same = a.attrs == b.attrs and a.episodes.equals(b.episodes)
    lost = 0 if same else (reference / "manifest.parquet").stat().st_size
    for u in b.sealed:
        theirs = shard_arrays(a.root, u, a.config) if u in a.sealed else {}
        for name, array in shard_arrays(b.root, u, b.config).items():
            y = array[:]
            x = theirs[name][:] if name in theirs else None
            same = x is not None and x.shape == y.shape and x.dtype == y.dtype
            lost += int((x.view(np.uint8) != y.view(np.uint8)).sum()) if same else y.nbytes
    return lost


def _tensor_bytes_lost(a, b) -> int:
    """Bytes of the tensors in `b` (a checkpoint, nested) that differ in `a` or are missing from it."""
    if isinstance(b, torch.Tensor):
        y = b.contiguous().view(-1).view(torch.uint8)
        if not (isinstance(a, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype):
            return y.numel()
        return int((a.contiguous().view(-1).view(torch.uint8) != y).sum())
    if isinstance(b, dict):
        return sum(_tensor_bytes_lost(a.get(k) if isinstance(a, dict) else None, v) for k, v in b.items())
    if isinstance(b, (list, tuple)):
        return sum(_tensor_bytes_lost(a[i] if isinstance(a, (list, tuple)) and i < len(a) else None, v)
                   for i, v in enumerate(b))
    return 0


def _rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path) as f:
        return [{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(f)]


def _rows_differing(run: Path, reference: Path) -> int:
    n = 0
    for name in ("metrics.csv", "val.csv"):
        a, b = _rows(run / name), _rows(reference / name)
        n += sum(x != y for x, y in zip(a, b)) + abs(len(a) - len(b))
    return n


def _retried(log: Path) -> int:
    """The object-store retries a completed run's ranks reported (extract: each rank's table; train: rank 0)."""
    return sum(int(n) for n in re.findall(r"object-store requests retried\D*?(\d+)", log.read_text(errors="replace")))


def _server(env: dict):
    """moto's S3 server on 127.0.0.1 in this process (data in memory); its address and keys go into `env`."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        raise UserError("bench soak needs moto's S3 server: pip install -e '.[test]'") from None
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env.update(AWS_ENDPOINT_URL=f"http://{host}:{port}", AWS_ACCESS_KEY_ID="soak", AWS_SECRET_ACCESS_KEY="soak",
               AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
    return server


def run(cfg: SoakBench, on_progress: Callable[[int, int], None] | None = None) -> Section:
    """`on_progress(faults injected, faults planned)` after each fault."""
    rng = random.Random(cfg.seed)
    plans = {name: _fault_plan(cfg.kills, cfg.outages, rng) for name in ("extraction", "training")}
    planned, injected = sum(map(len, plans.values())), [0]

    def on_fault() -> None:
        injected[0] += 1
        if on_progress:
            on_progress(injected[0], planned)

    work = cfg.directory / "soak"
    logs = output_dir(work / "logs", "--directory")
    corpus = work / f"corpus-{cfg.episodes}"
    if not corpus.exists():
        make_demo_corpus(corpus, episodes=cfg.episodes)
    saved, env = dict(os.environ), {}
    server = _server(env)
    os.environ.update(env)  # this process reads the bucket straight from the server
    proxy = S3Proxy(env["AWS_ENDPOINT_URL"], slow_down=cfg.slow_down, lost_answers=cfg.lost_answers, seed=cfg.seed)
    faulty = {**os.environ, **RETRIES, "AWS_ENDPOINT_URL": proxy.url}
    reference, store, run_dir = work / "reference", f"s3://{BUCKET}/store", work / "run"
    phases = {name: Phase(name, plan) for name, plan in plans.items()}
    try:
        where(store).call("mkdir", BUCKET)
        for old in (reference, work / "reference-run", run_dir):
            remove_tree(old)
        extract = ["extract", "--corpus", corpus, "--limit", cfg.episodes, *EXTRACT]
        _uninterrupted([*extract, "--out", reference], os.environ, logs / "reference-extraction.log")

        def sealed(since: float) -> int:
            return sum(name.endswith("/sealed.json") for name in list_files(where(store)))

        _soak(phases["extraction"], lambda n, log: _torchrun([*extract, "--out", store], faulty, log), sealed,
              cfg.episodes, proxy, rng, logs, on_fault)
        train = ["train", "--steps", cfg.steps, *TRAIN]
        _uninterrupted([*train, "--store", reference, "--out", work / "reference-run"], os.environ,
                       logs / "reference-training.log")

        def steps(since: float) -> int:
            metrics = run_dir / "metrics.csv"
            if metrics.exists() and metrics.stat().st_mtime >= since:
                return len(_rows(metrics))
            return max((int(p.stem.split("_")[1]) for p in run_dir.glob("step_*.pt")), default=0)

        if phases["extraction"].complete:
            _soak(phases["training"], lambda n, log: _torchrun(
                [*train, "--store", store, "--out", run_dir, *(["--resume"] if n else [])], faulty, log),
                steps, cfg.steps, proxy, rng, logs, on_fault)
        lost = {"extraction": _store_bytes_lost(store, reference) if phases["extraction"].complete else None,
                "training": None}
        rows_differing = None
        if phases["training"].complete:
            a, b = (torch.load(d / "latest.pt", weights_only=True) for d in (run_dir, work / "reference-run"))
            lost["training"] = sum(_tensor_bytes_lost(a[k], b[k]) for k in ("predictor", "optimizer"))
            rows_differing = _rows_differing(run_dir, work / "reference-run")
    finally:
        proxy.close()
        server.stop()
        os.environ.clear()
        os.environ.update(saved)
    return _section(cfg, phases, lost, rows_differing)


def _section(cfg: SoakBench, phases: dict[str, Phase], lost: dict[str, int | None],
             rows_differing: int | None) -> Section:
    rows, results = [], {}
    for name, phase in phases.items():
        kinds = Counter(f.split(" to rank")[0].split(" at ")[0] for f in phase.injected)
        ok = phase.complete and lost[name] == 0 and (name != "training" or rows_differing == 0)
        endings = Counter(phase.endings)
        rows.append([name, f"{len(phase.injected)} ({', '.join(f'{n} {k}' for k, n in kinds.items()) or '-'})",
                     len(phase.injected) if ok else 0, len(phase.endings), max(0, len(phase.endings) - 1),
                     "; ".join(f"{n}x {e}" for e, n in endings.items()), phase.slowed, phase.lost,
                     "-" if phase.retried is None else phase.retried,
                     "not compared (incomplete)" if lost[name] is None else f"**{lost[name]}**"])
        results[name] = {"injected": phase.injected, "endings": phase.endings, "complete": phase.complete,
                         "bytes_lost": lost[name], "slowdowns": phase.slowed,
                         "lost_answers": phase.lost, "retried": phase.retried}
    results["training"]["metric_rows_differing"] = rows_differing
    details = "\n".join(f"- {name} launch {n + 1}: {', '.join(faults) or 'no fault'} -> {ending}"
                        for name, phase in phases.items() for n, (faults, ending) in enumerate(zip(phase.launches,
                                                                                                  phase.endings)))
    body = (f"A 2-rank extraction (torchrun, CPU, vit_test, {cfg.episodes} demo episodes, one unit each) into "
            f"`s3://` and a 2-rank training run from that store (ac_test, {cfg.steps} steps, batch 2 per rank, "
            "a checkpoint every 5 steps, 1 DataLoader worker per rank). The object store: moto's S3 server on "
            "127.0.0.1 behind the fault proxy (bench/proxy.py), which answers "
            f"{cfg.slow_down:.0%} of the requests 503 SlowDown throughout, lets another {cfg.lost_answers:.0%} reach "
            "the server but drops the connection before its answer (so the client sends the request again) and, for "
            "the outages, drops every "
            f"connection and refuses new ones (short: {SHORT_OUTAGE:g} s, to be ridden out; long: until the run "
            f"gave up, with VJEPA_S3_ATTEMPTS=5, VJEPA_S3_TIMEOUT=5). Per run, the faults (seed {cfg.seed}) land at "
            f"random points of the work left (sealed units, steps): {cfg.kills} kills (SIGKILL or SIGTERM, drawn "
            f"at random) of a random rank's main process and {cfg.outages} outages. Each run that did not complete "
            "was relaunched (extract: the same command; train: with --resume) until one did. Bytes lost: bytes of "
            "the uninterrupted runs' results that differ or are missing: every row array of every shard and the "
            "manifest (extraction); the final checkpoint's predictor weights and optimizer state (training). "
            f"Metric rows differing (metrics.csv and val.csv, timings aside): **{rows_differing}**. Logs of every "
            f"launch in {cfg.directory / 'soak' / 'logs'}.\n\n"
            + table(["run", "faults injected", "faults survived (completed, nothing lost)", "runs launched",
                     "runs relaunched", "how the launches ended", "SlowDown answers", "answers lost",
                     "retries counted by the completing run", "bytes lost"], rows)
            + f"\n\nEach launch: its faults (at: the progress when each landed / the total) and how it ended:\n\n"
            f"{details}\n")
    return Section("soak", "Soak: random kills and object-store outages", body, results)
