"""The docs cannot rot: the command reference tables are the config dataclasses', and every
`python cli.py ...` line of README.md and docs/ parses against the current CLI (command, options,
types, choices and limits), without running the job."""

from __future__ import annotations

import re
import shlex
import sys

import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "docs"))
import reference  # noqa: E402

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def cli_lines() -> list[tuple[str, str]]:
    """(page, command line) of every `cli.py` invocation in the pages' code blocks, continuations joined."""
    out = []
    for page in PAGES:
        for block in re.findall(r"```[a-z]*\n(.*?)```", page.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split("  #")[0].split(" # ")[0]
                if re.search(r"\b(python3?|torchrun)\b.*\bcli\.py\b", line):
                    out.append((page.name, line.strip()))
    return out


def test_reference_tables_are_generated_from_the_settings():
    stale = [page.name for page in PAGES if reference.render(page.read_text()) != page.read_text()]
    assert stale == [], f"run `make docs`: the command reference in {stale} differs from the config dataclasses"


@pytest.mark.parametrize("page,line", cli_lines(), ids=lambda v: v[:60] if isinstance(v, str) else v)
def test_every_documented_command_line_parses(page, line):
    import typer

    import cli
    from common.commands import _build

    args = shlex.split(line.split("cli.py", 1)[1])
    command, ctx = typer.main.get_command(cli.app), None
    while hasattr(command, "commands"):  # a group: take the next word as its command
        assert args and args[0] in command.commands, f"{page}: unknown command in {line!r}"
        name, args = args[0], args[1:]
        command = command.commands[name]
    ctx = command.make_context(name, args)  # unknown options, wrong types and missing values raise here
    config = getattr(ctx.command.callback, "config", None)
    if config is not None:
        _build(config, ctx.params)  # choices and limits, as the command checks them


def test_the_docs_have_command_lines():
    pages = {page for page, _ in cli_lines()}
    assert {"README.md", "extract.md", "train.md", "evaluate-and-plan.md", "your-robot.md"} <= pages


def test_help_shows_the_extras_by_name():
    """--help says which extra a feature needs: "[hf]" reaches the reader (typer renders help as rich markup)."""
    from tests.conftest import cli_main

    assert "the [sim] extra" in cli_main("sim", "--help")[1]
    said = " ".join(cli_main("extract", "--help")[1].replace("│", " ").split())
    assert "the [hf] extra" in said and "the [pretrained] extra" in said
