"""The residual/refusal edits over the last N prompt positions (solve's `positions`): each
recorded position of a prompt is one more key, paired with the same position of its
translation; harmless ids carry the position so that pairs still match. A probe with fewer
positions than asked is an error naming `swe probe --positions`."""

from __future__ import annotations

import math

import pytest
import torch
from common import localized_workspace

from swe_cli.card import method_parameters
from swe_cli.errors import SolveError
from swe_cli.methods.base import context_from, layer_data
from swe_cli.methods.residual import ResidualMethod
from swe_cli.settings import SolveConfig
from swe_cli.stages.select import parse_candidate
from swe_cli.workspace import Workspace, load_acts


@pytest.fixture(scope="module")
def probed(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return Workspace(localized_workspace(tmp_path_factory.mktemp("pos"), positions=3))


def test_rows_are_the_last_positions_paired_by_position(probed: Workspace) -> None:
    context = context_from(probed)
    layer = context.probed_layers[-1]
    one = layer_data(probed, layer, context.hrl, context.langs)
    three = layer_data(probed, layer, context.hrl, context.langs, positions=3)
    assert three.a_low.shape[0] == 3 * one.a_low.shape[0]
    assert three.low_langs == tuple(lang for lang in one.low_langs for _ in range(3))
    # every third row (the last position of each prompt) is the one-position data
    assert torch.equal(three.a_low[2::3], one.a_low)
    assert torch.equal(three.r_hrl[2::3], one.r_hrl)
    # the rows before are the earlier positions of the same prompt, as recorded
    acts, _ = load_acts(probed, layer, "harmful", context.langs[0])
    n = acts["a"].shape[0]
    assert torch.equal(three.a_low[: 3 * n].reshape(n, 3, -1), acts["a"][:, -3:, :])
    # harmless pairs match id and position
    low, hrl = three.harmless_pairs()
    assert low and all(
        three.safe_ids[a] == three.safe_ids[b] and "@" in three.safe_ids[a]
        for a, b in zip(low, hrl, strict=True)
    )
    assert len(low) == 3 * len(one.harmless_pairs()[0])


def test_more_positions_than_recorded_is_an_error(probed: Workspace) -> None:
    context = context_from(probed)
    with pytest.raises(SolveError, match="last 4 prompt positions, the probe recorded 3") as error:
        layer_data(probed, context.probed_layers[-1], context.hrl, context.langs, positions=4)
    assert "--positions 4" in error.value.hint


def test_solve_maps_every_position(probed: Workspace) -> None:
    context = context_from(probed)
    layer = context.probed_layers[-1]
    data = layer_data(probed, layer, context.hrl, context.langs, positions=3)
    keys = data.a_low.T.double()
    target = (data.r_hrl - data.r_low).T.double()

    def error(edits: list) -> float:
        return torch.linalg.matrix_norm(edits[0].delta.double() @ keys - target).item()

    method = ResidualMethod()
    last, _ = method.solve(context, SolveConfig(method="residual", layers=(layer,)))
    every, report = method.solve(
        context, SolveConfig(method="residual", layers=(layer,), positions=3)
    )
    assert error(every) < error(last)
    assert math.isfinite(report[layer]["down"]["relative_residual"])


def test_candidate_and_card_name_positions() -> None:
    base = SolveConfig(method="residual")
    config = parse_candidate("residual@12 positions=5", base)
    assert config.positions == 5
    with pytest.raises(SolveError, match="positions"):
        parse_candidate("residual@12 positions=0", base)
    assert method_parameters("residual", config.plain())["positions"] == 5
    assert "positions" not in method_parameters("residual", base.plain())
