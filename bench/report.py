"""Timing helpers, machine description, the benches' demo corpora, and BENCHMARKS.md sections."""

from __future__ import annotations

import importlib
import inspect
import os
import platform
import re
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import BENCHES, BenchConfig

BENCHMARKS = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    return (f"{os.cpu_count()} CPU cores ({cpu}), {mem:.0f} GiB RAM{gpu}; "
            f"Python {sys.version.split()[0]}, torch {torch.__version__}")


def median_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1, sync: bool = False) -> float:
    """Median wall seconds of fn() over repeats, after warmup calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if sync:
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if sync:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def section(title: str, command: str, body: str) -> str:
    when = time.strftime("%Y-%m-%d")
    return (f"## {title}\n\nCommand: `{command}`  \nMachine: {machine()}  \nDate: {when}\n\n{body.strip()}\n")


@dataclass
class Section:
    """What a benchmark's run(cfg) returns: its BENCHMARKS.md block and the raw numbers."""

    name: str  # the block's marker in BENCHMARKS.md
    title: str
    body: str  # markdown
    results: dict


def demo_corpus(directory: Path, episodes: int) -> Path:
    """The demo corpus of `episodes` episodes under `directory`, written on first use; benches that use different
    sizes keep different corpora, so each section's count is the one it read."""
    from sim.demo import make_demo_corpus

    corpus = directory / f"demo-corpus-{episodes}"
    if not corpus.exists():
        make_demo_corpus(corpus, episodes=episodes)
    return corpus


def run_bench(command: str, cfg: BenchConfig, on_progress: Callable[[int, int], None] | None = None) -> str:
    """Run one benchmark; return its section (with the command line that ran it), written if cfg.write.
    A long benchmark reports `on_progress(done, total)` where its run takes it."""
    module = importlib.import_module(f"bench.{BENCHES[command][0]}")
    takes = on_progress is not None and "on_progress" in inspect.signature(module.run).parameters
    result: Section = module.run(cfg, on_progress=on_progress) if takes else module.run(cfg)
    text = section(result.title, "python cli.py " + " ".join(sys.argv[1:]), result.body)
    if cfg.write:
        write_section(result.name, text)
    return text


def write_section(name: str, text: str, path: Path = BENCHMARKS) -> None:
    """Replace (or append) the block between <!-- bench:name --> markers in BENCHMARKS.md."""
    begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{begin}\n{text.strip()}\n{end}"
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    new = pattern.sub(lambda _: block, old) if pattern.search(old) else old.rstrip() + "\n\n" + block + "\n"
    path.write_text(new)


class PeakRSS:
    """Peak resident memory (bytes) of a process and all its descendants, sampled from /proc."""

    def __init__(self, pid: int, interval: float = 0.05):
        self.pid, self.interval, self.peak = pid, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _tree(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                children.setdefault(ppid, []).append(int(d.name))
        out, todo = [], [self.pid]
        while todo:
            p = todo.pop()
            out.append(p)
            todo += children.get(p, [])
        return out

    def _rss(self, pid: int) -> int:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, sum(self._rss(p) for p in self._tree()))
            time.sleep(self.interval)
