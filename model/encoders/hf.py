"""Any transformers vision backbone from a local folder (DINOv2, DINOv2 with registers, SigLIP and CLIP vision
towers, ...): its patch tokens of the last hidden state, the class and register tokens dropped; image size,
patch size and normalisation from the folder's config.json and preprocessor_config.json."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from common.errors import UserError

from ..preprocess import IMAGENET, InputSpec
from ..weights import read_transformers

EXTRA = "pip install -e '.[hf]' (transformers)"
# model_type -> tokens before the patch tokens in the last hidden state (registers added from the config)
LEADING = {"dinov2": 1, "dinov2_with_registers": 1, "clip_vision_model": 1, "clip": 1, "siglip_vision_model": 0,
           "siglip": 0}


class HFEncoder(nn.Module):
    family = "hf"

    def __init__(self, model: nn.Module, name: str, spec: InputSpec, dim: int, grid: tuple[int, int], skip: int):
        super().__init__()
        self.model, self.name, self.input, self.dim, self.grid, self.skip = model, name, spec, dim, grid, skip

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] -> the patch tokens [B, rows * cols, D], row-major."""
        return self.model(pixel_values=frames).last_hidden_state[:, self.skip:]


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is unreadable ({e})") from None


def build(folder: Path) -> tuple[HFEncoder, str]:
    """The backbone saved in `folder` (save_pretrained's layout), frozen, and the id of its weights."""
    try:
        import transformers
    except ImportError:
        raise UserError(f"--encoder hf needs transformers: {EXTRA}") from None
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"--encoder hf takes a transformers model folder (config.json, model.safetensors); "
                        f"{folder} is not a folder")
    config = read_json(folder / "config.json")
    kind = config.get("model_type")
    if kind not in LEADING:
        raise UserError(f"{folder}: model_type {kind!r} is not a supported vision backbone; supported: "
                        f"{', '.join(LEADING)}")
    _, _, weights_id = read_transformers(folder)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # a bar per load on stderr otherwise
    model = transformers.AutoModel.from_pretrained(folder, local_files_only=True)
    if kind in ("clip", "siglip"):  # a vision-language pair: its vision tower
        model, config = model.vision_model, config["vision_config"]
    pre = read_json(folder / "preprocessor_config.json")
    crop = pre.get("crop_size") or pre.get("size") or config.get("image_size")
    size = int(crop.get("height", crop.get("shortest_edge", 0)) if isinstance(crop, dict) else crop)
    patch = int(config["patch_size"])
    if not size or size % patch:
        raise UserError(f"{folder}: image size {size} is not a multiple of the patch size {patch}")
    spec = InputSpec(size, tuple(pre.get("image_mean", IMAGENET[0])), tuple(pre.get("image_std", IMAGENET[1])))
    skip = LEADING[kind] + int(config.get("num_register_tokens", 0))
    encoder = HFEncoder(model, kind, spec, int(config["hidden_size"]), (size // patch, size // patch), skip)
    return encoder.eval().requires_grad_(False), weights_id
