"""Which torch device a process uses, and how models run on it: one rule for extraction, training,
evaluation and planning."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .errors import UserError

if TYPE_CHECKING:
    import torch


def pick_device(name: str | None = None) -> "torch.device":
    """`name` if given (checked), else cuda:$LOCAL_RANK when CUDA is available (torchrun), else cpu."""
    import torch

    if name is None:
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", 0))
            if local >= torch.cuda.device_count():
                raise UserError(f"local rank {local} has no GPU of its own ({torch.cuda.device_count()} here): "
                                "start at most that many processes per node, or pass --device cpu")
            return torch.device("cuda", local)
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UserError(f"--device {name!r} is not a torch device (cpu, cuda, cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type != "cpu":
        raise UserError(f"--device {name!r}: only cpu and cuda devices are supported")
    return device


def rank_world(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world size): the given values, else torchrun's RANK / WORLD_SIZE, else (0, 1)."""
    try:
        rank = rank if rank is not None else int(os.environ.get("RANK", 0))
        world = world_size if world_size is not None else int(os.environ.get("WORLD_SIZE", 1))
    except ValueError:
        raise UserError(f"RANK={os.environ.get('RANK')!r} and WORLD_SIZE={os.environ.get('WORLD_SIZE')!r} must be "
                        "whole numbers") from None
    if world < 1 or not 0 <= rank < world:
        raise UserError(f"rank {rank} is not in 0..world_size-1 (world_size {world})")
    return rank, world


def bf16_autocast(device: "torch.device") -> "torch.autocast":
    """bf16 autocast on a CUDA device, a no-op on the CPU: the precision of every model call."""
    import torch

    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
