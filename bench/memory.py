"""Peak resident memory of the extraction job and of training at the demo sizes (whole process tree)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from sim.demo import make_demo_corpus

from .config import MemoryBench
from .report import PeakRSS, Section, table

DEMO_EPISODES = 32

ROOT = Path(__file__).resolve().parents[1]


def peak(args: list[str]) -> tuple[int, float]:
    """(peak RSS bytes of the process and its children, seconds) of `python cli.py ARGS`."""
    import time

    start = time.perf_counter()
    p = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), *args], cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with PeakRSS(p.pid) as rss:
        if p.wait() != 0:
            raise RuntimeError(f"cli.py {' '.join(args)} failed")
    return rss.peak, time.perf_counter() - start


def run(cfg: MemoryBench) -> Section:
    directory, episodes = cfg.directory, DEMO_EPISODES
    corpus = directory / "corpus"
    if not corpus.exists():
        make_demo_corpus(corpus, episodes=episodes)
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
