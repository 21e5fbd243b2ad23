"""`keep_hrl`: the residual/refusal edits also keep the outputs of the HRL harmful prompts (which
the model already refuses). The protected keys are the harmless block and the HRL block, each
weighted as a whole like the edit keys, so the solve equals the normal equation with one penalty
term per block; a strength scales the residual target."""

from __future__ import annotations

import torch

from swe_cli.methods.base import LayerData
from swe_cli.methods.linalg import solve_residual
from swe_cli.methods.residual import ResidualMethod, protected_keys
from swe_cli.settings import SolveConfig


def _data(seed: int = 0) -> LayerData:
    generator = torch.Generator().manual_seed(seed)
    f, d, n, n_safe = 12, 5, 6, 9

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    empty = torch.zeros(0)
    return LayerData(
        x_low=empty,
        x_hrl=empty,
        a_low=rand(n, f),
        r_low=rand(n, d),
        r_hrl=rand(n, d),
        x_safe=empty,
        a_safe=rand(n_safe, f),
        a_hrl=rand(n, f),
    )


def test_without_keep_hrl_only_the_harmless_keys_are_protected() -> None:
    data = _data()
    assert torch.equal(protected_keys(data, SolveConfig(method="residual")), data.a_safe.T)


def test_keep_hrl_adds_one_penalty_per_block() -> None:
    data = _data()
    config = SolveConfig(method="residual", keep_hrl=True, alpha=0.5, beta=2.0, lam=0.1)
    K, R = data.a_low.T, (data.r_hrl - data.r_low).T
    C0 = torch.eye(K.shape[0], dtype=torch.float64) * 0.3
    kept = protected_keys(data, config)
    assert kept.shape == (K.shape[0], data.a_safe.shape[0] + data.a_hrl.shape[0])
    solution = solve_residual(K, R, C0=C0, Kn=kept, alpha=0.5, beta=2.0, lam=0.1)
    n = K.shape[1]
    safe, hrl = data.a_safe.T, data.a_hrl.T
    lam_abs = 0.1 * torch.trace(K @ K.T) / K.shape[0]
    A = (
        K @ K.T
        + 0.5 * n * C0
        + 2.0 * n * (safe @ safe.T / safe.shape[1] + hrl @ hrl.T / hrl.shape[1])
        + lam_abs * torch.eye(K.shape[0], dtype=torch.float64)
    )
    expected = torch.linalg.solve(A, K @ R.T).T
    assert torch.allclose(solution.delta.double(), expected, atol=1e-10)
    # the HRL harmful prompts' outputs move less than without the term
    free = solve_residual(K, R, C0=C0, Kn=safe, alpha=0.5, beta=2.0, lam=0.1)
    moved = torch.linalg.matrix_norm(solution.delta.double() @ hrl)
    assert moved < torch.linalg.matrix_norm(free.delta.double() @ hrl)


def test_strength_scales_the_residual_target() -> None:
    data = _data()
    method = ResidualMethod()
    one = method.target(data, SolveConfig(method="residual"))
    assert torch.allclose(one, (data.r_hrl - data.r_low).T)
    assert torch.allclose(
        method.target(data, SolveConfig(method="residual", strength=1.5)), 1.5 * one
    )
