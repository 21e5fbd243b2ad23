"""Localize tests: scores by hand on tiny cases, exact recovery of planted safety neurons, the
one-sided direction, thresholds, Jaccard values, and run_localize on a probed tiny-model workspace
(all scores stored, Jaccard matrix in the manifest, re-selection without re-probing)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import LANGS

from swe_cli.errors import WorkspaceError
from swe_cli.stages.localize import (
    LocalizeConfig,
    NeuronScores,
    jaccard,
    jaccard_matrix,
    neuron_scores,
    run_localize,
    select_neurons,
)
from swe_cli.workspace import Workspace, load_acts, load_selected, load_tensors

PLANTED = [3, 41, 77, 150, 199]
NEGATIVE = [10, 90]


def synthetic(shift: float = 3.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """200 neurons, noise N(0,1); harmful samples are shifted up on PLANTED, down on NEGATIVE."""
    generator = torch.Generator().manual_seed(seed)
    harmful = torch.randn(120, 200, generator=generator)
    harmless = torch.randn(100, 200, generator=generator)
    harmful[:, PLANTED] += shift
    harmful[:, NEGATIVE] -= shift
    return harmful, harmless


def test_scores_by_hand() -> None:
    harmful = torch.tensor([[1.0, 0.0, 3.0], [3.0, 0.0, 5.0]])
    harmless = torch.tensor([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
    scores = neuron_scores(harmful, harmless)
    # delta = mean_harm - mean_safe
    torch.testing.assert_close(scores.delta, torch.tensor([1.0, 0.0, 4.0]))
    # z = (delta - mean) / std over neurons (unbiased): mean 5/3, std sqrt(13/3)
    mean, std = 5 / 3, math.sqrt(((1 - 5 / 3) ** 2 + (5 / 3) ** 2 + (4 - 5 / 3) ** 2) / 2)
    expected_z = torch.tensor([(1 - mean) / std, -mean / std, (4 - mean) / std])
    torch.testing.assert_close(scores.z, expected_z)
    # Cohen's d = delta / pooled std; neuron 0: var_h = var_s = 2 -> pooled sqrt(2)
    # neuron 2: var_h = 2, var_s = 0 -> pooled 1; neuron 1: delta 0 over a zero spread -> 0
    torch.testing.assert_close(scores.cohen_d, torch.tensor([1 / math.sqrt(2), 0.0, 4.0]))
    assert scores.delta.dtype == scores.z.dtype == scores.cohen_d.dtype == torch.float32


def test_planted_safety_neurons_are_recovered_exactly() -> None:
    harmful, harmless = synthetic()
    scores = neuron_scores(harmful, harmless)
    assert scores.delta.shape == scores.z.shape == scores.cohen_d.shape == (200,)
    selected = select_neurons(scores, LocalizeConfig())
    assert selected.dtype == torch.int64
    assert selected.tolist() == PLANTED
    # both criteria find them on their own
    only_magnitude = select_neurons(scores, LocalizeConfig(tau_mag=2.0, tau_stat=math.inf))
    only_statistic = select_neurons(scores, LocalizeConfig(tau_mag=math.inf, tau_stat=1.0))
    assert only_magnitude.tolist() == only_statistic.tolist() == PLANTED


def test_selection_is_one_sided() -> None:
    harmful, harmless = synthetic()
    scores = neuron_scores(harmful, harmless)
    assert all(scores.delta[NEGATIVE] < -2.5) and all(scores.cohen_d[NEGATIVE] < -2.0)
    loose = select_neurons(scores, LocalizeConfig(tau_mag=-math.inf, tau_stat=-math.inf))
    assert not set(NEGATIVE) & set(loose.tolist())  # harm < safe never selected
    assert set(loose.tolist()) == set(torch.nonzero(scores.delta > 0).flatten().tolist())
    # swapping the roles selects the negative ones instead
    flipped = select_neurons(neuron_scores(harmless, harmful), LocalizeConfig())
    assert flipped.tolist() == NEGATIVE


def test_thresholds() -> None:
    z = torch.tensor([3.0, 1.5, 0.5, 2.5, -3.0])
    d = torch.tensor([0.2, 1.2, 0.8, 0.1, -2.0])
    scores = NeuronScores(delta=torch.tensor([1.0, 1.0, 1.0, 1.0, -1.0]), z=z, cohen_d=d)
    assert select_neurons(scores, LocalizeConfig(tau_mag=2.0, tau_stat=1.0)).tolist() == [0, 1, 3]
    assert select_neurons(scores, LocalizeConfig(tau_mag=2.8, tau_stat=1.0)).tolist() == [0, 1]
    assert select_neurons(scores, LocalizeConfig(tau_mag=2.0, tau_stat=0.5)).tolist() == [
        0,
        1,
        2,
        3,
    ]
    assert select_neurons(scores, LocalizeConfig(tau_mag=5.0, tau_stat=5.0)).tolist() == []
    # thresholds are strict
    assert select_neurons(scores, LocalizeConfig(tau_mag=3.0, tau_stat=1.2)).tolist() == []


def test_weak_shift_needs_a_lower_threshold() -> None:
    harmful, harmless = synthetic(shift=0.7, seed=1)
    scores = neuron_scores(harmful, harmless)
    assert select_neurons(scores, LocalizeConfig(tau_mag=math.inf, tau_stat=1.0)).tolist() == []
    assert select_neurons(scores, LocalizeConfig(tau_mag=math.inf, tau_stat=0.5)).tolist() == (
        PLANTED
    )


def test_jaccard_values() -> None:
    assert jaccard([1, 2, 3], [2, 3, 4]) == 0.5
    assert jaccard([1, 2], [1, 2]) == 1.0
    assert jaccard([1, 2], [3]) == 0.0
    assert jaccard([], []) == 1.0
    assert jaccard([5], []) == 0.0
    matrix = jaccard_matrix({"en": [1, 2, 3], "bn": [2, 3, 4], "sw": [7]})
    assert matrix["en"]["bn"] == matrix["bn"]["en"] == 0.5
    assert matrix["en"]["sw"] == 0.0
    assert all(matrix[lang][lang] == 1.0 for lang in matrix)
    assert jaccard_matrix({"a": [1, 2, 3], "b": [1]})["a"]["b"] == round(1 / 3, 4)


def test_run_localize_writes_all_scores_and_jaccard(workspace_copy: Path) -> None:
    workspace = Workspace(workspace_copy)
    config = LocalizeConfig(tau_mag=1.5, tau_stat=0.8)
    summary = run_localize(workspace, config)
    masks, metadata = load_tensors(workspace.masks_path)
    assert metadata["hrl"] == "en" and float(metadata["tau_stat"]) == 0.8
    record = workspace.require_stage("localize")
    assert record.params == {"tau_mag": 1.5, "tau_stat": 0.8}
    assert record.outputs["masks"] == "masks/neurons.safetensors"
    total = 0
    for layer in range(3):
        selected = {}
        for lang in LANGS:
            harmful, _ = load_acts(workspace, layer, "harmful", lang)
            harmless, _ = load_acts(workspace, layer, "harmless", lang)
            expected = neuron_scores(harmful["a"][:, -1], harmless["a"][:, -1])
            for key in ("delta", "z", "cohen_d"):
                stored = masks[f"L{layer}/{lang}/{key}"]
                assert stored.shape == (48,)
                torch.testing.assert_close(stored, getattr(expected, key))
            selected[lang] = masks[f"L{layer}/{lang}/selected"].tolist()
            assert selected[lang] == select_neurons(expected, config).tolist()
            assert load_selected(workspace, layer, lang).tolist() == selected[lang]
            total += len(selected[lang])
        layer_record = record.outputs["layers"][layer]
        assert layer_record["sizes"] == {lang: len(selected[lang]) for lang in LANGS}
        for first in LANGS:
            for second in LANGS:
                value = jaccard(selected[first], selected[second])
                assert layer_record["jaccard"][first][second] == pytest.approx(value, abs=1e-4)
        assert summary["layers"][layer] == layer_record
    assert total > 0


def test_relocalize_with_other_thresholds_needs_no_reprobe(
    workspace_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import swe_cli.stages.probe

    def no_model(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("localize must not load the model")

    monkeypatch.setattr(swe_cli.stages.probe, "load_model", no_model)
    workspace = Workspace(workspace_copy)
    acts_mtimes = {p: p.stat().st_mtime_ns for p in workspace.acts_dir.rglob("*.safetensors")}
    strict = run_localize(workspace, LocalizeConfig(tau_mag=3.0, tau_stat=3.0))
    loose = run_localize(workspace, LocalizeConfig(tau_mag=0.5, tau_stat=0.2))
    for layer in range(3):
        for lang in LANGS:
            assert strict["layers"][layer]["sizes"][lang] <= loose["layers"][layer]["sizes"][lang]
    assert sum(loose["layers"][layer]["sizes"]["en"] for layer in range(3)) > sum(
        strict["layers"][layer]["sizes"]["en"] for layer in range(3)
    )
    masks, _ = load_tensors(workspace.masks_path)
    scores = NeuronScores(masks["L1/en/delta"], masks["L1/en/z"], masks["L1/en/cohen_d"])
    reselected = select_neurons(scores, LocalizeConfig(tau_mag=0.5, tau_stat=0.2))
    assert masks["L1/en/selected"].tolist() == reselected.tolist()
    assert {p: p.stat().st_mtime_ns for p in acts_mtimes} == acts_mtimes
    history = [entry["stage"] for entry in workspace.load()["history"]]
    assert history == ["probe", "localize", "localize"]


def test_localize_before_probe_fails(tmp_path: Path) -> None:
    with pytest.raises(WorkspaceError, match="not a workspace"):
        run_localize(Workspace(tmp_path), LocalizeConfig())
