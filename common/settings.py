"""Settings as dataclass fields: each one's default, help and limits written once.

The CLI turns the fields of a command's config dataclass into its options (cli.py); the
dataclass checks them in `__post_init__` through `check`, so a library caller gets the same
one-line errors as a CLI user.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import typing
from dataclasses import MISSING, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from .errors import UserError

URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+:/")  # s3://, gs://, http://: a URL (one letter would be a drive)


def setting(default: Any = MISSING, help: str = "", *, min: float | None = None, gt: float | None = None,
            max: float | None = None, choices: tuple[str, ...] | None = None, arg: bool = False,
            factory: Any = None) -> Any:
    """A dataclass field with its help text and limits (min: >=, gt: >, max: <=, choices).

    `arg` makes it a positional CLI argument; `factory` builds a nested settings dataclass.
    """
    meta = {"help": help, "min": min, "gt": gt, "max": max, "choices": choices, "arg": arg}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


SEED_MAX = 2**31 - 1  # fits every generator here, with room for the offsets runs add to a seed


def seed_setting(help: str) -> Any:
    """A seed option: 0 by default, 0 .. SEED_MAX."""
    return setting(0, help, min=0, max=SEED_MAX)


def device_setting() -> Any:
    """The --device option of every command that runs a model (see common.device.pick_device)."""
    return setting(None, "Torch device (default: cuda:$LOCAL_RANK if available, else cpu).")


def leaf_fields(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    """(field, its resolved type) of each setting of a config dataclass, nested settings dataclasses' in place."""
    hints = typing.get_type_hints(cls)
    return [leaf for f in fields(cls)
            for leaf in (leaf_fields(hints[f.name]) if is_dataclass(hints[f.name]) else [(f, hints[f.name])])]


def cli_name(f: dataclasses.Field) -> str:
    """How the CLI spells a field: --batch-size, or OUT for a positional argument."""
    return f.name.upper() if f.metadata.get("arg") else "--" + f.name.replace("_", "-")


def limits_text(f: dataclasses.Field) -> str:
    m = f.metadata
    parts = [f">= {m['min']:g}" if m.get("min") is not None else "", f"> {m['gt']:g}" if m.get("gt") is not None else "",
             f"<= {m['max']:g}" if m.get("max") is not None else ""]
    return ", ".join(p for p in parts if p)


def check(cfg: Any) -> None:
    """Raise one UserError naming the first setting outside its limits (None means 'not given')."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if value is None or is_dataclass(value):
            continue
        m, name = f.metadata, cli_name(f)
        if isinstance(value, str) and not value.strip():
            raise UserError(f"{name} is empty")
        if isinstance(value, Path) and URL.match(str(value)):  # (a Path has already folded its "//" into "/")
            raise UserError(f"{name} {value}: a URL, where a local path is needed")
        if m.get("choices") and value not in m["choices"]:
            raise UserError(f"{name} {value!r} is not one of: {', '.join(m['choices'])}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise UserError(f"{name} must be a finite number (got {value})")
            low, above, high = m.get("min"), m.get("gt"), m.get("max")
            if (low is not None and value < low) or (above is not None and value <= above) or \
                    (high is not None and value > high):
                raise UserError(f"{name} must be {limits_text(f)} (got {value:g})")


def as_dict(cfg: Any) -> dict:
    """A JSON-friendly dict of a settings dataclass (paths as strings), for checkpoints and reports."""
    def plain(v: Any) -> Any:
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(dataclasses.asdict(cfg))


def env_number(name: str, default: float, minimum: float) -> float:
    """A number from the environment (a setting of the deployment rather than of one command)."""
    raw = os.environ.get(name)
    try:
        value = default if raw is None else float(raw)
        if not math.isfinite(value):
            raise ValueError
    except ValueError:
        raise UserError(f"{name}={raw!r} is not a number") from None
    if value < minimum:
        raise UserError(f"{name}={raw!r} is below its minimum {minimum:g}")
    return value
