"""The command reference in docs/, generated from the config dataclasses (their defaults, limits and help).

`make docs` (python docs/reference.py) rewrites every block between `<!-- reference:COMMAND -->` and
`<!-- /reference:COMMAND -->` in docs/*.md; tests/test_docs.py fails when a committed block differs.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common.settings import cli_name, leaf_fields, limits_text  # noqa: E402

DOCS = ROOT / "docs"


def config_commands() -> dict[str, type]:
    """'extract', 'sim eval', 'bench loader', ... -> the config dataclass whose fields are its options."""
    import cli

    out = {}
    for prefix, app in [("", cli.app)] + [(f"{g.name} ", g.typer_instance) for g in cli.app.registered_groups]:
        for c in app.registered_commands:
            if hasattr(c.callback, "config"):
                out[prefix + c.name] = c.callback.config
    return out


def _rows(cls: type) -> list[list[str]]:
    rows = []
    for f, _ in leaf_fields(cls):
        m = f.metadata
        default = "required" if f.default is dataclasses.MISSING else "" if f.default is None else f"`{f.default}`"
        allowed = ", ".join(f"`{c}`" for c in m["choices"]) if m["choices"] else limits_text(f)
        rows.append([f"`{cli_name(f)}`", default, allowed, m["help"].replace("|", "\\|")])
    return rows


def table(command: str) -> str:
    """The markdown reference table of one command."""
    lines = ["| option | default | allowed | what |", "|---|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in _rows(config_commands()[command])]
    return "\n".join(lines)


BLOCK = re.compile(r"(<!-- reference:(?P<name>[\w -]+) -->\n)(?:.*?\n)?(<!-- /reference:(?P=name) -->)", re.S)


def render(text: str) -> str:
    """`text` with every reference block regenerated."""
    return BLOCK.sub(lambda m: m.group(1) + table(m.group("name")) + "\n" + m.group(3), text)


def main() -> None:
    for page in sorted(DOCS.glob("*.md")):
        text = page.read_text()
        if render(text) != text:
            page.write_text(render(text))
            print(f"wrote {page.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
