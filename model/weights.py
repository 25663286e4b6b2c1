"""Loading weights: the released V-JEPA 2 / V-JEPA 2-AC `.pt` files and transformers safetensors (local only)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from common.errors import UserError
from common.files import file_digest

PREFIXES = ("module.", "backbone.")


EXPORT_KEY = "vjepa2_ac"  # safetensors metadata of `cli.py export`: the checkpoint's entries besides the weights


def load_checkpoint(path: Path) -> dict:
    """A local checkpoint dict: torch.load of a .pt (memory-mapped), or a .safetensors predictor export
    (`predictor` plus the entries in its metadata). One-line errors."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"checkpoint {path} is a folder, not a checkpoint file")
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found (weights are never downloaded; give a local .pt file)")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(path, "pt") as f:
                meta = json.loads((f.metadata() or {}).get(EXPORT_KEY, "{}"))
                return {**meta, "predictor": {k: f.get_tensor(k) for k in f.keys()}}
        except Exception as e:  # noqa: BLE001 - any unreadable file is the user's to fix
            raise UserError(f"checkpoint {path} is not a readable safetensors file ({type(e).__name__}: {e})") from None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise UserError(f"checkpoint {path} is not a readable PyTorch file ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict):
        raise UserError(f"checkpoint {path} holds a {type(ckpt).__name__}, expected a dict")
    return ckpt


def checkpoint_entry(ckpt: dict, entries: tuple[str, ...], path: Path | str) -> tuple[str, dict[str, torch.Tensor]]:
    """The first of `entries` found in the checkpoint, with `module.` / `backbone.` prefixes stripped."""
    name = next((e for e in entries if isinstance(ckpt.get(e), dict)), None)
    if name is None:
        raise UserError(f"checkpoint {path} has none of the entries {list(entries)}; "
                        f"it has {sorted(map(str, ckpt))[:12]}")
    state = {}
    for key, value in ckpt[name].items():
        while key.startswith(PREFIXES):
            key = key.split(".", 1)[1]
        state[key] = value
    return name, state


def _names(keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """load_state_dict(strict=True), with one readable message naming every kind of mismatch."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k} (checkpoint {list(state[k].shape)}, model {list(own[k].shape)})"
        for k in set(own) & set(state) if own[k].shape != state[k].shape
    )
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {_names(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {_names(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} of another shape: {_names(shapes, 3)}")
    if problems:
        raise UserError(f"{what} does not fit the model: " + "; ".join(problems))
    module.load_state_dict(state, strict=True)


# ---------------------------------------------------------------- transformers (Hugging Face) layout

def is_transformers(path: Path) -> bool:
    """A local transformers model folder (config.json + safetensors) or a single .safetensors file."""
    path = Path(path)
    return path.suffix == ".safetensors" or (path.is_dir() and (path / "config.json").is_file())


def read_transformers(path: Path) -> tuple[dict[str, torch.Tensor], dict | None, str]:
    """(tensors, config.json or None, weights id) of a transformers model: one safetensors file, or a folder
    holding model.safetensors or the shards its index lists. The id is the file's SHA-256, or for shards
    the SHA-256 of their sorted SHA-256s. Nothing is ever downloaded."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint {path} not found (weights are never downloaded; give a local folder or file)")
    config = None
    if path.is_dir():
        try:
            config = json.loads((path / "config.json").read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"{path}/config.json is unreadable ({e})") from None
        index = path / "model.safetensors.index.json"
        if index.is_file():
            try:
                files = sorted({path / f for f in json.loads(index.read_text())["weight_map"].values()})
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
                raise UserError(f"{index} is unreadable or has no weight_map ({type(e).__name__}: {e})") from None
        else:
            files = [path / "model.safetensors"]
    else:
        files = [path]
    tensors, digests = {}, []
    for f in files:
        try:
            tensors.update(load_file(f))
        except Exception as e:  # noqa: BLE001 - missing or damaged file: the user's to fix
            raise UserError(f"cannot read {f} as safetensors ({type(e).__name__}: {e})") from None
        digests.append(file_digest(f))
    weights_id = digests[0] if len(digests) == 1 else hashlib.sha256("".join(sorted(digests)).encode()).hexdigest()
    return tensors, config, weights_id


def transformers_encoder_state(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers VJEPA2 encoder keys -> ours (SPEC §8); the predictor, pooler and classifier are dropped.

    encoder.embeddings.patch_embeddings.proj -> patch_embed.proj; encoder.layer.N -> blocks.N with
    attention.{query,key,value} fused into attn.qkv (in that order) and attention.proj -> attn.proj;
    encoder.layernorm -> norm.
    """
    out = {}
    for key, value in tensors.items():
        key = key.removeprefix("vjepa2.")  # VJEPA2ForVideoClassification wraps the model
        if not key.startswith("encoder."):
            continue
        key = key.removeprefix("encoder.")
        key = key.replace("embeddings.patch_embeddings.proj.", "patch_embed.proj.")
        key = "norm." + key.removeprefix("layernorm.") if key.startswith("layernorm.") else key
        key = "blocks." + key.removeprefix("layer.") if key.startswith("layer.") else key
        out[key.replace(".attention.proj.", ".attn.proj.")] = value
    for name in [k for k in out if ".attention.query." in k]:
        block, param = name.split(".attention.query.")
        out[f"{block}.attn.qkv.{param}"] = torch.cat([out.pop(f"{block}.attention.{p}.{param}")
                                                       for p in ("query", "key", "value")])
    return out
