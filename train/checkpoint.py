"""Training checkpoints: writing them safely, --init-from, and the run's split.

A training checkpoint is model.checkpoint's dict plus `split` (val_fraction, seed, clip frames),
`config` (the TrainConfig, common.settings.as_dict), and `optimizer` and `step` to resume.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from common.errors import UserError
from common.files import atomic_write
from model.predictor import ACPredictor
from model.weights import checkpoint_entry, load_checkpoint
from store import Store

from .data import split_episodes

log = logging.getLogger(__name__)
ADAPTERS = ("action_encoder.", "state_encoder.", "predictor_embed.", "predictor_proj.")  # --init-from may re-init


class _WholeWrites:
    """A file for torch.save that writes everything or raises, and keeps the error. torch's own writer takes a
    short write (a full disk) for success, and its closing replaces our OSError with one of its own."""

    def __init__(self, fd: int):
        self.fd, self.error = fd, None

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        try:
            while view:
                view = view[os.write(self.fd, view):]
        except OSError as e:
            self.error = self.error or e
            raise
        return len(data)

    def flush(self) -> None:
        pass


def save_checkpoint(path: Path, obj: dict) -> None:
    def write(tmp: Path) -> None:
        out = _WholeWrites(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
        try:
            torch.save(obj, out)
        except RuntimeError:
            if out.error:  # (ENOSPC: common.files names the path and the space needed)
                raise out.error from None
            raise
        finally:
            os.close(out.fd)

    atomic_write(Path(path), write, _tensor_bytes(obj))


def _tensor_bytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def link_latest(out: Path, step_file: Path, keep_last: int) -> None:
    """Point out/latest.pt at step_file (a hard link: no second write) and drop all but the newest step files."""
    atomic_write(out / "latest.pt", lambda tmp: os.link(step_file, tmp))
    for old in sorted(out.glob("step_*.pt"))[:-keep_last]:
        old.unlink()


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
