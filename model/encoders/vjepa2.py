"""The V-JEPA 2 ViT family: from a preset and, for real runs, a released `.pt` checkpoint or a transformers
V-JEPA 2 model (local folder or safetensors file)."""

from __future__ import annotations

from pathlib import Path

import torch

from common.errors import UserError
from common.files import file_digest

from .. import RANDOM_INIT
from ..vit import ENCODER_PRESETS, LARGE_PRESETS, PATCH, TUBELET, EncoderPreset, VisionTransformer, encoder_preset
from ..weights import (
    checkpoint_entry,
    is_transformers,
    load_checkpoint,
    load_strict,
    read_transformers,
    transformers_encoder_state,
)

ENCODER_ENTRIES = ("target_encoder", "encoder")


def _frozen(model: VisionTransformer) -> VisionTransformer:
    return model.eval().requires_grad_(False)


def _describe(p: EncoderPreset) -> str:
    return f"dim {p.dim}, depth {p.depth}, heads {p.heads}, mlp {p.mlp}, {p.image_size} px"


def config_preset(config: dict, where: Path) -> EncoderPreset:
    """The encoder a transformers VJEPA2Config describes."""
    try:
        if config.get("patch_size", PATCH) != PATCH or config.get("tubelet_size", TUBELET) != TUBELET:
            raise UserError(f"{where}/config.json: patch {config.get('patch_size')} and tubelet "
                            f"{config.get('tubelet_size')}; this pipeline takes V-JEPA 2's {PATCH} and {TUBELET}")
        dim = int(config["hidden_size"])
        return EncoderPreset(dim, int(config["num_hidden_layers"]), int(config["num_attention_heads"]),
                             int(dim * float(config.get("mlp_ratio", 4.0))), int(config.get("crop_size", 256)))
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{where}/config.json is not a V-JEPA 2 config ({type(e).__name__}: {e})") from None


def resolve_preset(preset: str, config: dict | None, where: Path | None) -> EncoderPreset:
    """--preset: "auto" takes a transformers config.json's dims (else vit_giant); a named preset must agree with it."""
    described = None if config is None else config_preset(config, where)
    if preset == "auto":
        return described or ENCODER_PRESETS["vit_giant"]
    chosen = encoder_preset(preset)
    if chosen is None:
        raise UserError(f"unknown encoder preset {preset!r}; choose auto or one of {', '.join(ENCODER_PRESETS)}")
    if described is not None and chosen != described:
        raise UserError(f"--preset {preset} ({_describe(chosen)}) contradicts {where}/config.json "
                        f"({_describe(described)}); use --preset auto")
    return chosen


def _from_state(preset: EncoderPreset, name: str, state: dict, where: str) -> VisionTransformer:
    model = VisionTransformer(preset)
    load_strict(model, state, f"encoder '{name}' of {where} ({_describe(preset)})")
    return _frozen(model)


def build(preset: str, checkpoint: Path | None = None, random_init: bool = False,
                  seed: int = 0) -> tuple[VisionTransformer, str]:
    """The encoder in eval mode without gradients, and the id of its weights for the store.

    `checkpoint`: a released .pt file, or a transformers model (folder or .safetensors). `preset`:
    a name of model.vit's, or "auto" (the transformers config's dims, else vit_giant). A large
    preset needs a checkpoint: random 1B-parameter features are worthless except for timing, so
    they take an explicit --random-init.
    """
    config = tensors = None
    if checkpoint is not None and is_transformers(checkpoint):
        tensors, config, weights_id = read_transformers(Path(checkpoint))
    spec = resolve_preset(preset, config, checkpoint)
    if checkpoint is None and spec in (ENCODER_PRESETS[p] for p in LARGE_PRESETS) and not random_init:
        raise UserError(f"preset {preset} needs --checkpoint (a local vitg.pt / vjepa2-ac-vitg.pt, or a "
                        "transformers model folder); pass --random-init to run it with random weights (timing only)")
    if tensors is not None:
        return _from_state(spec, "encoder", transformers_encoder_state(tensors), str(checkpoint)), weights_id
    if checkpoint is not None:
        name, state = checkpoint_entry(load_checkpoint(Path(checkpoint)), ENCODER_ENTRIES, checkpoint)
        return _from_state(spec, name, state, str(checkpoint)), file_digest(checkpoint)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VisionTransformer(spec)
    return _frozen(model), f"{RANDOM_INIT}{seed}"


def rebuild(store_attrs: dict | None, encoder_checkpoint: Path | None, ckpt: dict) -> VisionTransformer:
    """The encoder a store's features were made with, to encode new images the same way.

    A random encoder is rebuilt from its seed; real weights come from `encoder_checkpoint` (checked
    against the store's SHA-256) or from the encoder inside the predictor checkpoint `ckpt` itself
    (the released vjepa2-ac-vitg.pt, whose features are ViT-g's when no store attributes are known).
    """
    attrs = store_attrs or {"preset": "vit_giant", "checkpoint_sha256": None}
    weights = attrs["checkpoint_sha256"]
    if weights and weights.startswith(RANDOM_INIT):
        if encoder_checkpoint is not None:
            raise UserError(f"--encoder-checkpoint {encoder_checkpoint}: the store's encoder has random weights, "
                            "rebuilt from its seed; leave the option out")
        return build(attrs["preset"], random_init=True, seed=int(weights.removeprefix(RANDOM_INIT)))[0]
    if encoder_checkpoint is not None:
        encoder, got = build(attrs["preset"], checkpoint=encoder_checkpoint)
        if weights and got != weights:
            raise UserError(f"{encoder_checkpoint} is not the encoder the features were made with "
                            f"(sha256 {got[:12]}... vs {weights[:12]}...)")
        return encoder
    if any(isinstance(ckpt.get(e), dict) for e in ENCODER_ENTRIES):
        name, state = checkpoint_entry(ckpt, ENCODER_ENTRIES, "the predictor checkpoint")
        return _from_state(resolve_preset(attrs["preset"], None, None), name, state, "the predictor checkpoint")
    raise UserError("give --encoder-checkpoint: the encoder the store's features were made with")
