"""Weights from where users get them: transformers V-JEPA 2 encoders in, portable predictors out."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from common.errors import UserError
from model.checkpoint import load_predictor_weights, load_trained
from model.encoders import build_encoder
from model.predictor import PREDICTOR_PRESETS, ACPredictor
from tests.conftest import assert_one_error_line, cli_main
from tests.fake_store import tiny_store
from train.config import ExportConfig, TrainConfig
from train.export import run_export
from train.loop import run_train

# a tiny V-JEPA 2 in transformers' own layout: 2 layers, 32 dims, 2 heads, MLP 64, 64 px (a 4 x 4 grid)
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2.0, crop_size=64, patch_size=16,
            tubelet_size=2, pred_hidden_size=16, pred_num_attention_heads=2, pred_num_hidden_layers=1)


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory) -> tuple[Path, Path, object]:
    """The same random transformers VJEPA2Model saved whole and in shards (save_pretrained, no network)."""
    transformers = pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    model = transformers.VJEPA2Model(transformers.VJEPA2Config(**TINY)).eval()
    model.save_pretrained(root / "whole")
    model.save_pretrained(root / "sharded", max_shard_size="40KB")
    return root / "whole", root / "sharded", model


def test_transformers_encoder_gives_our_outputs(hf_model):
    whole, sharded, reference = hf_model
    assert len(list(sharded.glob("model-*-of-*.safetensors"))) > 1 and (sharded / "model.safetensors.index.json").exists()
    frames = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # transformers' own forward, on each frame repeated to a 2-frame clip
        expected = reference(pixel_values_videos=frames.unsqueeze(1).repeat(1, 2, 1, 1, 1),
                             skip_predictor=True).last_hidden_state
    ids = set()
    for path in (whole, sharded):
        encoder, weights_id = build_encoder("auto", path)  # the dims come from config.json
        assert (encoder.preset.dim, encoder.preset.depth, encoder.preset.heads, encoder.preset.mlp,
                encoder.preset.image_size) == (32, 2, 2, 64, 64)
        with torch.no_grad():
            assert float((encoder(frames) - expected).abs().max()) < 1e-5
        ids.add(weights_id)
    assert len(ids) == 2 and all(len(i) == 64 for i in ids)  # a file's SHA-256; for shards, of their SHA-256s
    single = build_encoder("vit_32x2x2x64@64", whole / "model.safetensors")[0]  # a bare file: the preset names dims
    with torch.no_grad():
        assert float((single(frames) - expected).abs().max()) < 1e-5


def test_a_sharded_folder_with_a_bad_index_is_one_line(hf_model, tmp_path):
    _, sharded, _ = hf_model
    broken = tmp_path / "broken"
    shutil.copytree(sharded, broken)
    for text in ('{"metadata": {}}', "not json"):
        (broken / "model.safetensors.index.json").write_text(text)
        with pytest.raises(UserError, match="model.safetensors.index.json is unreadable or has no weight_map"):
            build_encoder("auto", broken)


def test_transformers_config_that_contradicts_the_preset(hf_model, tmp_path):
    whole, _, _ = hf_model
    from tests import corpora

    corpora.droid_episode(tmp_path / "corpus", "a", steps=12)
    code, _, err = cli_main("extract", "--corpus", tmp_path / "corpus", "--out", tmp_path / "s", "--checkpoint", whole,
                            "--preset", "vit_test")
    assert_one_error_line(code, err, "--preset vit_test (dim 32, depth 2, heads 1, mlp 64, 64 px) contradicts")
    r = cli_main("extract", "--corpus", tmp_path / "corpus", "--out", tmp_path / "s", "--checkpoint", whole,
                 "--workers", 0)
    assert r[0] == 0, r[2]
    from store import open_store

    config = open_store(tmp_path / "s").config
    assert (config.preset, config.grid, config.feature_dim) == ("vit_32x2x2x64@64", (4, 4), 32)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("export")
    store = tiny_store(root / "store", episodes=6)
    run_train(TrainConfig(store=store, out=root / "run", preset="ac_test", frames=4, steps=2, batch_size=2,
                          workers=0, val_every=0))
    return store, root / "run" / "latest.pt"


def test_safetensors_export_round_trips(trained, tmp_path):
    from store import open_store

    store, ckpt = trained
    result = run_export(ExportConfig(checkpoint=ckpt, out=tmp_path / "model"))
    assert result.path == tmp_path / "model.safetensors"
    original, _, _ = load_trained(ckpt, open_store(store))
    exported, meta, _ = load_trained(result.path, open_store(store))
    assert meta.state_dim == 7 and meta.encoder["checkpoint_sha256"] == "random-init"
    g = torch.Generator().manual_seed(2)
    x = (torch.randn(2, 3, 4, 16, generator=g), torch.randn(2, 3, 7, generator=g), torch.randn(2, 3, 7, generator=g))
    with torch.no_grad():
        assert torch.equal(original(*x), exported(*x))
    run = run_train(TrainConfig(store=store, out=tmp_path / "again", preset="ac_test", frames=4, steps=1,
                                batch_size=2, workers=0, val_every=0, init_from=result.path))
    assert run.reinitialised == []  # --init-from takes the export too


def test_released_layout_export_loads_strictly(trained, tmp_path):
    _, ckpt = trained
    out = run_export(ExportConfig(checkpoint=ckpt, out=tmp_path / "ac.pt", format="released")).path
    saved = torch.load(out, weights_only=True)
    assert set(saved) == {"predictor"} and all(k.startswith("module.predictor") or k.startswith("module.action")
                                              or k.startswith("module.state") or k.startswith("module.extrinsics")
                                              for k in saved["predictor"])
    model = ACPredictor(16, (2, 2), PREDICTOR_PRESETS["ac_test"])  # a module built from the released key names
    load_predictor_weights(model, out)  # the released-checkpoint path, strict
    reference = torch.load(ckpt, weights_only=True)["predictor"]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in reference.items())
    code, _, err = cli_main("export", out, tmp_path / "again")
    assert_one_error_line(code, err, "is not one of our checkpoints")


DATA = Path(__file__).parent / "data"


def test_a_checkpoint_from_before_model_meta_was_typed_still_loads_evaluates_and_resumes(tmp_path):
    """ac_test-df4bea0.pt: 2 steps of `cli.py train --preset ac_test --frames 3 --batch-size 2` on
    fake_store.complete_store, written by the code of commit df4bea0; its `eval --episodes all` report then."""
    import json

    from model.checkpoint import ModelMeta
    from tests.fake_store import complete_store
    from train.config import EvalConfig
    from train.evaluate import run_eval

    old = torch.load(DATA / "ac_test-df4bea0.pt", weights_only=True)
    meta = ModelMeta.of_checkpoint(old)
    assert meta.to_dict() == {**old["model_meta"], "action_conditioning": "token"}  # the default it predates
    assert meta.encoder == old["store"]
    assert (meta.preset, meta.feature_dim, meta.grid, meta.actions) == ("ac_test", 32, (4, 4), "pose-delta")
    store = complete_store(tmp_path / "store")
    report = run_eval(EvalConfig(checkpoint=DATA / "ac_test-df4bea0.pt", store=str(store), episodes="all",
                                 out=tmp_path / "eval", device="cpu")).metrics
    expect = json.loads((DATA / "ac_test-df4bea0-eval.json").read_text())
    for key in ("tf_l1", "rollout_l1", "copy_l1", "shuffled_over_true", "zero_over_true"):
        assert torch.allclose(torch.tensor(report[key]), torch.tensor(expect[key]), rtol=1e-5), key
    run = tmp_path / "run"
    run.mkdir()
    (run / "latest.pt").write_bytes((DATA / "ac_test-df4bea0.pt").read_bytes())
    result = run_train(TrainConfig(store=str(store), out=run, preset="ac_test", steps=3, batch_size=2, frames=3,
                                   workers=0, val_every=2, ckpt_every=2, resume=True, device="cpu"))
    assert result.start_step == 2 and (run / "step_00000003.pt").exists()
