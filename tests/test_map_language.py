"""`harmless_targets` and `lang_strength` of the residual/refusal edits. harmless_targets maps
the LRL harmless prompts onto their HRL translations' residual stream too (the paper's "map the
language"), as one more block of edit columns weighted as a whole, and leaves those prompts out
of the preserved keys; the preservation weights stay relative to the harmful prompts.
lang_strength scales one language's harmful targets."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from common import localized_workspace

from swe_cli.errors import SolveError
from swe_cli.methods.base import LayerData, context_from, layer_data
from swe_cli.methods.linalg import solve_residual
from swe_cli.methods.residual import (
    ResidualMethod,
    edit_keys,
    edit_target,
    protected_keys,
    residual_step,
)
from swe_cli.settings import SolveConfig, language_factors
from swe_cli.stages.select import parse_candidate
from swe_cli.workspace import Workspace

F, D = 12, 5


def _data(seed: int = 0) -> LayerData:
    """Harmful rows: 3 bn, 3 sw. Harmless rows: en h1-h3 (the HRL block), bn h1 h2, sw h2 h3
    and sw h9 (no English translation)."""
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    empty = torch.zeros(0)
    safe_ids = ("h1", "h2", "h3", "h1", "h2", "h2", "h3", "h9")
    safe_langs = ("en", "en", "en", "bn", "bn", "sw", "sw", "sw")
    return LayerData(
        x_low=empty,
        x_hrl=empty,
        a_low=rand(6, F),
        r_low=rand(6, D),
        r_hrl=rand(6, D),
        x_safe=empty,
        a_safe=rand(len(safe_ids), F),
        r_safe=rand(len(safe_ids), D),
        a_hrl=rand(6, F),
        n_safe_hrl=3,
        low_langs=("bn",) * 3 + ("sw",) * 3,
        safe_ids=safe_ids,
        safe_langs=safe_langs,
    )


def test_harmless_pairs_follow_the_ids() -> None:
    low, hrl = _data().harmless_pairs()
    assert low == [3, 4, 5, 6]  # sw h9 has no English translation
    assert hrl == [0, 1, 1, 2]


def test_off_by_default_the_edit_columns_are_the_harmful_prompts() -> None:
    data = _data()
    config = SolveConfig(method="residual")
    target = ResidualMethod().target(data, config)
    assert torch.equal(edit_keys(data, config), data.a_low.T)
    assert torch.equal(edit_target(data, config, target), target)
    assert torch.equal(protected_keys(data, config), data.a_safe.T)


def test_harmless_pairs_become_a_weighted_block_of_edit_columns() -> None:
    data = _data()
    config = SolveConfig(method="residual", harmless_targets=0.5)
    keys = edit_keys(data, config)
    target = edit_target(data, config, ResidualMethod().target(data, config))
    weight = math.sqrt(0.5 * 6 / 4)  # the block of 4 pairs counts like half the 6 harmful keys
    assert keys.shape == (F, 10) and target.shape == (D, 10)
    assert torch.allclose(keys[:, 6:], data.a_safe[[3, 4, 5, 6]].T * weight)
    expected = (data.r_safe[[0, 1, 1, 2]] - data.r_safe[[3, 4, 5, 6]]).T * weight
    assert torch.allclose(target[:, 6:], expected)
    assert torch.allclose(target[:, :6], (data.r_hrl - data.r_low).T)
    # the mapped prompts are no longer preserved; the HRL ones and the unpaired one still are
    assert torch.equal(protected_keys(data, config), data.a_safe[[0, 1, 2, 7]].T)


def test_the_solve_is_the_normal_equation_with_preservation_relative_to_the_harmful_keys() -> None:
    data = _data()
    config = SolveConfig(method="residual", harmless_targets=1.0, alpha=0.5, beta=2.0, lam=0.1)
    K, R = edit_keys(data, config), edit_target(data, config, (data.r_hrl - data.r_low).T)
    Kn = protected_keys(data, config)
    C0 = torch.eye(F, dtype=torch.float64) * 0.3
    solution, remaining = residual_step(K, Kn, C0, R, 1, config, harmful_keys=6)
    n_h = 6  # alpha and beta count the harmful keys, not the 10 columns
    A = (
        K @ K.T
        + 0.5 * n_h * C0
        + 2.0 * n_h / Kn.shape[1] * Kn @ Kn.T
        + 0.1 * torch.trace(K @ K.T) / F * torch.eye(F, dtype=torch.float64)
    )
    expected = torch.linalg.solve(A, K @ R.T).T
    assert torch.allclose(solution.delta.double(), expected, atol=1e-10)
    assert torch.allclose(remaining, R - expected @ K, atol=1e-10)


def test_mapping_the_harmless_pairs_moves_them_towards_the_hrl() -> None:
    data = _data(seed=3)
    C0 = torch.eye(F, dtype=torch.float64) * 0.3
    low, hrl = data.harmless_pairs()
    pair_keys, pair_target = data.a_safe[low].T, (data.r_safe[hrl] - data.r_safe[low]).T

    def pair_error(weight: float) -> float:
        config = SolveConfig(method="residual", harmless_targets=weight)
        K, R = edit_keys(data, config), edit_target(data, config, (data.r_hrl - data.r_low).T)
        solution = solve_residual(
            K, R, C0=C0, Kn=protected_keys(data, config), alpha=1.0, beta=1.0, lam=0.1
        )
        change = solution.delta.double() @ pair_keys
        return torch.linalg.matrix_norm(change - pair_target).item()

    assert pair_error(2.0) < pair_error(0.5) < pair_error(0.0)


def test_lang_strength_scales_one_languages_targets() -> None:
    data = _data()
    config = SolveConfig(method="residual", strength=1.5, lang_strength="sw=2")
    target = ResidualMethod().target(data, config)
    scaled = edit_target(data, config, target)
    assert torch.allclose(scaled[:, :3], target[:, :3])  # bn: factor 1
    assert torch.allclose(scaled[:, 3:], 2 * target[:, 3:])


@pytest.mark.parametrize("text", ["sw", "sw=0", "sw=-1", "sw=two", "=2", "sw=nan", "sw=inf"])
def test_a_bad_language_factor_is_refused_before_any_work(text: str) -> None:
    with pytest.raises(SolveError, match="language factor"):
        SolveConfig(method="residual", lang_strength=text)


def test_candidates_read_both_settings() -> None:
    base = SolveConfig(method="residual")
    config = parse_candidate("residual@12 harmless_targets=0.5 lang_strength=sw=2,th=1.5", base)
    assert config.harmless_targets == 0.5
    assert language_factors(config.lang_strength) == {"sw": 2.0, "th": 1.5}
    with pytest.raises(SolveError, match="harmless_targets"):
        parse_candidate("residual@12 harmless_targets=-1", base)


def test_solve_on_a_probed_workspace_with_harmless_targets(tmp_path: Path) -> None:
    workspace = Workspace(localized_workspace(tmp_path))
    context = context_from(workspace)
    layer = context.probed_layers[-1]
    data = layer_data(workspace, layer, context.hrl, context.langs)
    assert data.low_langs and set(data.safe_langs) == {"en", "es", "sw"}
    method = ResidualMethod()
    plain, _ = method.solve(context, SolveConfig(method="residual", layers=(layer,)))
    mapped, report = method.solve(
        context, SolveConfig(method="residual", layers=(layer,), harmless_targets=1.0)
    )
    low, hrl = data.harmless_pairs()
    assert low, "the tiny workspace's harmless prompts are parallel"
    pair_keys = data.a_safe[low].T.double()
    pair_target = (data.r_safe[hrl] - data.r_safe[low]).T.double()

    def pair_error(edits: list) -> float:
        return torch.linalg.matrix_norm(edits[0].delta.double() @ pair_keys - pair_target).item()

    assert pair_error(mapped) < pair_error(plain)
    assert math.isfinite(report[layer]["down"]["relative_residual"])
