"""Typer commands generated from config dataclasses: one option per setting field (common.settings).

Only cli.py imports this; the library's settings modules stay free of typer.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable
from pathlib import Path

import typer
from rich.markup import escape

from .settings import leaf_fields, limits_text


def _path(text: str | Path) -> str | Path:
    """A path option's value; an empty one stays "" for settings.check to refuse (Path("") would be ".")."""
    return Path(text) if isinstance(text, str) and text.strip() else text


def _params(cls: type) -> list[inspect.Parameter]:
    """Typer parameters from a config dataclass's fields (nested settings dataclasses flattened)."""
    out = []
    for f, kind in leaf_fields(cls):
        m = f.metadata
        text = m["help"] + (f" [{limits_text(f)}]" if limits_text(f) else "")
        text += f" [one of: {', '.join(m['choices'])}]" if m["choices"] else ""
        default = ... if f.default is dataclasses.MISSING else f.default
        text = escape(text)  # (typer renders help as rich markup: "[hf]", an extra's name, would vanish)
        parser = {"parser": _path} if Path in (kind, *typing.get_args(kind)) else {}
        info = (typer.Argument if m["arg"] else typer.Option)(default, help=text, **parser)
        out.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=kind))
    return out


def _build(cls: type, values: dict):
    hints = typing.get_type_hints(cls)
    return cls(**{f.name: _build(hints[f.name], values) if dataclasses.is_dataclass(hints[f.name]) else values[f.name]
                  for f in dataclasses.fields(cls)})


def command(group: typer.Typer, name: str, cls: type) -> Callable:
    """Register fn(cfg) as `name`, with the options of config dataclass `cls`."""
    def register(fn: Callable) -> Callable:
        def run(**values) -> None:
            fn(_build(cls, values))

        params = _params(cls)
        run.__signature__ = inspect.Signature(params)
        run.__annotations__ = {p.name: p.annotation for p in params}
        run.__doc__ = escape(fn.__doc__ or cls.__doc__)
        run.config = cls  # for the generated command reference (docs/reference.py)
        group.command(name)(run)
        return fn
    return register
