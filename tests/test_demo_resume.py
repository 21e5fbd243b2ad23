"""`swe demo` on a fresh machine: progress a log can read, Ctrl-C says what is kept and how to
resume (exit 130), and a re-run with the same folder resumes instead of refusing; a folder that
is not a demo of the same settings is refused before any work."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_cli import assert_user_error, run_cli

import swe_cli.align
import swe_cli.organism
from swe_cli.align import DEMO_FILE
from swe_cli.cli.app import STATE, progress_bar


def test_a_folder_that_is_not_a_demo_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me", encoding="utf-8")
    result = run_cli(["demo", "-o", str(folder)], monkeypatch, capsys)
    assert_user_error(result, "not a swe demo folder")
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]


def test_a_demo_of_other_settings_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    folder = tmp_path / "demo"
    folder.mkdir()
    marker = {"seed": 1, "method": None, "sets": []}
    (folder / DEMO_FILE).write_text(json.dumps(marker), encoding="utf-8")
    result = run_cli(["demo", "-o", str(folder)], monkeypatch, capsys)
    assert_user_error(result, "other settings", "seed 1")


def test_ctrl_c_during_the_build_says_how_to_start_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(swe_cli.organism, "cached_organism", interrupted)
    code, out, err = run_cli(["demo", "-o", str(tmp_path / "demo")], monkeypatch, capsys)
    assert code == 130 and out == ""
    assert "interrupted" in err and f"swe demo -o {tmp_path / 'demo'}" in err
    assert not (tmp_path / "demo").exists()


def test_progress_in_a_log_is_lines_not_a_redrawn_bar(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(STATE, "quiet", False)
    with progress_bar() as update:
        for step in range(101):
            update("organism: training", step, 100)
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b" not in err
    lines = err.splitlines()
    assert lines[0].startswith("organism: training: 0/100")
    assert lines[-1].startswith("organism: training: 100/100")
    assert len(lines) == 11  # a line at each tenth


@pytest.mark.slow
def test_an_interrupted_demo_resumes(
    organism: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    folder = tmp_path / "demo"
    real_localize = swe_cli.align.localize

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(swe_cli.align, "localize", interrupted)
    code, _, err = run_cli(["demo", "-o", str(folder)], monkeypatch, capsys)
    assert code == 130, err
    assert f"re-run `swe demo -o {folder}`" in err and "kept" in err
    probed = yaml.safe_load((folder / "workspace" / "workspace.yaml").read_text())
    assert probed["stages"]["probe"]["status"] == "done"

    monkeypatch.setattr(swe_cli.align, "localize", real_localize)
    code, out, err = run_cli(["demo", "-o", str(folder), "--json"], monkeypatch, capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert (folder / "aligned" / "config.json").is_file()
    manifest = yaml.safe_load((folder / "workspace" / "workspace.yaml").read_text())
    assert manifest["stages"]["probe"]["outputs"]["shards_written"] == 0  # reused, not redone
    assert summary["gate"]["passed"] in (True, False)

    code, _, err = run_cli(["demo", "-o", str(folder)], monkeypatch, capsys)
    assert code == 1 and "is complete" in err
