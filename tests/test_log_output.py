"""Output in CI logs: piped stderr is not cut at 80 columns, and --help says where --json and the
tables go."""

from __future__ import annotations

import pytest
from rich.table import Table
from test_cli import run_cli

from swe_cli.cli.app import STATE, info, show


def _wide_table() -> Table:
    table = Table(title="swe eval — a model with a long name")
    for name in ("language", "Harmful refusal before", "Harmful refusal after", "Harmless KL"):
        table.add_column(name)
    for lang in ("en", "bn", "sw", "th"):
        table.add_row(lang, "0.123456789", "0.987654321", "0.000123456789 (paired, 120 prompts)")
    return table


def test_a_piped_table_is_not_cut(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.setitem(STATE, "quiet", False)
    show(_wide_table())
    err = capsys.readouterr().err
    assert "…" not in err
    for text in ("Harmful refusal before", "Harmless KL", "0.000123456789 (paired, 120 prompts)"):
        assert text in err
    assert max(len(line) for line in err.splitlines()) > 80  # it really is wider than 80


def test_a_piped_note_is_one_line(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(STATE, "quiet", False)
    note = "note: " + " ".join(["harmless prompts in sw are not used"] * 4)
    info(note)
    assert capsys.readouterr().err.strip() == note


def test_json_help_says_where_output_goes(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("COLUMNS", "300")
    code, out, _ = run_cli(["align", "--help"], monkeypatch, capsys)
    assert code == 0
    flat = " ".join(out.split())
    assert "JSON on stdout" in flat and "go to stderr" in flat
