"""`--tune`: the choice is a minimum-score grid candidate, the tuner reads only probed (fit-split)
ids, its tune-fit and validation parts are disjoint, it is deterministic, and the leak weight
steers the choice. One tiny probed and localized workspace (40 parallel prompts) per module."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from common import localized_workspace

from swe_cli.methods.residual import default_bands
from swe_cli.prompts import FIT, HELDOUT, PromptSet
from swe_cli.settings import SolveConfig
from swe_cli.stages.tune import Candidate, TuneResult, candidates_table, tune
from swe_cli.workspace import Workspace

LANGS = ("en", "es", "sw")


@pytest.fixture(scope="module")
def tuned_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace probed on every layer of the tiny llama and localized (read-only)."""
    return localized_workspace(tmp_path_factory.mktemp("tune"), LANGS)


@pytest.fixture()
def workspace(tuned_source: Path, tmp_path: Path) -> Workspace:
    target = tmp_path / "ws"
    shutil.copytree(tuned_source, target)
    return Workspace(target)


def _stored_split(workspace: Workspace, name: str) -> tuple[set[str], set[str]]:
    prompts = PromptSet.from_jsonl(workspace.prompts_dir / f"{name}.jsonl", name)
    return set(prompts.ids(FIT)), set(prompts.ids(HELDOUT))


def _minimum_score(result: TuneResult) -> float:
    return min(candidate.score for candidate in result.candidates)


SMALL_PAPER_GRID: dict[str, list[Any]] = {"gamma": [0.1, 10.0], "lam": [0.01, 1.0]}


@pytest.mark.parametrize("method", ["paper", "residual"])
def test_tune_returns_a_minimum_score_candidate_and_records_it(
    workspace: Workspace, method: str
) -> None:
    result = tune(workspace, SolveConfig(method=method))
    assert result.candidates
    assert result.best in [c.config for c in result.candidates if c.score == _minimum_score(result)]
    assert all(math.isfinite(c.score) for c in result.candidates)
    assert all(c.config.method == method for c in result.candidates)
    document = yaml.safe_load((workspace.edit_dir / "tune.yaml").read_text())
    assert len(document["candidates"]) == len(result.candidates)
    assert document["best"]["layers"] == list(result.best.layers or ())
    assert workspace.require_stage("tune").outputs["candidates"] == len(result.candidates)


def test_paper_grid_covers_layers_with_neurons_and_caps_the_rank(workspace: Workspace) -> None:
    result = tune(workspace, SolveConfig(method="paper"))
    hidden_size = workspace.model()["hidden_size"]
    layers = {c.config.layers for c in result.candidates}
    assert layers == {(layer,) for layer in range(3)}
    for candidate in result.candidates:
        assert candidate.config.rank is not None and candidate.config.rank <= hidden_size
        assert candidate.config.gamma in (0.1, 1.0, 10.0)
        assert candidate.config.lam in (0.01, 0.1, 1.0)
    # distinct grid points only (ranks capped to the same value are tried once)
    assert len({c.config for c in result.candidates}) == len(result.candidates)


def test_residual_grid_tunes_layer_bands() -> None:
    assert default_bands([0, 1, 2, 3]) == [(3,), (2, 3), (1, 2, 3)]
    assert default_bands([0, 1, 2]) == [(2,), (1, 2), (0, 1, 2)]
    assert default_bands([5]) == [(5,)]


def test_tune_never_reads_the_heldout_split(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    import swe_cli.methods.base as solve_stage

    read: dict[str, set[str]] = {"harmful": set(), "harmless": set()}
    original = solve_stage.load_acts

    def spy(ws: Workspace, layer: int, prompt_set: str, lang: str) -> Any:
        acts, ids = original(ws, layer, prompt_set, lang)
        read[prompt_set].update(ids)
        return acts, ids

    monkeypatch.setattr(solve_stage, "load_acts", spy)
    result = tune(workspace, SolveConfig(method="paper"), grid=SMALL_PAPER_GRID)
    for name, touched in (
        ("harmful", result.touched_ids),
        ("harmless", result.touched_harmless_ids),
    ):
        fit, heldout = _stored_split(workspace, name)
        assert heldout, "the fixture must have held-out prompts for this test to mean anything"
        assert touched and touched <= fit and not touched & heldout
        assert read[name] <= touched  # what was really loaded was recorded
    assert set(result.validation_ids).isdisjoint(result.fit_ids)
    assert result.validation_ids and result.fit_ids
    every = result.touched_ids | result.touched_harmless_ids
    assert set(result.validation_ids) | set(result.fit_ids) == every


def test_table_has_one_row_per_candidate(workspace: Workspace) -> None:
    result = tune(workspace, SolveConfig(method="residual"))
    table = candidates_table(result)
    assert table.row_count == len(result.candidates)
    chosen = [cell for cell in table.columns[0].cells if cell == "*"]
    assert len(chosen) == 1


@pytest.mark.parametrize("method", ["paper", "residual"])
def test_tune_is_deterministic(workspace: Workspace, method: str) -> None:
    def essence(result: TuneResult) -> Any:
        rows = [(c.config, c.val_residual, c.val_leak, c.score) for c in result.candidates]
        return result.best, rows, result.fit_ids, result.validation_ids, result.touched_ids

    first = tune(workspace, SolveConfig(method=method), grid=_small_grid(method))
    second = tune(workspace, SolveConfig(method=method), grid=_small_grid(method))
    assert essence(first) == essence(second)


@pytest.mark.parametrize("method", ["paper", "residual"])
def test_a_huge_leak_weight_chooses_the_smallest_leak(workspace: Workspace, method: str) -> None:
    grid = SMALL_PAPER_GRID if method == "paper" else {"alpha": [0.1, 10.0], "beta": [0.1, 10.0]}
    result = tune(workspace, SolveConfig(method=method), grid=grid, leak_weight=1e9)
    smallest = min(c.val_leak for c in result.candidates)
    best = next(c for c in result.candidates if c.config == result.best)
    assert best.val_leak == pytest.approx(smallest, rel=1e-6)
    plain = tune(workspace, SolveConfig(method=method), grid=grid, leak_weight=0.0)
    best_plain = next(c for c in plain.candidates if c.config == plain.best)
    assert best_plain.val_residual == min(c.val_residual for c in plain.candidates)


def test_validation_scores_are_what_the_solver_edit_does_on_validation_rows(
    workspace: Workspace,
) -> None:
    """Recompute one paper candidate's validation numbers independently from the shards."""
    import torch

    from swe_cli.io.checkpoint import read_rows
    from swe_cli.methods.base import layer_data
    from swe_cli.methods.linalg import solve_paper
    from swe_cli.workspace import load_selected

    result = tune(workspace, SolveConfig(method="paper"), grid={"layers": [1], "rank": [4]})
    candidate: Candidate = result.candidates[0]
    config = candidate.config
    neurons = load_selected(workspace, 1, "en")
    W_S = read_rows(
        Path(workspace.model()["path"]), "model.layers.1.mlp.gate_proj.weight", neurons.tolist()
    )[0].T.double()
    fit = layer_data(workspace, 1, "en", ["es", "sw"], ids=set(result.fit_ids))
    val = layer_data(workspace, 1, "en", ["es", "sw"], ids=set(result.validation_ids))
    delta = solve_paper(
        fit.x_low, fit.x_hrl, fit.x_safe, W_S, rank=4, gamma=config.gamma, lam=config.lam
    ).delta.double()
    D = (val.x_hrl.double() - val.x_low.double()) @ W_S
    residual = torch.linalg.norm(val.x_low.double() @ delta - D) / torch.linalg.norm(D)
    leak = torch.linalg.norm(val.x_safe.double() @ delta) / torch.linalg.norm(
        val.x_safe.double() @ W_S
    )
    assert candidate.val_residual == pytest.approx(residual.item(), rel=1e-6)
    assert candidate.val_leak == pytest.approx(leak.item(), rel=1e-6)
    assert candidate.score == pytest.approx(residual.item() + leak.item(), rel=1e-6)


def test_grid_errors_are_clear(workspace: Workspace) -> None:
    from swe_cli.errors import SolveError

    with pytest.raises(SolveError, match="unknown tuning grid key"):
        tune(workspace, SolveConfig(method="paper"), grid={"alpha": [1.0]})
    with pytest.raises(SolveError, match="more than the limit"):
        tune(workspace, SolveConfig(method="paper"), max_candidates=5)
    with pytest.raises(SolveError, match="one layer at a time"):
        tune(workspace, SolveConfig(method="paper"), grid={"layers": [[0, 1]]})
    with pytest.raises(SolveError, match="validation fraction"):
        tune(workspace, SolveConfig(method="paper"), validation_fraction=1.0)


@pytest.mark.parametrize("method", ["paper", "residual"])
def test_the_choice_runs_through_swe_solve(workspace: Workspace, method: str) -> None:
    from swe_cli.stages.solve import run_solve

    result = tune(workspace, SolveConfig(method=method), grid=_small_grid(method))
    summary = run_solve(workspace, result.best)
    assert summary["params"]["layers"] == list(result.best.layers or ())


def _small_grid(method: str) -> dict[str, list[Any]]:
    return SMALL_PAPER_GRID if method == "paper" else {"alpha": [1.0], "beta": [0.1, 10.0]}


@pytest.mark.parametrize(("method", "top"), [("paper", 2), ("residual", 1)])
def test_confirm_checks_the_best_few_and_restores_the_model(
    workspace: Workspace, method: str, top: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    import swe_cli.models as evaluate
    from swe_cli.stages.tune import Confirmation, confirm, confirmed_choice

    asked: list[str] = []
    weights: list[dict[str, torch.Tensor]] = []
    original = evaluate.generate

    def spy(model: Any, tokenizer: Any, prompts: Any, **options: Any) -> list[str]:
        asked.extend(prompts)
        weights.append({k: v.clone() for k, v in model.state_dict().items()})
        return original(model, tokenizer, prompts, **options)

    monkeypatch.setattr(evaluate, "generate", spy)
    result = tune(workspace, SolveConfig(method=method), grid=_small_grid(method))
    rows = confirm(workspace, result, top=top, max_new_tokens=4)
    assert len(rows) == top + 1 and rows[0].config is None
    ranked = sorted(result.candidates, key=lambda c: c.score)
    assert [row.config for row in rows[1:]] == [c.config for c in ranked[:top]]
    assert all(0.0 <= row.refusal_rate <= 1.0 and 0.0 <= row.over_refusal <= 1.0 for row in rows)
    assert confirmed_choice(rows) in [c.config for c in ranked[:top]]
    assert isinstance(rows[1], Confirmation)
    # only validation prompts (fit split) were asked
    texts = {
        p.text
        for name in ("harmful", "harmless")
        for p in PromptSet.from_jsonl(workspace.prompts_dir / f"{name}.jsonl", name).prompts
        if p.id in set(result.validation_ids) and p.split == FIT
    }
    assert asked and set(asked) <= texts
    # the edit is applied for the candidates and removed after each: baseline weights return
    baseline, edited = weights[0], weights[len(weights) // (top + 1)]
    assert any(not torch.equal(baseline[k], edited[k]) for k in baseline)
    document = yaml.safe_load((workspace.edit_dir / "tune.yaml").read_text())
    assert len(document["confirmation"]) == top + 1


def test_patched_weights_are_restored_exactly() -> None:
    import torch

    from swe_cli.measure import patched

    gate = torch.nn.Parameter(torch.randn(6, 4, dtype=torch.bfloat16), requires_grad=False)
    down = torch.nn.Parameter(torch.randn(4, 6), requires_grad=False)
    before = gate.detach().clone(), down.detach().clone()
    rows, columns = torch.tensor([1, 4]), torch.tensor([0, 5])
    changes = [
        (gate, rows, None, torch.ones(2, 4)),
        (down, None, columns, torch.ones(4, 2)),
        (down, None, None, torch.full((4, 6), 0.5)),
    ]
    with patched(changes):
        assert torch.equal(gate[rows], (before[0][rows].float() + 1).bfloat16())
        assert torch.allclose(down[:, columns], before[1][:, columns] + 1.5)
        assert torch.allclose(down[:, 1:5], before[1][:, 1:5] + 0.5)
    assert torch.equal(gate, before[0]) and torch.equal(down, before[1])


def test_edge_axes_name_the_coefficients_chosen_at_a_grid_end(workspace: Workspace) -> None:
    from swe_cli.stages.tune import edge_axes

    result = tune(workspace, SolveConfig(method="paper"), grid={"layers": [1], "lam": [0.1]})
    edges = edge_axes(result)
    assert "lam" not in edges and "layers" not in edges  # one value tried / not a coefficient
    gammas = sorted({c.config.gamma for c in result.candidates})
    assert ("gamma" in edges) == (result.best.gamma in (gammas[0], gammas[-1]))
    document = yaml.safe_load((workspace.edit_dir / "tune.yaml").read_text())
    assert document["grid_edge"] == edges


def test_swe_tune_command_prints_and_returns_the_choice(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import json

    from test_cli import run_cli

    code, out, err = run_cli(
        ["tune", "-w", str(workspace.root), "--method", "residual", "--json"], monkeypatch, capsys
    )
    assert code == 0, err
    chosen = json.loads(out)["chosen"]
    document = yaml.safe_load((workspace.edit_dir / "tune.yaml").read_text())
    assert chosen["method"] == "residual"
    assert chosen["layers"] == document["best"]["layers"]
    assert chosen["alpha"] == document["best"]["alpha"]
