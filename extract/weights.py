"""Loading weights from the released V-JEPA 2 / V-JEPA 2-AC `.pt` files (local files only)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from common.errors import UserError

PREFIXES = ("module.", "backbone.")


def load_checkpoint(path: Path) -> dict:
    """torch.load of a local checkpoint dict (memory-mapped), with one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found (weights are never downloaded; give a local .pt file)")
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
