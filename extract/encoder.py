"""Building the frozen frame encoder from a preset and, for real runs, a released checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch

from store import UserError

from .vit import ENCODER_PRESETS, LARGE_PRESETS, VisionTransformer
from .weights import load_strict, read_entry, sha256_file

ENCODER_ENTRIES = ("target_encoder", "encoder")


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
        name, state = read_entry(Path(checkpoint), ENCODER_ENTRIES)
        model = VisionTransformer(ENCODER_PRESETS[preset])
        load_strict(model, state, f"encoder '{name}' of {checkpoint} for preset {preset}")
        weights_id = sha256_file(Path(checkpoint))
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = VisionTransformer(ENCODER_PRESETS[preset])
        weights_id = f"random-init-seed{seed}"
    return model.eval().requires_grad_(False), weights_id
