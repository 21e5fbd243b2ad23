"""The README stays true: every `swe` command line in its code blocks names an existing command and
only options that command has; the install and test commands are the ones CI runs."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from swe_cli.cli import app

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def code_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", README, flags=re.S)


def swe_lines() -> list[list[str]]:
    lines = []
    for block in code_blocks():
        for line in block.splitlines():
            line = line.split(" #", 1)[0].strip()
            for part in re.split(r"\|\||&&|\|", line):
                words = shlex.split(part.strip().replace("$", ""))
                if words[:1] == ["swe"]:
                    lines.append(words)
    return lines


def options_of(command: str) -> set[str]:
    result = CliRunner().invoke(app, [command, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    return set(re.findall(r"(--[a-z][a-z0-9-]*|-[a-z])\b", result.output))


def test_readme_has_swe_commands() -> None:
    commands = {words[1] for words in swe_lines()}
    assert {"demo", "align", "probe", "localize", "solve", "apply", "eval", "verify"} <= commands


@pytest.mark.parametrize("words", swe_lines(), ids=lambda words: " ".join(words[:2]))
def test_readme_command_uses_real_options(words: list[str]) -> None:
    known = options_of(words[1])
    used = {word.split("=", 1)[0] for word in words[2:] if word.startswith("-")}
    assert used <= known, f"{' '.join(words)}: unknown {sorted(used - known)}"


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    test_command = code_blocks()[1].strip()
    assert test_command == "python -m pytest -q"
    assert test_command in ci
    assert "pip install -q torch==2.13.0" in ci
