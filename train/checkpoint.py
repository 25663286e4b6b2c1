"""Our checkpoints: what they hold, writing them safely, and loading a trained predictor.

A checkpoint is a dict:
    predictor    the weights, under the released key names (so --init-from takes either file)
    model_meta   what rebuilds the model: preset, feature_dim, grid
    store        the store's attributes (encoder identity, preprocessing) the features came from
    split        the train/validation split: val_fraction, seed, clip frames
    config       the TrainConfig of the run (common.settings.as_dict)
    optimizer, step   to resume
The released vjepa2-ac-vitg.pt holds only `predictor` (and `encoder`): an ac_vitg on ViT-g features.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from common.errors import UserError
from common.files import atomic_write
from extract.weights import checkpoint_entry, load_checkpoint, load_strict
from store import Store

from .data import split_episodes
from .predictor import ACPredictor, build_model

RELEASED_META = {"preset": "ac_vitg", "feature_dim": 1408, "grid": [16, 16]}  # vjepa2-ac-vitg.pt


def model_meta(preset: str, store: Store) -> dict:
    return {"preset": preset, "feature_dim": store.config.feature_dim, "grid": list(store.config.grid)}


def save_checkpoint(path: Path, obj: dict) -> None:
    atomic_write(Path(path), lambda tmp: torch.save(obj, tmp))


def link_latest(out: Path, step_file: Path, keep_last: int) -> None:
    """Point out/latest.pt at step_file (a hard link: no second write) and drop all but the newest step files."""
    atomic_write(out / "latest.pt", lambda tmp: os.link(step_file, tmp))
    for old in sorted(out.glob("step_*.pt"))[:-keep_last]:
        old.unlink()


def check_fits(ckpt: dict, store: Store, what: str) -> None:
    """A checkpoint of ours is only valid on features of the same dim and grid."""
    want = ckpt["model_meta"]
    have = {"feature_dim": store.config.feature_dim, "grid": list(store.config.grid)}
    got = {"feature_dim": want["feature_dim"], "grid": list(want["grid"])}
    if got != have:
        raise UserError(f"{what} was trained on features {got}, the store {store.root} holds {have}")


def load_predictor_weights(model: ACPredictor, path: Path, ckpt: dict | None = None) -> None:
    """Load a `predictor` entry (released vjepa2-ac-vitg.pt or our own checkpoint) strictly."""
    _, state = checkpoint_entry(ckpt if ckpt is not None else load_checkpoint(path), ("predictor",), path)
    embed = state.get("predictor_embed.weight")
    own = model.predictor_embed.weight
    if embed is not None and embed.shape[1] != own.shape[1]:
        raise UserError(f"{path}: the predictor takes {embed.shape[1]}-dim features, the store holds "
                        f"{own.shape[1]}-dim ones; extract with the matching encoder")
    load_strict(model, state, f"predictor of {path}")


def load_trained(path: Path, store: Store | None = None) -> tuple[ACPredictor, dict]:
    """A predictor (eval mode) from one of our checkpoints, or from the released vjepa2-ac-vitg.pt
    (an ac_vitg model on ViT-g features), checked against `store` if given. Returns it and the checkpoint."""
    ckpt = load_checkpoint(path)
    meta = ckpt.get("model_meta", RELEASED_META)
    if store is not None:
        if "model_meta" in ckpt:
            check_fits(ckpt, store, str(path))
        meta = {**meta, "feature_dim": store.config.feature_dim, "grid": store.config.grid}
    model = build_model(meta["feature_dim"], meta["grid"], meta["preset"])
    load_predictor_weights(model, path, ckpt)
    return model.eval(), ckpt


def episodes_of(ckpt: dict, store: Store, which: str) -> list[int]:
    """The run's validation episodes (its seeded split, from the checkpoint) or, for "all", every ok episode."""
    if which == "all":
        return store.ok_episodes
    if "split" not in ckpt:
        raise UserError("this checkpoint records no train/val split (not one of ours): use --episodes all")
    split = ckpt["split"]
    val = split_episodes(store, split["val_fraction"], split["seed"])[1]
    if not val:
        raise UserError("the run had no validation episodes (--val-fraction 0): use --episodes all")
    return val
