"""Method `refusal`: its target moves only the projection on the HRL refusal direction, up to
the HRL harmful level, and never pushes a prompt that is already there."""

from __future__ import annotations

import pytest
import torch

from swe_cli.errors import SolveError
from swe_cli.methods import get_method
from swe_cli.methods.base import LayerData
from swe_cli.methods.refusal import refusal_direction, refusal_target
from swe_cli.settings import SolveConfig


def _data(r_low: torch.Tensor, n_safe_hrl: int = 3) -> LayerData:
    d = r_low.shape[1]
    harmful_hrl = torch.zeros(4, d)
    harmful_hrl[:, 0] = torch.tensor([3.0, 5.0, 4.0, 4.0])  # mean 4 along axis 0
    harmful_hrl[:, 1] = torch.tensor([1.0, -1.0, 2.0, -2.0])  # noise with mean 0
    harmless = torch.zeros(n_safe_hrl + 2, d)
    harmless[n_safe_hrl:, 0] = 100.0  # LRL harmless rows: must not enter the direction
    empty = torch.zeros(0)
    return LayerData(
        x_low=empty,
        x_hrl=empty,
        a_low=empty,
        r_low=r_low,
        r_hrl=harmful_hrl,
        x_safe=empty,
        a_safe=empty,
        r_safe=harmless,
        n_safe_hrl=n_safe_hrl,
    )


def test_direction_is_hrl_harmful_minus_hrl_harmless() -> None:
    direction, level = refusal_direction(_data(torch.zeros(2, 3)))
    assert torch.allclose(direction, torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    assert level.item() == pytest.approx(4.0)


def test_target_fills_the_shortfall_along_the_direction_only() -> None:
    r_low = torch.tensor([[1.0, 7.0, -2.0], [4.0, 0.0, 0.0], [6.0, 1.0, 1.0]])
    target = refusal_target(_data(r_low), strength=1.0)
    assert target.shape == (3, 3)  # d x n
    expected = torch.zeros(3, 3, dtype=torch.float64)
    expected[0, 0] = 3.0  # 1 -> 4; the other coordinates are untouched
    assert torch.allclose(target, expected)  # at the level, or past it: no push
    moved = r_low.double() + target.T
    assert torch.allclose(moved[:, 1:], r_low[:, 1:].double())
    assert torch.allclose(refusal_target(_data(r_low), strength=2.0), 2 * expected)


def test_reference_rows_define_direction_and_level() -> None:
    validation = _data(torch.tensor([[0.0, 0.0, 0.0]]))
    reference = _data(torch.zeros(1, 3))
    reference.r_hrl[:, 0] += 6.0  # level 10 in the reference rows
    target = refusal_target(validation, 1.0, reference=reference)
    assert target[0, 0].item() == pytest.approx(10.0)


def test_needs_hrl_harmless_prompts() -> None:
    with pytest.raises(SolveError, match="HRL harmless"):
        refusal_direction(_data(torch.zeros(1, 3), n_safe_hrl=0))


def test_registered_and_uses_strength() -> None:
    method = get_method("refusal")
    data = _data(torch.tensor([[1.0, 0.0, 0.0]]))
    target = method.target(data, SolveConfig(method="refusal", strength=0.5))
    assert target[0, 0].item() == pytest.approx(1.5)
