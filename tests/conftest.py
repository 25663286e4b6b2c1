"""Session-wide fixtures: the demo corpus (real DROID-layout MP4 + HDF5) and its feature store."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO_EPISODES = 64  # as `make demo`


def run_cli(*args, env=None, timeout=600, check=True) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, str(ROOT / "cli.py"), *map(str, args)], capture_output=True,
                       text=True, cwd=ROOT, timeout=timeout, env=env)
    if check and r.returncode != 0:
        raise AssertionError(f"cli.py {' '.join(map(str, args))} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory) -> Path:
    from extract.demo import make_demo_corpus

    return make_demo_corpus(tmp_path_factory.mktemp("demo") / "corpus", episodes=DEMO_EPISODES, seed=0)


@pytest.fixture(scope="session")
def demo_store(demo_corpus, tmp_path_factory) -> Path:
    """The demo corpus extracted as `make extract` does (same arguments)."""
    out = tmp_path_factory.mktemp("demo") / "store"
    run_cli("extract", "--corpus", demo_corpus, "--out", out, "--preset", "vit_demo", "--camera", "wrist",
            "--episodes-per-unit", 16, "--workers", 2)
    return out


DEMO_STEPS = 900


@pytest.fixture(scope="session")
def demo_run(demo_store, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The small world model that `make train` trains on the demo store (same arguments)."""
    out = tmp_path_factory.mktemp("demo") / "run"
    r = run_cli("train", "--store", demo_store, "--out", out, "--preset", "ac_demo", "--steps", DEMO_STEPS,
                "--batch-size", 8, "--lr", 3e-3, "--start-lr", 6e-4, "--anneal", 180, "--val-every", 300,
                "--ckpt-every", 300, "--workers", 1, timeout=1200)
    return out, r
