"""A trained predictor as its users load it: the typed ModelMeta, loading, and the fit to a store.

A checkpoint (ours, or our safetensors export) is a dict:
    predictor    the weights, under the released key names (so --init-from takes either file)
    model_meta   ModelMeta.to_dict(): what rebuilds the model and what it was trained on
    store        the attributes of the store its features came from (ModelMeta.encoder)
    split, config, optimizer, step   what training adds (train/checkpoint.py)
The released vjepa2-ac-vitg.pt holds only `predictor` (and `encoder`): RELEASED_META.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from common.errors import UserError

from .predictor import ACPredictor, build_model
from .weights import checkpoint_entry, load_checkpoint, load_strict

FITS = ("feature_dim", "grid", "state_dim", "action_dim", "actions")  # what must agree with a store it is used on


@dataclass(frozen=True)
class ModelMeta:
    """What rebuilds a predictor and what it was trained on; derive a changed one with dataclasses.replace."""

    preset: str
    feature_dim: int
    grid: tuple[int, int]
    state_dim: int
    action_dim: int
    actions: str  # store.actions: pose-delta | state-delta | column:KEY
    normalization: dict | None = None  # z-scoring of states and actions on the way in (normalization_from_stats)
    state_names: tuple[str, ...] | None = None
    action_names: tuple[str, ...] | None = None
    stats: dict | None = None  # the store's per-dim statistics: they bound the planner's search
    encoder: dict | None = None  # the store's attributes: which encoder and preprocessing made the features
    action_conditioning: str = "token"  # how actions reach the frame tokens (model.predictor)

    @classmethod
    def of_store(cls, preset: str, store, normalization: dict | None,
                 action_conditioning: str = "token") -> ModelMeta:
        """A new model on `store`'s features, states and actions."""
        c = store.config
        return cls(preset, c.feature_dim, tuple(c.grid), c.state_dim, c.action_dim, c.actions, normalization,
                   c.state_names, c.action_names, store.stats, c.to_attrs(), action_conditioning)

    @classmethod
    def of_checkpoint(cls, ckpt: dict) -> ModelMeta:
        """The metadata of one of our checkpoints (any version of them), or RELEASED_META."""
        if "model_meta" not in ckpt:
            return RELEASED_META
        saved = ckpt["model_meta"]
        values = {f.name: saved.get(f.name, f.default) for f in fields(cls) if f.name != "encoder"}  # older: defaults
        for key in ("grid", "state_names", "action_names"):
            values[key] = None if values[key] is None else tuple(values[key])
        return cls(**values, encoder=ckpt.get("store"))

    def to_dict(self) -> dict:
        """A checkpoint's `model_meta` (plain JSON types; the encoder goes to its `store` entry)."""
        out = asdict(self)
        del out["encoder"]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    def build(self, **kw) -> ACPredictor:
        return build_model(self.feature_dim, self.grid, self.preset, self.state_dim, self.action_dim,
                           self.normalization, action_conditioning=self.action_conditioning, **kw)

    def check_fits(self, store, what: str) -> None:
        """A model is only valid on features of the same dim and grid, and on the same state and action space."""
        c = store.config
        have = {"feature_dim": c.feature_dim, "grid": tuple(c.grid), "state_dim": c.state_dim,
                "action_dim": c.action_dim, "actions": c.actions}
        diff = {k: getattr(self, k) for k in FITS if getattr(self, k) != have[k]}
        if diff:
            raise UserError(f"{what} was trained on {diff}, the store {store.root} holds "
                            f"{ {k: have[k] for k in diff} }")


# vjepa2-ac-vitg.pt: an ac_vitg on ViT-g features, DROID's 7-D pose-delta actions in metres and radians
RELEASED_META = ModelMeta("ac_vitg", 1408, (16, 16), 7, 7, "pose-delta")


def load_predictor_weights(model: ACPredictor, path: Path, ckpt: dict | None = None) -> None:
    """Load a `predictor` entry (released vjepa2-ac-vitg.pt or our own checkpoint) strictly."""
    _, state = checkpoint_entry(ckpt if ckpt is not None else load_checkpoint(path), ("predictor",), path)
    embed = state.get("predictor_embed.weight")
    own = model.predictor_embed.weight
    if embed is not None and embed.shape[1] != own.shape[1]:
        raise UserError(f"{path}: the predictor takes {embed.shape[1]}-dim features, not {own.shape[1]}-dim ones (the "
                        "store's; a released-layout file without a store is taken for ViT-g's); extract with the "
                        "matching encoder, or use our checkpoint or safetensors export, which carry their dims")
    load_strict(model, state, f"predictor of {path}")


def load_trained(path: Path, store=None) -> tuple[ACPredictor, ModelMeta, dict]:
    """A predictor (eval mode), its metadata and the checkpoint, from one of our checkpoints or exports, or from
    the released vjepa2-ac-vitg.pt (an ac_vitg model on ViT-g features), checked against `store` if given."""
    ckpt = load_checkpoint(path)
    meta = ModelMeta.of_checkpoint(ckpt)
    if store is not None:
        if "model_meta" not in ckpt:  # the released predictor: feature dim and grid follow the store (the strict
            meta = replace(meta, feature_dim=store.config.feature_dim, grid=tuple(store.config.grid),  # load checks)
                           stats=store.stats)
        meta.check_fits(store, str(path))
    model = meta.build()
    load_predictor_weights(model, path, ckpt)
    return model.eval(), meta, ckpt
