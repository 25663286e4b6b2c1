"""Session-wide fixtures: the demo corpus (real DROID-layout MP4 + HDF5) and its feature store."""

from __future__ import annotations

import io
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from unittest import mock

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO_EPISODES = 64  # as `make demo`


def run_cli(*args, env=None, timeout=600, check=True) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, str(ROOT / "cli.py"), *map(str, args)], capture_output=True,
                       text=True, cwd=ROOT, timeout=timeout, env=env)
    if check and r.returncode != 0:
        raise AssertionError(f"cli.py {' '.join(map(str, args))} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def signalled(sig: str, count: int, rank: int, *args, torchrun: bool = False) -> subprocess.CompletedProcess:
    """`cli.py ARGS` in a subprocess (under torchrun with 2 ranks) that gets a real signal part-way
    (tests/signal_at.py: after step `count` of rank `rank`)."""
    launch = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node", "2"] if torchrun \
        else [sys.executable]
    return subprocess.run([*launch, str(ROOT / "tests" / "signal_at.py"), sig, str(count), str(rank), *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, start_new_session=True)


def cli_main(*args) -> tuple[int, str, str]:
    """`python cli.py ARGS` run in this process (typer's parsing and cli.main's error handling, without
    starting Python and torch again): (exit code, stdout, stderr)."""
    import cli

    out, err = io.StringIO(), io.StringIO()
    with mock.patch.object(sys, "argv", ["cli.py", *map(str, args)]), redirect_stdout(out), redirect_stderr(err):
        try:
            cli.main()
        except SystemExit as e:
            code = e.code
    return code, out.getvalue(), err.getvalue()


def assert_one_error_line(code: int, err: str, message: str, exit_code: int = 2) -> None:
    """Exit code, exactly one `error:` line holding `message`, and no traceback."""
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == exit_code and len(errors) == 1 and message in errors[0] and "Traceback" not in err, (code, err)


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory) -> Path:
    from sim.demo import make_demo_corpus

    return make_demo_corpus(tmp_path_factory.mktemp("demo") / "corpus", episodes=DEMO_EPISODES, seed=0)


@pytest.fixture(scope="session")
def demo_store(demo_corpus, tmp_path_factory) -> Path:
    """The demo corpus extracted as `make extract` does (same arguments)."""
    out = tmp_path_factory.mktemp("demo") / "store"
    run_cli("extract", "--corpus", demo_corpus, "--out", out, "--preset", "vit_demo", "--camera", "wrist",
            "--episodes-per-unit", 16, "--workers", 2)
    return out


JOB = ["--preset", "vit_test", "--camera", "wrist", "--limit", 8, "--episodes-per-unit", 2, "--batch-size", 16,
       "--device", "cpu"]  # on a machine with GPUs too: ranks may outnumber them
JOB_CONFIG = dict(preset="vit_test", camera="wrist", limit=8, episodes_per_unit=2, batch_size=16, device="cpu")


def extract_args(corpus: Path, out: Path, *extra) -> list:
    return ["extract", "--corpus", corpus, "--out", out, *JOB, *extra]


def assert_same_store(a, b) -> None:
    """Same attributes, manifest and bit-identical rows in every shard (local folders or URLs)."""
    import numpy as np

    from store import open_store
    from store.reader import shard_arrays

    sa, sb = open_store(a), open_store(b)
    assert sa.attrs == sb.attrs and sa.sealed == sb.sealed and sa.complete
    assert sa.episodes.equals(sb.episodes)
    for u in sa.sealed:
        xa, xb = shard_arrays(sa.root, u, sa.config), shard_arrays(sb.root, u, sb.config)
        for name in ("features", "state", "frame_index", "timestamp", "episode"):
            x, y = xa[name][:], xb[name][:]
            assert x.dtype == y.dtype and np.array_equal(x, y), (u, name)


@pytest.fixture(scope="session")
def reference(demo_corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "store"
    run_cli(*extract_args(demo_corpus, out, "--workers", 2))
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
