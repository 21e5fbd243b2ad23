"""What `swe --help` and every command's --help show: commands grouped in panels, one-sentence
summaries, no type markers after flags, no stray space before a full stop, and every option name
whole on an 80-column terminal."""

from __future__ import annotations

import re

import pytest
import typer
from typer.testing import CliRunner

import swe_cli.cli.commands  # noqa: F401 - registers the commands
from swe_cli.cli import app
from swe_cli.cli.app import ARTIFACTS, ONE_SHOT, STAGES

GROUP = typer.main.get_command(app)
COMMANDS = sorted(GROUP.commands)


def help_text(*args: str, width: int = 80) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], terminal_width=width)
    assert result.exit_code == 0, result.output
    return result.output


def test_commands_are_grouped_in_panels() -> None:
    text = help_text()
    assert "Commands" not in text
    positions = {panel: text.index(panel[:30]) for panel in (ONE_SHOT, STAGES, ARTIFACTS)}
    assert positions[ONE_SHOT] < positions[STAGES] < positions[ARTIFACTS]
    for panel, names in [
        (ONE_SHOT, ("align", "demo")),
        (STAGES, ("probe", "localize", "select", "solve", "tune")),
        (ARTIFACTS, ("apply", "verify", "eval")),
    ]:
        assert {GROUP.commands[name].rich_help_panel for name in names} == {panel}
    assert set(COMMANDS) == {
        "align",
        "demo",
        "probe",
        "localize",
        "select",
        "solve",
        "tune",
        "apply",
        "verify",
        "eval",
    }


@pytest.mark.parametrize("name", COMMANDS)
def test_summary_is_one_full_sentence(name: str) -> None:
    summary = GROUP.commands[name].help.split("\n\n")[0]
    assert "\n" not in summary and summary[0].isupper() and summary.endswith("."), summary
    assert summary.count(". ") == 0, summary
    assert len(summary) <= 100, summary


@pytest.mark.parametrize("name", ["", *COMMANDS])
@pytest.mark.parametrize("width", [80, 200])
def test_help_has_no_markers_or_stray_spaces(name: str, width: int) -> None:
    text = help_text(*([name] if name else []), width=width)
    assert "<bool>" not in text
    assert not re.search(r"\S \.(\s|$)", text), re.findall(r".{30}\S \.(?:\s|$)", text)
    assert "…" not in text


@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_name_is_whole_at_80_columns(name: str) -> None:
    text = help_text(name, width=80)
    shown = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", text))
    for param in GROUP.commands[name].params:
        for flag in param.opts:
            if flag.startswith("--"):
                assert flag in shown, f"swe {name} --help: {flag} cut off or missing"
