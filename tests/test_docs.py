"""What a user reads: README.md stays short and leads with the real model, every relative link in
README.md and docs/ points at a file that exists, and no team-internal words reach the README, the
docs, the recipes (align prints their `validated:` line) or the CLI's help."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

import swe_cli.cli.commands  # noqa: F401 - registers the commands
from swe_cli.cli import app

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
# words about how the project is run, not about the tool
INTERNAL = re.compile(
    r"\bissues?\b|\bsessions?\b|re-measured here|\d+ ?% target|\d+-minute target|"
    r"target naive|\(README, variant table\)|the lead\b",
    flags=re.I,
)


def user_texts() -> list[tuple[str, str]]:
    texts = [(path.name, path.read_text(encoding="utf-8")) for path in [README, *DOCS]]
    for recipe in sorted((ROOT / "recipes").glob("*.yaml")):
        data = yaml.safe_load(recipe.read_text(encoding="utf-8"))
        texts.append((recipe.name, f"{data.get('description', '')} {data.get('validated', '')}"))
    group = typer.main.get_command(app)
    for name in ["", *group.commands]:
        result = CliRunner().invoke(app, [*([name] if name else []), "--help"], terminal_width=200)
        texts.append((f"swe {name} --help", result.output))
    return texts


@pytest.mark.parametrize("name,text", user_texts(), ids=lambda value: str(value)[:30])
def test_no_team_internal_words(name: str, text: str) -> None:
    found = INTERNAL.findall(text)
    assert not found, f"{name}: {found}"


def test_readme_is_short_and_leads_with_the_real_model() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    sections = re.findall(r"^## (.+)$", text, flags=re.M)
    assert sections[0] == "What it did to a real model"
    first = text.split("\n## ", 2)[1]
    assert "Qwen2.5-Coder-0.5B-Instruct" in first and "| base |" in first and "| aligned |" in first
    assert "<!-- real-model-table" in first and "<!-- /real-model-table -->" in first
    assert "one GPU and minutes" not in text
    for heading in ("Install", "Test", "The shipping gate", "In CI"):
        assert heading in sections, heading


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda path: path.name)
def test_relative_links_exist(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
        assert (path.parent / target).exists(), f"{path.name}: broken link {target}"


def doc_commands() -> list[tuple[str, list[str]]]:
    from test_readme import swe_lines

    return [(path.name, words) for path in DOCS for words in swe_lines(path.read_text("utf-8"))]


@pytest.mark.parametrize(
    "name,words", doc_commands(), ids=lambda value: value if isinstance(value, str) else value[1]
)
def test_doc_commands_use_real_options(name: str, words: list[str]) -> None:
    from test_readme import options_of

    used = {word.split("=", 1)[0] for word in words[2:] if word.startswith("-")}
    assert used <= options_of(words[1]), (
        f"{name}: {' '.join(words)}: {sorted(used - options_of(words[1]))}"
    )
