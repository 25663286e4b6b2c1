"""Peak resident memory of the extraction job and of training at the demo sizes (whole process tree)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common.errors import UserError

from .config import MemoryBench
from .report import PeakRSS, Section, demo_corpus, table

DEMO_EPISODES = 32

ROOT = Path(__file__).resolve().parents[1]


def peak(args: list[str]) -> tuple[int, float]:
    """(peak RSS bytes of the process and its children, seconds) of `python cli.py ARGS`."""
    import time

    start = time.perf_counter()
    with tempfile.TemporaryFile() as err:  # (a file, not a pipe: a long job's progress would fill a pipe)
        p = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=err)
        with PeakRSS(p.pid) as rss:
            code = p.wait()
        if code != 0:
            err.seek(0)
            said = err.read().decode(errors="replace").strip().splitlines() or [f"exit code {code}"]
            raise UserError(f"cli.py {' '.join(args[:1])} failed in the memory bench: {said[-1]}")
    return rss.peak, time.perf_counter() - start


def run(cfg: MemoryBench) -> Section:
    directory, episodes = cfg.directory, DEMO_EPISODES
    corpus = demo_corpus(directory, episodes)
    store, train_out = directory / "mem-store", directory / "mem-run"
    shutil.rmtree(store, ignore_errors=True)
    shutil.rmtree(train_out, ignore_errors=True)
    jobs = {
        "extract (vit_demo, 2 workers)": ["extract", "--corpus", str(corpus), "--out", str(store), "--preset",
                                          "vit_demo", "--camera", "wrist", "--workers", "2"],
        "train (ac_demo, batch 8, 1 worker, 100 steps)": ["train", "--store", str(store), "--out", str(train_out),
                                                         "--preset", "ac_demo", "--steps", "100", "--workers", "1",
                                                         "--val-every", "100"],
    }
    results, rows = {}, []
    for name, args in jobs.items():
        rss, seconds = peak(args)
        results[name] = {"peak_rss_mib": rss / 2**20, "seconds": seconds}
        rows.append([name, f"{rss / 2**20:.0f}", f"{seconds:.0f}"])
    body = ("Peak of the summed RSS of `python cli.py ...` and all its children (DataLoader workers), "
            f"sampled every 50 ms from /proc; demo corpus of {episodes} episodes. The sum counts the pages a "
            "worker shares with its parent (torch's libraries, ~250 MiB each) once per process, so it is an "
            "upper bound.\n\n"
            + table(["job", "peak RSS MiB", "seconds"], rows))
    return Section("memory", "Peak memory", body, results)
