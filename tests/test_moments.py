"""probe's second moments: products in float32 per batch, summed in float64 in place, upper
triangle only. The sum stays within float32's rounding of one batch of the float64 reference."""

from __future__ import annotations

import pytest
import torch

from swe_cli.stages.probe import SecondMoment

UNIT = 2.0**-24  # float32 unit roundoff


def _batches(generator: torch.Generator, size: int) -> list[torch.Tensor]:
    # activations are far from zero-mean and unevenly scaled, like MLP inputs and neurons
    scale = torch.rand(size, generator=generator) * 4
    shift = torch.randn(size, generator=generator)
    return [
        torch.randn(rows, size, generator=generator) * scale + shift
        for rows in (300, 1, 517, 64, 300)
    ]


@pytest.mark.parametrize(("size", "block"), [(96, 1024), (96, 32), (100, 7)])
def test_sum_is_within_float32_rounding_of_the_float64_reference(size: int, block: int) -> None:
    generator = torch.Generator().manual_seed(size + block)
    batches = _batches(generator, size)
    moment = SecondMoment(size, "cpu", block=block)
    for rows in batches:
        moment.add(rows)
    total = moment.total()
    reference = sum(rows.double().T @ rows.double() for rows in batches)
    # each entry of a batch's float32 product is a sum of n products: its error is at most
    # n * u * sum |x_i| |x_j| (Higham's gamma_n); the float64 additions add nothing visible
    bound = sum(
        len(rows) * UNIT * (rows.double().abs().T @ rows.double().abs()) for rows in batches
    )
    assert total.dtype == torch.float64
    assert torch.equal(total, total.T)
    assert bool(((total - reference).abs() <= 1.01 * bound).all())
    # and the bound is not vacuous: the sum is close in relative terms too
    relative = (total - reference).norm() / reference.norm()
    assert relative < max(len(rows) for rows in batches) * UNIT


def test_the_accumulator_is_updated_in_place() -> None:
    """No new size x size matrix per batch: the sum is one tensor, from the first batch on."""
    generator = torch.Generator().manual_seed(0)
    moment = SecondMoment(40, "cpu", block=16)
    storage = moment.sum.data_ptr()
    for rows in _batches(generator, 40):
        moment.add(rows)
        assert moment.sum.data_ptr() == storage
    assert moment.total().data_ptr() == storage


def test_half_precision_rows_are_multiplied_in_float32() -> None:
    generator = torch.Generator().manual_seed(1)
    rows = torch.randn(200, 24, generator=generator).to(torch.bfloat16)
    moment = SecondMoment(24, "cpu", block=8)
    moment.add(rows)
    exact = rows.double().T @ rows.double()  # bfloat16 values are exact in float32 and float64
    bound = len(rows) * UNIT * (rows.double().abs().T @ rows.double().abs())
    assert bool(((moment.total() - exact).abs() <= 1.01 * bound).all())
