"""The README is true: its commands parse, its tables render, its Python example is the tested one."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_readme_is_short():
    assert len(README.splitlines()) <= 300


def test_every_markdown_table_renders():
    """A table is a header, a |---| rule and rows with the header's number of cells, no blank line."""
    lines = README.splitlines()
    for i, line in enumerate(lines):
        if re.fullmatch(r"\|( *:?-{3,}:? *\|)+", line.strip()):
            width = lines[i - 1].count("|")
            assert lines[i - 1].startswith("|"), f"line {i}: a rule without a header"
            j = i + 1
            while j < len(lines) and lines[j].startswith("|"):
                cells = re.sub(r"`[^`]*`", "x", lines[j]).count("|")
                assert cells == width, f"README line {j + 1}: {cells - 1} cells, the header has {width - 1}"
                j += 1
            if j + 1 < len(lines):
                assert not (lines[j] == "" and lines[j + 1].startswith("|")), f"README line {j + 1}: a table split by a blank line"


def _ic_commands() -> list[list[str]]:
    commands = []
    for block in _blocks("bash"):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split("#")[0].strip()
            if not line.startswith(".venv/bin/ic "):
                continue
            line = re.sub(r"\[[^\]]*\]", "", line)  # optional flags shown in [brackets]
            line = line.replace("$STEPS", "100").replace("$S", "shards")
            commands.append(shlex.split(line)[1:])
    return commands


def test_every_ic_command_in_the_readme_parses():
    from flows.cli import build_parser

    commands = _ic_commands()
    assert len(commands) >= 10
    for argv in commands:
        try:
            build_parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"README shows a command `ic` does not accept: ic {' '.join(argv)}")


def test_the_python_example_is_the_committed_quickstart():
    (example,) = _blocks("python")
    assert example == (ROOT / "docs" / "examples" / "quickstart.py").read_text()
