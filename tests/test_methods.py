"""The method contract: every registered method solves a probed workspace into edits of the right
shapes, within its rank bound, with the diagnostics `swe solve` reports; the registry names the
known methods when asked for an unknown one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from swe_cli.errors import SolveError
from swe_cli.methods import METHODS, get_method
from swe_cli.methods.base import context_from
from swe_cli.settings import LocalizeConfig, SolveConfig
from swe_cli.stages.localize import run_localize
from swe_cli.workspace import Workspace

DIAGNOSTICS = {"rank", "relative_residual", "condition_number"}


def check_contract(workspace: Workspace, name: str, rank: int | None) -> None:
    method = get_method(name)
    assert method.name == name
    assert method.grid_keys[0] == "layers" and set(method.grid) <= set(method.grid_keys)
    context = context_from(workspace)
    edits, report = method.solve(context, SolveConfig(method=name, rank=rank))
    assert edits and report
    for edit in edits:
        rows, columns = edit.shape[0], edit.shape[1]
        width = columns if edit.cols is None else len(edit.cols)
        assert edit.delta.shape == (len(edit.rows), width), edit.name
        assert int(edit.rows.min()) >= 0 and int(edit.rows.max()) < rows
        if rank is not None:  # float32 deltas: count singular values above float32 rounding
            assert int(torch.linalg.matrix_rank(edit.delta, rtol=1e-4)) <= rank
    for layer, values in report.items():
        assert layer in context.probed_layers and values["neurons"] > 0
        weights = {key: diag for key, diag in values.items() if isinstance(diag, dict)}
        assert weights, layer
        for diag in weights.values():
            assert set(diag) >= DIAGNOSTICS, set(diag)
            assert rank is None or diag["rank"] <= rank


@pytest.fixture()
def localized(workspace_copy: Path) -> Workspace:
    workspace = Workspace(workspace_copy)
    run_localize(workspace, LocalizeConfig(tau_mag=0.5, tau_stat=0.2))
    return workspace


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("rank", [None, 2])
def test_every_method_keeps_the_contract(localized: Workspace, name: str, rank: int | None) -> None:
    check_contract(localized, name, rank)


@pytest.fixture(scope="module")
def organism_workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """The cached model organism (tests/test_end_to_end.py builds it once), probed and
    localized with its recipe's probe settings."""
    from swe_cli.organism import cached_organism
    from swe_cli.pipeline import ProbeRequest, localize, probe
    from swe_cli.recipe import builtin_recipes

    organism = cached_organism(0)
    recipe = next(r for r in builtin_recipes() if r.name == "organism")
    root = tmp_path_factory.mktemp("contract") / "ws"
    request = ProbeRequest(
        model=str(organism.model_dir),
        workspace=root,
        langs=list(organism.lrls),
        harmful=str(organism.harmful),
        harmless=str(organism.harmless),
        general=str(organism.general),
        hrl=organism.hrl,
        settings=recipe.probe,
        dtype="float32",
    )
    probe(request)
    localize(root, recipe.localize)
    return Workspace(root)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_keeps_the_contract_on_the_organism(
    organism_workspace: Workspace, name: str
) -> None:
    check_contract(organism_workspace, name, None)
    check_contract(organism_workspace, name, 4)


def test_unknown_method_lists_the_known_ones() -> None:
    with pytest.raises(SolveError) as caught:
        get_method("magic")
    assert "magic" in caught.value.message
    assert all(name in (caught.value.hint or "") for name in METHODS)


def test_method_choices_in_help_come_from_the_registry() -> None:
    from swe_cli.cli.options import Method

    help_text: Any = Method.__metadata__[0].help
    assert all(name in help_text for name in METHODS)


@pytest.mark.parametrize("command", ["solve", "tune"])
def test_an_unknown_method_fails_before_any_work(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The settings models know no method: the pipeline checks the name against the registry
    before the workspace is read."""
    from test_cli import run_cli

    code, _, err = run_cli(
        [command, "-w", str(tmp_path / "ws"), "--method", "bogus"], monkeypatch, capsys
    )
    assert code != 0 and "unknown method 'bogus'" in err
    assert all(name in err for name in [*METHODS, "auto"])
    assert not (tmp_path / "ws").exists()
