"""docs/ci.md stays true: every `swe` command of its workflow and shell script parses against the
current CLI (command, options, required options, values), and the fields its jq filters read
are the ones `swe align --json` writes (checked against a real run in test_end_to_end.py)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from test_readme import code_blocks, options_of, swe_commands

import swe_cli.cli.commands  # noqa: F401 - registers the commands
from swe_cli.cli import app

ROOT = Path(__file__).resolve().parents[1]
CI_DOC = (ROOT / "docs" / "ci.md").read_text(encoding="utf-8")


def workflow() -> dict[str, Any]:
    (block,) = re.findall(r"```yaml\n(.*?)```", CI_DOC, flags=re.S)
    return yaml.safe_load(block)


def scripts() -> list[str]:
    runs = [
        step["run"] for job in workflow()["jobs"].values() for step in job["steps"] if "run" in step
    ]
    return [*runs, *code_blocks(CI_DOC)]


def commands() -> list[list[str]]:
    found = []
    for script in scripts():
        script = re.sub(r"\$\{\{[^}]*\}\}", "VALUE", script)  # GitHub expressions
        found += swe_commands(script)
    return found


def jq_filters() -> list[str]:
    return [
        filter_ for script in scripts() for filter_ in re.findall(r"jq -[a-z]+ '([^']*)'", script)
    ]


def jq_paths(filter_: str) -> list[tuple[str, ...]]:
    """The field paths a jq filter reads: `.a.b[$x].c` -> ("a", "b", "*", "c")."""
    paths = []
    for match in re.finditer(r"(?<![\w\]])((?:\.[a-z_]+|\[\$\w+\])+)", filter_):
        parts = re.findall(r"\.([a-z_]+)|\[\$\w+\]", match.group(1))
        paths.append(tuple(part or "*" for part in parts))
    return paths


def reads(summary: dict[str, Any], path: tuple[str, ...]) -> bool:
    values: list[Any] = [summary]
    for part in path:
        if part == "*":
            values = [v for value in values if isinstance(value, dict) for v in value.values()]
        else:
            if not values or not all(isinstance(v, dict) and part in v for v in values):
                return False
            values = [value[part] for value in values]
    return bool(values)


def ci_align_paths() -> list[tuple[str, ...]]:
    """The jq paths read from align's JSON (the verify filter reads verify's `.ok`)."""
    return [path for f in jq_filters() if f != ".ok" for path in jq_paths(f)]


def doc_field_paths() -> list[tuple[str, ...]]:
    """The summary fields the doc's prose names (`.eval.model.languages[LANG].asr`)."""
    named = re.findall(r"`(\.[a-z_]+(?:\.[a-z_]+|\[LANG\])*)`", CI_DOC)
    return [path for field in named for path in jq_paths(field.replace("[LANG]", "[$l]"))]


def test_the_doc_has_a_workflow_and_a_script() -> None:
    steps = [step for job in workflow()["jobs"].values() for step in job["steps"]]
    uses = {step.get("uses", "").split("@")[0] for step in steps}
    assert {"actions/cache", "actions/upload-artifact"} <= uses
    names = [words[1] for words in commands()]
    assert names.count("align") == 2 and "verify" in names
    for words in commands():
        if words[1] == "align":
            assert {"--eval", "--json", "--push-to-hub", "-w"} <= set(words), words
    assert "GITHUB_STEP_SUMMARY" in CI_DOC and "error: shipping gate:" in CI_DOC
    assert set(ci_align_paths()) <= set(doc_field_paths())  # the prose lists what is read
    assert ci_align_paths() and all(
        path[0] in {"eval", "gate", "seconds"} for path in ci_align_paths()
    )


@pytest.mark.parametrize("words", commands(), ids=lambda words: " ".join(words[:2]))
def test_ci_command_parses(words: list[str]) -> None:
    used = {word.split("=", 1)[0] for word in words[2:] if word.startswith("-")}
    assert used <= options_of(words[1]), sorted(used - options_of(words[1]))
    command = typer.main.get_command(app).commands[words[1]]
    command.make_context(words[1], list(words[2:]))  # raises on a missing or bad value


def test_jq_path_reader() -> None:
    assert jq_paths('.eval.langs[] as $l | "\\(.eval.model.languages[$l].asr)"') == [
        ("eval", "langs"),
        ("eval", "model", "languages", "*", "asr"),
    ]
    summary = {"eval": {"model": {"languages": {"bn": {"asr": 0.1}}}}}
    assert reads(summary, ("eval", "model", "languages", "*", "asr"))
    assert not reads(summary, ("eval", "model", "languages", "*", "kl"))


def test_install_names_the_distribution() -> None:
    from swe_cli import DISTRIBUTION

    installs = [
        line for script in scripts() for line in script.splitlines() if "pip install" in line
    ]
    assert installs and all(DISTRIBUTION in line for line in installs), installs
