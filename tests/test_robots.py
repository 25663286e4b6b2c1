"""Any robot: state and action spaces beyond DROID's 7-D end effector, from the corpus to the planner."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from store import StoredEpisode, open_store, write_store
from store.format import shard_dir
from tests import corpora
from tests.conftest import assert_one_error_line, cli_main, cli_ok
from tests.fake_store import tiny_store
from train.config import TrainConfig
from train.data import ClipDataset
from train.loop import run_train

EXTRACT = ["--preset", "vit_test", "--workers", 0, "--format", "lerobot"]


def test_lerobot_v30_2d_state_with_column_actions_at_stride_3(tmp_path):
    names = {"observation.state": ["x", "y"], "action": {"axes": ["tx", "ty"]}}
    corpus = corpora.lerobot_v30(tmp_path / "v3", [14, 23, 9], state_dim=2, action_dim=2, names=names)
    cli_ok("extract", "--corpus", corpus, "--out", tmp_path / "s", *EXTRACT, "--fps", 5)  # 15 / 5: stride 3
    store = open_store(tmp_path / "s")
    c = store.config
    assert (c.actions, c.state_dim, c.action_dim) == ("column:action", 2, 6)  # the default: the dataset's column
    assert c.state_names == ("x", "y") and c.action_names == ("tx@0", "ty@0", "tx@1", "ty@1", "tx@2", "ty@2")
    first = 0
    for e, n in enumerate([14, 23, 9]):
        stored = store.read_episode(e)["action"]
        native = corpora.lerobot_actions(first, n, 2)  # the parquet's rows of this episode
        assert len(stored) == len(range(0, n, 3))
        for t in range(len(stored) - 1):  # stored frame t: native rows 3t, 3t+1, 3t+2 in time order
            assert np.array_equal(stored[t], native[3 * t:3 * t + 3].reshape(-1))
        assert np.isnan(stored[-1]).all()  # no next frame: padded, and marked by NaN
        first += n
    clips = ClipDataset(store, store.ok_episodes, 3)
    item = clips[0]
    assert item["actions"].shape == (2, 6) and torch.equal(item["actions"], torch.from_numpy(
        store.read_episode(0)["action"][:2]))
    stats = store.stats
    assert len(stats["state"]["p01"]) == 2 and len(stats["action"]["p99"]) == 6
    assert stats["action"]["min"][0] == 0.0  # over the real actions only, never the NaN padding


def test_lerobot_v21_14d_state_with_state_delta(tmp_path):
    rng = np.random.default_rng(0)
    corpus = corpora.lerobot_v21(tmp_path / "aloha", [13, 17], state_dim=14, action_dim=14,
                                 state_of=lambda e, n: rng.normal(size=(n, 14)).astype(np.float32))
    cli_ok("extract", "--corpus", corpus, "--out", tmp_path / "s", *EXTRACT, "--actions", "state-delta")
    store = open_store(tmp_path / "s")
    assert (store.config.actions, store.config.state_dim, store.config.action_dim) == ("state-delta", 14, 14)
    assert not (shard_dir(tmp_path / "s", 0) / "action").exists()  # computed from the states, not stored
    item = ClipDataset(store, [1], 4)[0]
    assert torch.equal(item["actions"], item["states"][1:] - item["states"][:-1])
    result = run_train(TrainConfig(store=tmp_path / "s", out=tmp_path / "run", preset="ac_test", frames=4, steps=2,
                                   batch_size=2, workers=0, val_every=0, val_fraction=0))
    assert result.model.state_encoder.in_features == 14 and result.model.action_encoder.in_features == 14
    meta = torch.load(tmp_path / "run" / "latest.pt", weights_only=True)["model_meta"]
    assert meta["normalization"]["state"]["std"] == pytest.approx(store.stats["state"]["std"])  # z-scored by default


def test_quaternion_pose_with_pose_delta_is_refused(tmp_path):
    rng = np.random.default_rng(1)

    def quaternion_pose(e: int, n: int) -> np.ndarray:
        q = rng.normal(size=(n, 4))
        return np.concatenate([rng.normal(size=(n, 3)), q / np.linalg.norm(q, axis=1, keepdims=True)], 1)

    corpus = corpora.lerobot_v21(tmp_path / "maniskill", [9], state_of=quaternion_pose)
    code, _, err = cli_main("extract", "--corpus", corpus, "--out", tmp_path / "s", *EXTRACT, "--actions", "pose-delta")
    assert_one_error_line(code, err, "the state holds a quaternion, not Euler angles and a gripper")


def test_droid_stores_keep_their_arrays_and_version_1_opens_alike(tmp_path):
    """DROID's convention is one case of the general one: the same arrays as version 1 wrote (no stored
    actions: pose deltas from the states), and a version-1 store reads as S = 7 with pose-delta actions."""
    for name in ("a", "b"):
        corpora.droid_episode(tmp_path / "corpus", name, steps=30)
    cli_ok("extract", "--corpus", tmp_path / "corpus", "--out", tmp_path / "v2", "--preset", "vit_test",
           "--workers", 0)
    assert sorted(p.name for p in shard_dir(tmp_path / "v2", 0).iterdir() if p.is_dir()) == [
        "episode", "features", "frame_index", "state", "timestamp"]
    shard = zarr.open_group(shard_dir(tmp_path / "v2", 0), mode="r")
    assert shard["state"].dtype == np.float32 and shard["state"].shape[1] == 7 and shard["state"].chunks == (4096, 7)
    # the same store as version 1 wrote it: attributes without the robot fields
    shutil.copytree(tmp_path / "v2", tmp_path / "v1")
    meta = json.loads((tmp_path / "v1" / "zarr.json").read_text())
    for key in ("state_dim", "action_dim", "actions", "state_names", "action_names", "stats"):
        del meta["attributes"][key]
    meta["attributes"]["format_version"] = 1
    (tmp_path / "v1" / "zarr.json").write_text(json.dumps(meta))
    v1, v2 = open_store(tmp_path / "v1"), open_store(tmp_path / "v2")
    assert (v1.config.state_dim, v1.config.action_dim, v1.config.actions) == (7, 7, "pose-delta")
    a, b = ClipDataset(v1, v1.ok_episodes, 4), ClipDataset(v2, v2.ok_episodes, 4)
    assert len(a) == len(b) > 0
    for i in range(len(a)):
        assert all(torch.equal(a[i][k], b[i][k]) for k in ("features", "states", "actions"))


def test_7d_checkpoint_into_a_14d_store(tmp_path, caplog):
    seven = tiny_store(tmp_path / "seven", episodes=6)
    run_train(TrainConfig(store=seven, out=tmp_path / "run7", preset="ac_test", frames=4, steps=1, batch_size=2,
                          workers=0, val_every=0))
    g = torch.Generator().manual_seed(0)
    fourteen = write_store(tmp_path / "fourteen", [StoredEpisode(torch.randn(12, 4, 16, generator=g),
                                                                 torch.randn(12, 14, generator=g).numpy())
                                                   for _ in range(6)], codec="fp16")
    ckpt = torch.load(tmp_path / "run7" / "latest.pt", weights_only=True)["predictor"]
    from model.predictor import build_model
    from train.checkpoint import transfer_weights

    model = build_model(16, (2, 2), "ac_test", state_dim=14, action_dim=14)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    reinit = transfer_weights(model, tmp_path / "run7" / "latest.pt")
    adapters = ["action_encoder.bias", "action_encoder.weight", "state_encoder.bias", "state_encoder.weight"]
    assert reinit == adapters
    for k, v in model.state_dict().items():
        assert torch.equal(v, fresh[k] if k in adapters else ckpt[k]), k
    with caplog.at_level(logging.INFO, logger="train"):
        result = run_train(TrainConfig(store=fourteen, out=tmp_path / "run14", preset="ac_test", frames=4, steps=3,
                                       batch_size=2, workers=0, val_every=0, init_from=tmp_path / "run7" / "latest.pt",
                                       freeze_blocks=1))
    assert result.reinitialised == adapters
    assert f"re-initialised {', '.join(adapters)} (the rest loaded)" in caplog.text  # the CLI prints it as a note
    trained = result.model.state_dict()
    assert all(torch.equal(trained[k], ckpt[k]) for k in ckpt if k.startswith("predictor_blocks.0."))  # frozen
    assert not torch.equal(trained["predictor_blocks.1.mlp.fc1.weight"], ckpt["predictor_blocks.1.mlp.fc1.weight"])


def point_store(root: Path, episodes: int = 48, steps: int = 24) -> Path:
    """A 2-D toy robot with a known answer: a point whose position is the state, moved by state-delta actions,
    seen as 2x2 tokens of 16 features that are a fixed smooth function of the position."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(2, 64)) * 1.5
    data = []
    for _ in range(episodes):
        moves = rng.uniform(-0.15, 0.15, size=(steps, 2))
        pos = np.clip(np.cumsum(moves, 0) + rng.uniform(-0.5, 0.5, size=2), -1, 1).astype(np.float32)
        features = np.tanh(pos @ w + 0.3).reshape(steps, 4, 16)
        data.append(StoredEpisode(torch.tensor(features), pos))
    return write_store(root, data, per_unit=16, codec="fp16", actions="state-delta", state_names=["x", "y"],
                       action_names=["dx", "dy"])


@pytest.fixture(scope="module")
def point(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("point")
    store = point_store(root / "store")
    run_train(TrainConfig(store=store, out=root / "run", preset="ac_test", frames=4, steps=300, batch_size=16,
                          lr=3e-3, start_lr=3e-4, workers=0, val_every=0))
    return store, root / "run" / "latest.pt"


def test_2d_robot_trains_evaluates_and_plans(point, tmp_path):
    store, ckpt = point
    cli_ok("eval", "--checkpoint", ckpt, "--store", store, "--out", tmp_path / "eval")
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["rollout_l1"][0] < report["copy_l1"][0]  # the toy is learnable in a few seconds
    assert np.mean(report["shuffled_over_true"]) > 1.05  # and the model uses its 2-D actions
    cli_ok("plan", "--checkpoint", ckpt, "--store", store, "--episode", 0, "--start", 3, "--samples", 64,
           "--iterations", 3, "--dims", "dx", "--landscape", tmp_path / "energy.png")
    assert (tmp_path / "energy.png").read_bytes()[:4] == b"\x89PNG"
    # offline planning recovers the moves between held-out frames better than not moving
    cli_ok("plan-eval", "--checkpoint", ckpt, "--store", store, "--pairs", 24, "--samples", 200, "--iterations", 6,
           "--out", tmp_path / "pe")
    mean = json.loads((tmp_path / "pe" / "report.json").read_text())["mean"]
    error, noop = mean["action_error"], mean["noop_error"]
    assert all(a < b for a, b in zip(error, noop)) and sum(error) < 0.8 * sum(noop), mean


def test_bad_robot_input_gives_one_error_line(point, tmp_path):
    store, ckpt = point
    corpus = corpora.lerobot_v21(tmp_path / "lr", [9, 11], action_of=lambda e, first, n: np.where(
        (np.arange(n) == 4)[:, None] & (e == 1), np.nan, corpora.lerobot_actions(first, n, 7)).astype(np.float32))
    code, _, err = cli_main("extract", "--corpus", corpus, "--out", tmp_path / "s", *EXTRACT, "--actions", "column:nope")
    assert_one_error_line(code, err, "--actions column:nope: no column 'nope'")
    cli_ok("extract", "--corpus", corpus, "--out", tmp_path / "s", *EXTRACT)  # default: column:action
    rows = open_store(tmp_path / "s").episodes.to_pylist()
    assert rows[0]["status"] == "ok" and rows[1]["status"] == "skipped"
    assert rows[1]["reason"] == "action column 'action' holds NaN or Inf in 1 of 11 rows (first: row 4)"
    code, _, err = cli_main("plan", "--checkpoint", ckpt, "--store", store, "--episode", 0, "--dims", "z")
    assert_one_error_line(code, err, "--dims 'z' is not an action dim of this model; it has 0..1: dx, dy")
    other = tiny_store(tmp_path / "other", episodes=4)
    run_train(TrainConfig(store=other, out=tmp_path / "small", preset="ac_test", frames=4, steps=1, batch_size=2,
                          workers=0, val_every=0))
    code, _, err = cli_main("train", "--store", other, "--out", tmp_path / "big", "--preset", "ac_demo", "--frames", 4,
                            "--init-from", tmp_path / "small" / "latest.pt")
    assert_one_error_line(code, err, "more than the input/output adapters differ")
