"""Our checkpoints: what they hold, writing them safely, and loading a trained predictor.

A checkpoint is a dict:
    predictor    the weights, under the released key names (so --init-from takes either file)
    model_meta   what rebuilds and uses the model: preset, feature_dim, grid, state_dim, action_dim,
                 normalization, and the store's action space (actions, names) and statistics
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

import logging

from common.errors import UserError
from common.files import atomic_write
from model.weights import checkpoint_entry, load_checkpoint, load_strict
from store import Store

from .data import split_episodes
from model.predictor import ACPredictor, build_model

log = logging.getLogger(__name__)
# vjepa2-ac-vitg.pt: an ac_vitg on ViT-g features, DROID's 7-D pose-delta actions in metres and radians
RELEASED_META = {"preset": "ac_vitg", "feature_dim": 1408, "grid": [16, 16], "state_dim": 7, "action_dim": 7,
                 "normalization": None, "actions": "pose-delta", "state_names": None, "action_names": None,
                 "stats": None}
ARCHITECTURE = ("feature_dim", "grid", "preset", "state_dim", "action_dim", "normalization")  # build_model's
# ...and what must agree with the store a model is used on
FITS = ("feature_dim", "grid", "state_dim", "action_dim", "actions")
ADAPTERS = ("action_encoder.", "state_encoder.", "predictor_embed.", "predictor_proj.")  # --init-from may re-init


def model_meta(preset: str, store: Store, normalization: dict | None) -> dict:
    c = store.config
    return {"preset": preset, "feature_dim": c.feature_dim, "grid": list(c.grid), "state_dim": c.state_dim,
            "action_dim": c.action_dim, "normalization": normalization, "actions": c.actions,
            "state_names": c.state_names and list(c.state_names),
            "action_names": c.action_names and list(c.action_names), "stats": store.stats}


def meta_of(ckpt: dict) -> dict:
    """The model metadata of one of our checkpoints, or that of the released predictor."""
    return ckpt.get("model_meta", RELEASED_META)


def build_from_meta(meta: dict, **kw) -> ACPredictor:
    return build_model(**{k: meta[k] for k in ARCHITECTURE}, **kw)


def save_checkpoint(path: Path, obj: dict) -> None:
    atomic_write(Path(path), lambda tmp: torch.save(obj, tmp))


def link_latest(out: Path, step_file: Path, keep_last: int) -> None:
    """Point out/latest.pt at step_file (a hard link: no second write) and drop all but the newest step files."""
    atomic_write(out / "latest.pt", lambda tmp: os.link(step_file, tmp))
    for old in sorted(out.glob("step_*.pt"))[:-keep_last]:
        old.unlink()


def check_fits(meta: dict, store: Store, what: str) -> None:
    """A model is only valid on features of the same dim and grid, and on the same state and action space."""
    c = store.config
    have = {"feature_dim": c.feature_dim, "grid": list(c.grid), "state_dim": c.state_dim, "action_dim": c.action_dim,
            "actions": c.actions}
    got = {k: list(meta[k]) if k == "grid" else meta[k] for k in FITS}
    if got != have:
        diff = {k: got[k] for k in FITS if got[k] != have[k]}
        raise UserError(f"{what} was trained on {diff}, the store {store.root} holds "
                        f"{ {k: have[k] for k in diff} }")


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
    (an ac_vitg model on ViT-g features), checked against `store` if given. Returns it and the
    checkpoint, whose `model_meta` is filled in for the released file."""
    ckpt = load_checkpoint(path)
    meta = meta_of(ckpt)
    if store is not None:
        if "model_meta" not in ckpt:  # the released predictor: feature dim and grid follow the store (the strict
            meta = {**meta, "feature_dim": store.config.feature_dim, "grid": list(store.config.grid),  # load checks)
                    "stats": store.stats}
        check_fits(meta, store, str(path))
    model = build_from_meta(meta)
    load_predictor_weights(model, path, ckpt)
    return model.eval(), {**ckpt, "model_meta": meta}


def transfer_weights(model: ACPredictor, path: Path) -> list[str]:
    """--init-from: load every tensor of a predictor checkpoint that fits the model. Input and output
    adapters that do not (another robot's state/action dims, another encoder's feature dim) keep their
    fresh SPEC §3 init; anything else that differs is refused. Returns the re-initialised tensors."""
    _, state = checkpoint_entry(load_checkpoint(path), ("predictor",), path)
    own = model.state_dict()
    misfit = sorted({k for k in own if k not in state or state[k].shape != own[k].shape} | (set(state) - set(own)))
    blocked = [k for k in misfit if not k.startswith(ADAPTERS)]
    if blocked:
        shown = ", ".join(f"{k} ({list(state[k].shape) if k in state else 'absent'} vs "
                          f"{list(own[k].shape) if k in own else 'absent'})" for k in blocked[:4])
        raise UserError(f"--init-from {path}: more than the input/output adapters differ ({len(blocked)} "
                        f"tensors, e.g. {shown}): another predictor preset?")
    fresh = {k.split(".")[0] for k in misfit}  # whole adapters, weight and bias
    reinit = sorted(k for k in own if k.split(".")[0] in fresh)
    model.load_state_dict({k: own[k] if k in reinit else state[k] for k in own})
    if reinit:
        log.info("--init-from %s: re-initialised %s (the rest loaded)", path, ", ".join(reinit))
    return reinit


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
