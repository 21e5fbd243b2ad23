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


def code_blocks(text: str = README) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def swe_lines(text: str = README) -> list[list[str]]:
    """Every `swe ...` command in the bash blocks of a Markdown text, as words."""
    return swe_commands("\n".join(code_blocks(text)))


def swe_commands(script: str) -> list[list[str]]:
    """Every `swe ...` command of a shell script, as words: comments dropped, quotes respected,
    split at pipes, `&&`, `||` and `;`, redirections cut off, `$` removed so that variables read
    as placeholders."""
    lines = []
    for line in script.replace("\\\n", " ").splitlines():
        line = line.split(" #", 1)[0].strip().replace("$", "")
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        command: list[str] = []
        for token in [*lexer, ";"]:
            if token in ("|", "||", "&&", ";"):
                if command[:1] == ["swe"]:
                    lines.append(command)
                command = []
            else:
                command.append(token)
        lines = [_without_redirections(words) for words in lines]
    return lines


def _without_redirections(words: list[str]) -> list[str]:
    for index, word in enumerate(words):
        if word and set(word) <= set("<>&"):
            return words[: index - 1 if words[index - 1].isdigit() else index]
    return words


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
    (test_command,) = re.findall(r"\n## Test\n\n```bash\n(.*?)```", README, flags=re.S)
    test_command = test_command.strip()
    assert test_command == "python -m pytest -q"
    assert test_command in ci
    assert "pip install -q torch==2.13.0" in ci
