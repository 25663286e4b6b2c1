"""Session-wide fixtures: the demo corpus (real DROID-layout MP4 + HDF5), its feature store and model."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from unittest import mock

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO_EPISODES = 64  # as `make demo`
DEMO_STEPS = 900


def run_cli(*args, env=None, timeout=600, check=True, started=None) -> subprocess.CompletedProcess:
    """`python cli.py ARGS` in a subprocess (handed to `started` as it starts)."""
    with subprocess.Popen([sys.executable, str(ROOT / "cli.py"), *map(str, args)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env) as p:
        if started:
            started(p)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            raise
    r = subprocess.CompletedProcess(p.args, p.returncode, out, err)
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


def cli_ok(*args) -> str:
    """`cli_main` that must succeed; its stdout."""
    code, out, err = cli_main(*args)
    assert code == 0, f"cli.py {' '.join(map(str, args))} failed ({code}):\n{out}\n{err}"
    return out


def assert_one_error_line(code: int, err: str, message: str, exit_code: int = 2) -> None:
    """Exit code, exactly one `error:` line holding `message`, and no traceback."""
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == exit_code and len(errors) == 1 and message in errors[0] and "Traceback" not in err, (code, err)


class DemoBuild:
    """`make demo` (corpus, store, trained model) in the background, started when the session collects a test that
    needs it: the corpus and store with `make demo`'s arguments, the model with `make train`'s on 4-frame clips
    instead of 8 (2.3x cheaper per step; it uses its actions more in eval and plan-eval, and reaches the demo
    world's goals less often than `make train`'s in closed loop, 60% against 95% in `bench sim`). The training
    runs on one core beside the tests, which mostly keep one of CI's two cores busy. Tests that need the model
    run last."""

    STAGES = ("demo_corpus", "demo_store", "demo_run")
    ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}  # beside the tests, 2 threads spin-wait for a busy core:
    # the training then took over 2.5x as long as alone (measured)

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="demo-build-"))
        self.done = {stage: threading.Event() for stage in self.STAGES}
        self.results: dict[str, object] = {}
        self.process: subprocess.Popen | None = None  # the stage running now
        self.stopped = False
        threading.Thread(target=self._build, daemon=True).start()

    def _build(self) -> None:
        corpus, store, run = self.root / "corpus", self.root / "store", self.root / "run"
        steps = {
            "demo_corpus": (corpus, ["demo-corpus", corpus, "--episodes", DEMO_EPISODES]),
            "demo_store": (store, ["extract", "--corpus", corpus, "--out", store, "--preset", "vit_demo", "--camera",
                                   "wrist", "--episodes-per-unit", 16, "--workers", 2]),
            "demo_run": (run, ["train", "--store", store, "--out", run, "--preset", "ac_demo", "--steps", DEMO_STEPS,
                               "--frames", 4, "--batch-size", 8, "--lr", 3e-3, "--start-lr", 6e-4, "--anneal", 180,
                               "--val-every", 300, "--ckpt-every", 300, "--workers", 1]),
        }
        for i, stage in enumerate(self.STAGES):
            path, args = steps[stage]
            try:
                if self.stopped:
                    raise RuntimeError("the session ended before the demo was built")
                self.results[stage] = (path, run_cli(*args, timeout=1800, started=self.started, env=self.ONE_THREAD))
            except Exception as e:  # this stage and every later one fail with it
                for later in self.STAGES[i:]:
                    self.results[later] = e
                    self.done[later].set()
                return
            self.done[stage].set()

    def started(self, process: subprocess.Popen) -> None:
        self.process = process

    def stop(self) -> None:
        self.stopped = True
        if self.process is not None and self.process.poll() is None:  # the session ended first (-x, Ctrl-C)
            self.process.kill()
        shutil.rmtree(self.root, ignore_errors=True)

    def get(self, stage: str) -> tuple[Path, subprocess.CompletedProcess]:
        self.done[stage].wait()
        if isinstance(self.results[stage], Exception):
            raise self.results[stage]
        return self.results[stage]


_DEMO: list[DemoBuild] = []  # the session's build, if it has one


def pytest_collection_modifyitems(config, items) -> None:
    if not config.option.collectonly and any(s in item.fixturenames for item in items for s in DemoBuild.STAGES):
        _DEMO.append(DemoBuild())
    items.sort(key=lambda item: "demo_run" in item.fixturenames)  # stable: the rest keep their order


def pytest_sessionfinish(session) -> None:
    for build in _DEMO:
        build.stop()


@pytest.fixture(scope="session")
def demo_corpus() -> Path:
    """The demo corpus as `make demo` renders it (real DROID-layout MP4 + HDF5)."""
    return _DEMO[0].get("demo_corpus")[0]


@pytest.fixture(scope="session")
def demo_store() -> Path:
    """The demo corpus extracted as `make extract` does (same arguments)."""
    return _DEMO[0].get("demo_store")[0]


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
        assert set(xa) == set(xb) and "features" in xa
        for name in xa:  # every array the store's layout holds (actions and int8 scales too)
            x, y = xa[name][:], xb[name][:]
            assert x.dtype == y.dtype and np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), (u, name)


@pytest.fixture(scope="session")
def reference(demo_corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "store"
    cli_ok(*extract_args(demo_corpus, out, "--workers", 2))
    return out


@pytest.fixture(scope="session")
def demo_run() -> tuple[Path, subprocess.CompletedProcess]:
    """The small world model `make train` trains on the demo store, trained on 4-frame clips (DemoBuild)."""
    return _DEMO[0].get("demo_run")
