"""`swe solve -w WS` without --method solves what the workspace's `swe select` chose, else the
solve settings of the recipe for the workspace's model (never silently the paper's method), and
says which method ran and why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from test_cli import assert_user_error, run_cli

import swe_cli.recipe
from swe_cli.settings import SolveSettings
from swe_cli.workspace import Workspace

TINY_RECIPE = """name: tiny-test
match:
  model_types: [llama]
  num_layers: [3]
  hidden_sizes: [32]
solve:
  method: residual
  layers: 1-2
  rank: 8
"""


@pytest.fixture
def localized(
    workspace_copy: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> Path:
    code, _, err = run_cli(["localize", "-w", str(workspace_copy)], monkeypatch, capsys)
    assert code == 0, err
    return workspace_copy


@pytest.fixture
def tiny_recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One recipe, for the tiny llama of the tests, in place of the built-in ones."""
    folder = tmp_path / "recipes"
    folder.mkdir()
    (folder / "tiny-test.yaml").write_text(TINY_RECIPE, encoding="utf-8")
    monkeypatch.setattr(swe_cli.recipe, "recipe_folder", lambda: folder)


def _solved(workspace: Path) -> dict:
    return yaml.safe_load((workspace / "workspace.yaml").read_text())["stages"]["solve"]["params"]


@pytest.mark.usefixtures("tiny_recipe")
def test_solve_uses_the_recipe_method(
    localized: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    code, out, err = run_cli(["solve", "-w", str(localized), "--json"], monkeypatch, capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["method"] == "residual"
    assert summary["method_reason"] == "from recipe tiny-test"
    params = _solved(localized)
    assert params["method"] == "residual" and params["layers"] == [1, 2] and params["rank"] == 8

    code, _, err = run_cli(["solve", "-w", str(localized)], monkeypatch, capsys)
    assert code == 0 and "method residual (from recipe tiny-test)" in err


@pytest.mark.usefixtures("tiny_recipe")
def test_options_given_override_the_recipe(
    localized: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    args = ["solve", "-w", str(localized), "--rank", "4", "--layers", "2", "--json"]
    code, out, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    assert json.loads(out)["method_reason"].startswith("from recipe tiny-test; ")
    params = _solved(localized)
    assert params["method"] == "residual" and params["layers"] == [2] and params["rank"] == 4


def test_solve_uses_the_select_choice(
    localized: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    chosen = SolveSettings(method="refusal", layers="1", strength=2.0).resolve("cpu").plain()
    Workspace(localized).record_stage("select", {}, {"config": chosen}, status="done")
    code, _, err = run_cli(["solve", "-w", str(localized)], monkeypatch, capsys)
    assert code == 0, err
    assert "method refusal (chosen by swe select)" in err
    params = _solved(localized)
    assert params["method"] == "refusal" and params["strength"] == 2.0


def test_method_option_wins_and_says_so(
    localized: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    code, out, err = run_cli(
        ["solve", "-w", str(localized), "--method", "paper", "--json"], monkeypatch, capsys
    )
    assert code == 0, err
    assert json.loads(out)["method_reason"] == "--method"
    assert _solved(localized)["method"] == "paper"


def test_a_model_without_recipe_asks_for_select_or_a_method(
    localized: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The generic recipe leaves the method to `swe select`: no silent fallback to paper."""
    result = run_cli(["solve", "-w", str(localized)], monkeypatch, capsys)
    assert_user_error(result, "swe select")
    assert "--method" in result[2]
    assert "solve" not in yaml.safe_load((localized / "workspace.yaml").read_text())["stages"]
