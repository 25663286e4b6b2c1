"""Trained predictors out of the project: safetensors with their metadata, or the released .pt layout."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from common.errors import UserError
from common.files import atomic_write, output_file
from model.weights import EXPORT_KEY, load_checkpoint

from .config import ExportConfig

CARRIED = ("model_meta", "store", "split")  # what a user of the weights needs: rebuild, normalise, encode alike


@dataclass
class ExportResult:
    path: Path
    tensors: int
    encoder: bool  # whether an encoder entry was written


def run_export(cfg: ExportConfig) -> ExportResult:
    """`cli.py export`: the checkpoint's predictor under the released key names, as safetensors (with the
    model metadata, the store's encoder identity and the split as JSON metadata) or as a released-layout .pt."""
    from model.encoders import store_encoder

    ckpt = load_checkpoint(cfg.checkpoint)
    if "model_meta" not in ckpt:
        raise UserError(f"{cfg.checkpoint} is not one of our checkpoints (no model_meta); the released file is "
                        "already in the released layout")
    if cfg.encoder_checkpoint is not None and cfg.format != "released":
        raise UserError("--encoder-checkpoint is for --format released (safetensors carry no encoder)")
    suffix = ".safetensors" if cfg.format == "safetensors" else ".pt"
    out = output_file(cfg.out if cfg.out.suffix == suffix else cfg.out.with_name(cfg.out.name + suffix), "OUT")
    if out.exists() and out.resolve() == Path(cfg.checkpoint).resolve():
        raise UserError(f"OUT {out} is the checkpoint being exported: write the export elsewhere")
    predictor = {k: v.contiguous() for k, v in ckpt["predictor"].items()}
    if cfg.format == "safetensors":
        from safetensors.torch import save_file

        meta = {EXPORT_KEY: json.dumps({k: ckpt[k] for k in CARRIED if k in ckpt})}
        atomic_write(out, lambda tmp: save_file(predictor, tmp, metadata=meta))
        return ExportResult(out, len(predictor), False)
    conditioning = ckpt["model_meta"].get("action_conditioning", "token")
    if conditioning != "token":
        raise UserError(f"{cfg.checkpoint}: a model with --action-conditioning {conditioning} has no released layout "
                        "(the official code gives actions only their token); export it as safetensors")
    released = {"predictor": {f"module.{k}": v for k, v in predictor.items()}}
    if cfg.encoder_checkpoint is not None:  # checked against the store's weights id
        encoder = store_encoder(ckpt.get("store"), cfg.encoder_checkpoint, {})
        released["encoder"] = {f"module.{k}": v for k, v in encoder.state_dict().items()}
    atomic_write(out, lambda tmp: torch.save(released, tmp))
    return ExportResult(out, len(predictor), "encoder" in released)
