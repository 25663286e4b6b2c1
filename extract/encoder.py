"""Building the frozen frame encoder: from a preset and, for real runs, a released checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch

from common.errors import UserError
from common.files import sha256_file

from .vit import ENCODER_PRESETS, LARGE_PRESETS, VisionTransformer
from .weights import checkpoint_entry, load_checkpoint, load_strict

ENCODER_ENTRIES = ("target_encoder", "encoder")
RANDOM_INIT = "random-init-seed"  # + seed: the weights id of a random encoder, rebuilt from its seed


def _frozen(model: VisionTransformer) -> VisionTransformer:
    return model.eval().requires_grad_(False)


def _from_checkpoint(preset: str, ckpt: dict, where: str) -> VisionTransformer:
    name, state = checkpoint_entry(ckpt, ENCODER_ENTRIES, where)
    model = VisionTransformer(ENCODER_PRESETS[preset])
    load_strict(model, state, f"encoder '{name}' of {where} for preset {preset}")
    return _frozen(model)


def build_encoder(preset: str, checkpoint: Path | None = None, random_init: bool = False,
                  seed: int = 0) -> tuple[VisionTransformer, str]:
    """The encoder in eval mode without gradients, and the id of its weights for the store.

    A large preset needs a checkpoint: random 1B-parameter features are worthless except for
    timing, so they take an explicit --random-init.
    """
    if preset not in ENCODER_PRESETS:
        raise UserError(f"unknown encoder preset {preset!r}; choose one of {', '.join(ENCODER_PRESETS)}")
    if checkpoint is None and preset in LARGE_PRESETS and not random_init:
        raise UserError(f"preset {preset} needs --checkpoint (a local vitg.pt / vjepa2-ac-vitg.pt ...); "
                        "pass --random-init to run it with random weights (timing only)")
    if checkpoint is not None:
        return _from_checkpoint(preset, load_checkpoint(Path(checkpoint)), str(checkpoint)), sha256_file(checkpoint)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VisionTransformer(ENCODER_PRESETS[preset])
    return _frozen(model), f"{RANDOM_INIT}{seed}"


def store_encoder(store_attrs: dict | None, encoder_checkpoint: Path | None, ckpt: dict) -> VisionTransformer:
    """The encoder a store's features were made with, to encode new images the same way.

    A random encoder is rebuilt from its seed; real weights come from `encoder_checkpoint` (checked
    against the store's SHA-256) or from the encoder inside the predictor checkpoint `ckpt` itself
    (the released vjepa2-ac-vitg.pt, whose features are ViT-g's when no store attributes are known).
    """
    attrs = store_attrs or {"preset": "vit_giant", "checkpoint_sha256": None}
    weights = attrs["checkpoint_sha256"]
    if weights and weights.startswith(RANDOM_INIT):
        return build_encoder(attrs["preset"], random_init=True, seed=int(weights.removeprefix(RANDOM_INIT)))[0]
    if encoder_checkpoint is not None:
        encoder, got = build_encoder(attrs["preset"], checkpoint=encoder_checkpoint)
        if weights and got != weights:
            raise UserError(f"{encoder_checkpoint} is not the encoder the features were made with "
                            f"(sha256 {got[:12]}... vs {weights[:12]}...)")
        return encoder
    if any(isinstance(ckpt.get(e), dict) for e in ENCODER_ENTRIES):
        return _from_checkpoint(attrs["preset"], ckpt, "the predictor checkpoint")
    raise UserError("give --encoder-checkpoint: the encoder the store's features were made with")
