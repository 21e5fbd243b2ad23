"""Solver tests: every closed form is compared with an independent computation of its optimum."""

from __future__ import annotations

import math

import pytest
import torch

from swe_cli.errors import SolveError
from swe_cli.methods.linalg import (
    Solution,
    nullspace_projector,
    relative_residual,
    scale_paper_coefficients,
    solve_paper,
    solve_paper_hard,
    solve_residual,
)

F64 = torch.float64


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _paper_data(
    seed: int = 0, n_harmful: int = 12, n_safe: int = 9, d: int = 10, m: int = 6
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = _generator(seed)
    X_low = torch.randn(n_harmful, d, generator=g, dtype=F64)
    X_en = X_low + 0.7 * torch.randn(n_harmful, d, generator=g, dtype=F64)
    X_safe = torch.randn(n_safe, d, generator=g, dtype=F64)
    W_S = torch.randn(d, m, generator=g, dtype=F64)
    return X_low, X_en, X_safe, W_S


def _paper_objective(dW, X_low, X_en, X_safe, W_S, gamma_abs, lambda_abs) -> float:
    D = (X_en - X_low) @ W_S
    return (
        (X_low @ dW - D).square().sum()
        + gamma_abs * (X_safe @ dW).square().sum()
        + lambda_abs * dW.square().sum()
    ).item()


def _ridge_by_lstsq(X_low, X_en, X_safe, W_S, gamma_abs, lambda_abs) -> torch.Tensor:
    """Dense least squares on the stacked system [X_low; sqrt(g) X_safe; sqrt(l) I] dW = [D; 0; 0]."""
    d, m = W_S.shape
    D = (X_en - X_low) @ W_S
    A = torch.cat([X_low, math.sqrt(gamma_abs) * X_safe, math.sqrt(lambda_abs) * torch.eye(d)])
    B = torch.cat([D, torch.zeros(X_safe.shape[0] + d, m, dtype=F64)])
    return torch.linalg.lstsq(A, B).solution


def _best_rank_r_by_lbfgs(X_low, X_en, X_safe, W_S, gamma_abs, lambda_abs, r, seed) -> float:
    """Independent optimiser: L-BFGS on the factors dW = A B^T of the paper objective."""
    g = _generator(seed)
    d, m = W_S.shape
    A = torch.randn(d, r, generator=g, dtype=F64).requires_grad_()
    B = torch.randn(m, r, generator=g, dtype=F64).requires_grad_()
    optimiser = torch.optim.LBFGS(
        [A, B], lr=1, max_iter=300, tolerance_grad=1e-12, tolerance_change=1e-15
    )
    D = (X_en - X_low) @ W_S

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        dW = A @ B.T
        loss = (
            (X_low @ dW - D).square().sum()
            + gamma_abs * (X_safe @ dW).square().sum()
            + lambda_abs * dW.square().sum()
        )
        loss.backward()
        return loss

    optimiser.step(closure)
    with torch.no_grad():
        return _paper_objective(A @ B.T, X_low, X_en, X_safe, W_S, gamma_abs, lambda_abs)


def _rank(delta: torch.Tensor) -> int:
    """Numerical rank at float32 precision, the precision the solvers return."""
    return int(torch.linalg.matrix_rank(delta.to(torch.float32)).item())


# ---------------------------------------------------------------------------------------------
# Coefficient scaling


def test_scale_paper_coefficients_values() -> None:
    X_low, _, X_safe, _ = _paper_data(n_harmful=12, n_safe=9, d=10)
    gamma_abs, lambda_abs = scale_paper_coefficients(X_low, X_safe, 0.5, 0.1)
    assert gamma_abs == pytest.approx(0.5 * 12 / 9)
    assert lambda_abs == pytest.approx(0.1 * torch.trace(X_low.T @ X_low).item() / 10)


# ---------------------------------------------------------------------------------------------
# solve_paper


def test_solve_paper_full_rank_is_the_ridge_solution() -> None:
    data = _paper_data(seed=1)
    X_low, X_en, X_safe, W_S = data
    solution = solve_paper(*data, rank=6, gamma=0.8, lam=0.05)
    gamma_abs, lambda_abs = scale_paper_coefficients(X_low, X_safe, 0.8, 0.05)
    expected = _ridge_by_lstsq(*data, gamma_abs, lambda_abs)
    assert isinstance(solution, Solution)
    assert solution.delta.dtype == torch.float32 and solution.delta.shape == (10, 6)
    torch.testing.assert_close(solution.delta.to(F64), expected, rtol=1e-5, atol=1e-6)
    # rank far above min(d, m) is also "no truncation"
    torch.testing.assert_close(
        solve_paper(*data, rank=999, gamma=0.8, lam=0.05).delta, solution.delta
    )


def test_solve_paper_diagnostics_match_independent_values() -> None:
    data = _paper_data(seed=2)
    X_low, X_en, X_safe, W_S = data
    solution = solve_paper(*data, rank=3, gamma=2.0, lam=0.1)
    dW = solution.delta.to(F64)
    D = (X_en - X_low) @ W_S
    gamma_abs, lambda_abs = scale_paper_coefficients(X_low, X_safe, 2.0, 0.1)
    Q = X_low.T @ X_low + gamma_abs * X_safe.T @ X_safe + lambda_abs * torch.eye(10, dtype=F64)
    diagnostics = solution.diagnostics
    assert diagnostics["rank"] == 3 and diagnostics["rank_requested"] == 3
    assert diagnostics["relative_residual"] == pytest.approx(
        (torch.norm(X_low @ dW - D) / torch.norm(D)).item(), rel=1e-5
    )
    assert diagnostics["utility_leak"] == pytest.approx(
        (torch.norm(X_safe @ dW) / torch.norm(X_safe @ W_S)).item(), rel=1e-5
    )
    assert diagnostics["condition_number"] == pytest.approx(torch.linalg.cond(Q).item(), rel=1e-8)
    assert diagnostics["gamma_abs"] == pytest.approx(gamma_abs)
    assert diagnostics["lambda_abs"] == pytest.approx(lambda_abs)
    assert (diagnostics["n_harmful"], diagnostics["n_safe"]) == (12, 9)
    assert (diagnostics["d"], diagnostics["m"]) == (10, 6)
    assert all(isinstance(value, int | float) for value in diagnostics.values())
    assert 0.0 < diagnostics["relative_residual"] < 1.0


def test_solve_paper_truncated_is_the_rank_constrained_optimum() -> None:
    data = _paper_data(seed=3)
    X_low, X_en, X_safe, W_S = data
    r = 2
    gamma_abs, lambda_abs = scale_paper_coefficients(X_low, X_safe, 1.0, 0.05)
    dW = solve_paper(*data, rank=r, gamma=1.0, lam=0.05).delta.to(F64)
    assert _rank(dW) <= r
    optimum = _paper_objective(dW, *data, gamma_abs, lambda_abs)

    # Independent optimiser on the factors: never below the closed form, and reaches it.
    lbfgs = [_best_rank_r_by_lbfgs(*data, gamma_abs, lambda_abs, r, seed) for seed in range(3)]
    assert min(lbfgs) >= optimum * (1 - 1e-7)  # float32 rounding of the delta
    assert min(lbfgs) == pytest.approx(optimum, rel=1e-6)

    # Local optimality on the rank-r manifold: random perturbations projected back to rank r.
    g = _generator(30)
    for eps in (1e-3, 1e-2, 1e-1):
        for _ in range(20):
            U, S, Vh = torch.linalg.svd(dW + eps * torch.randn(10, 6, generator=g, dtype=F64))
            perturbed = U[:, :r] * S[:r] @ Vh[:r]
            assert _paper_objective(perturbed, *data, gamma_abs, lambda_abs) >= optimum * (
                1 - 1e-12
            )

    # The plain (unwhitened) truncation of the ridge solution is strictly worse here.
    U, S, Vh = torch.linalg.svd(_ridge_by_lstsq(*data, gamma_abs, lambda_abs))
    plain = U[:, :r] * S[:r] @ Vh[:r]
    assert _paper_objective(plain, *data, gamma_abs, lambda_abs) > optimum * (1 + 1e-4)


def test_solve_paper_gamma_drives_harmless_leak_to_zero() -> None:
    data = _paper_data(seed=4, n_safe=4)  # N_s < d: the edit can hide in X_safe's null space
    X_safe = data[2]
    leaks, residuals = [], []
    for gamma in (0.1, 1.0, 10.0, 1e3, 1e5):
        solution = solve_paper(*data, rank=6, gamma=gamma, lam=0.01)
        leaks.append(torch.norm(X_safe @ solution.delta.to(F64)).item())
        residuals.append(solution.diagnostics["relative_residual"])
    assert all(later < earlier for earlier, later in zip(leaks, leaks[1:], strict=False))
    assert leaks[-1] < 1e-3 * leaks[0]
    assert residuals[-1] < 0.9  # still edits, inside the null space of X_safe


def test_solve_paper_relative_coefficients_are_scale_invariant() -> None:
    data = _paper_data(seed=5)
    X_low, X_en, X_safe, W_S = data
    base = solve_paper(*data, rank=3, gamma=1.0, lam=0.1).delta.to(F64)
    c = 37.0
    scaled = solve_paper(c * X_low, c * X_en, c * X_safe, W_S, rank=3, gamma=1.0, lam=0.1)
    torch.testing.assert_close(
        (c * X_low) @ scaled.delta.to(F64) / c, X_low @ base, rtol=1e-4, atol=1e-5
    )
    # the edit is linear in the target weights
    doubled = solve_paper(X_low, X_en, X_safe, 3.0 * W_S, rank=3, gamma=1.0, lam=0.1)
    torch.testing.assert_close(doubled.delta.to(F64), 3.0 * base, rtol=1e-4, atol=1e-5)


def test_relative_residual_helper() -> None:
    X = torch.eye(3, dtype=F64)
    D = torch.ones(3, 2, dtype=F64)
    assert relative_residual(X, torch.zeros(3, 2), D) == pytest.approx(1.0)
    assert relative_residual(X, D, D) == pytest.approx(0.0)
    assert relative_residual(X, 0.5 * D, D) == pytest.approx(0.5)
    assert relative_residual(X, torch.zeros(3, 2), torch.zeros(3, 2)) == 0.0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"X_en": torch.zeros(11, 10)}, "X_en rows"),
        ({"X_en": torch.zeros(12, 9)}, "X_en columns"),
        ({"X_safe": torch.zeros(9, 8)}, "X_safe columns"),
        ({"W_S": torch.zeros(7, 6)}, "W_S rows"),
        ({"X_low": torch.zeros(0, 10)}, "X_low is empty"),
        ({"X_safe": torch.full((9, 10), math.nan)}, "X_safe holds NaN"),
        ({"X_low": torch.zeros(12)}, "X_low must be a 2-D"),
        ({"lam": 0.0}, "lam must be"),
        ({"lam": -1.0}, "lam must be"),
        ({"rank": 0}, "rank must be"),
        ({"gamma": -1.0}, "gamma must be"),
    ],
)
def test_solve_paper_rejects_bad_inputs(change: dict, message: str) -> None:
    X_low, X_en, X_safe, W_S = _paper_data()
    arguments = {"X_low": X_low, "X_en": X_en, "X_safe": X_safe, "W_S": W_S}
    arguments.update(rank=2, gamma=1.0, lam=0.1)
    arguments.update(change)
    with pytest.raises(SolveError, match=message):
        solve_paper(**arguments)


# ---------------------------------------------------------------------------------------------
# nullspace_projector and solve_paper_hard


def test_nullspace_projector_is_the_small_eigenvalue_projector() -> None:
    g = _generator(6)
    basis, _ = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=F64))
    spectrum = torch.tensor([10.0, 5.0, 1.0, 0.2, 0.05, 1e-3, 0.0, 0.0], dtype=F64)
    C0 = basis @ torch.diag(spectrum) @ basis.T
    P, dim = nullspace_projector(C0, threshold=1e-2)
    assert dim == 4  # eigenvalues below 0.1: 0.05, 1e-3, 0, 0
    torch.testing.assert_close(P, P.T)
    torch.testing.assert_close(P @ P, P)
    torch.testing.assert_close(P, basis[:, 4:] @ basis[:, 4:].T)
    assert torch.linalg.matrix_norm(P @ C0 @ P, ord=2) <= 1e-2 * 10.0
    # cut-off 0.3 x 10 = 3.0 lies well between the eigenvalues 5.0 and 1.0 (not on one of them)
    assert nullspace_projector(C0, threshold=0.3)[1] == 6  # 1.0 and below
    assert nullspace_projector(torch.zeros(3, 3))[1] == 3  # nothing to preserve: P = I


def test_solve_paper_hard_is_the_projected_ridge_solution() -> None:
    data = _paper_data(seed=7, n_safe=4)
    X_low, X_en, X_safe, W_S = data
    solution = solve_paper_hard(*data, rank=6, lam=0.05)
    # Independent: parametrise dW = U0 B over an orthonormal null basis U0 of X_safe and solve
    # min ||X_low U0 B - D||^2 + lambda ||B||^2 by stacked least squares.
    U0 = torch.linalg.svd(X_safe).Vh[4:].T
    lambda_abs = 0.05 * torch.trace(X_low.T @ X_low).item() / 10
    D = (X_en - X_low) @ W_S
    A = torch.cat([X_low @ U0, math.sqrt(lambda_abs) * torch.eye(6, dtype=F64)])
    B = torch.linalg.lstsq(A, torch.cat([D, torch.zeros(6, 6, dtype=F64)])).solution
    torch.testing.assert_close(solution.delta.to(F64), U0 @ B, rtol=1e-5, atol=1e-6)
    assert solution.diagnostics["nullspace_dim"] == 6
    assert solution.diagnostics["utility_leak"] < 1e-6
    assert solution.diagnostics["relative_residual"] < 1.0


def test_solve_paper_hard_truncated_stays_in_null_space_and_is_optimal() -> None:
    data = _paper_data(seed=8, n_safe=4)
    X_low, X_en, X_safe, W_S = data
    r = 2
    dW = solve_paper_hard(*data, rank=r, lam=0.05).delta.to(F64)
    assert _rank(dW) <= r
    assert torch.norm(X_safe @ dW) < 1e-5 * torch.norm(dW)
    # Independent: best rank-r B in the null basis coordinates by whitening with a symmetric root.
    U0 = torch.linalg.svd(X_safe).Vh[4:].T
    lambda_abs = 0.05 * torch.trace(X_low.T @ X_low).item() / 10
    D = (X_en - X_low) @ W_S
    Q = U0.T @ X_low.T @ X_low @ U0 + lambda_abs * torch.eye(6, dtype=F64)
    eigenvalues, V = torch.linalg.eigh(Q)
    root = V @ torch.diag(eigenvalues.sqrt()) @ V.T
    U, S, Vh = torch.linalg.svd(root @ torch.linalg.solve(Q, U0.T @ X_low.T @ D))
    B = torch.linalg.solve(root, U[:, :r] * S[:r] @ Vh[:r])
    torch.testing.assert_close(dW, U0 @ B, rtol=1e-4, atol=1e-5)


def test_solve_paper_hard_refuses_an_empty_null_space() -> None:
    data = _paper_data(seed=9, n_safe=40)  # well-conditioned X_safe spans everything
    with pytest.raises(SolveError, match="null space is empty"):
        solve_paper_hard(*data, rank=2, lam=0.1, threshold=1e-3)


# ---------------------------------------------------------------------------------------------
# solve_residual (columns are samples)


def _residual_data(
    seed: int = 0, f: int = 9, d: int = 5, n: int = 7, n_safe: int = 4, positions: int = 30
) -> dict[str, torch.Tensor]:
    g = _generator(seed)
    Z = torch.randn(f, positions, generator=g, dtype=F64)
    return {
        "K": torch.randn(f, n, generator=g, dtype=F64),
        "R": torch.randn(d, n, generator=g, dtype=F64),
        "C0": Z @ Z.T / positions,
        "Kn": torch.randn(f, n_safe, generator=g, dtype=F64),
        "Z": Z,
    }


def test_solve_residual_soft_is_the_stacked_least_squares_solution() -> None:
    data = _residual_data(seed=10)
    K, R, C0, Kn, Z = data["K"], data["R"], data["C0"], data["Kn"], data["Z"]
    alpha, beta, lam = 0.3, 0.7, 0.05
    solution = solve_residual(K, R, C0=C0, Kn=Kn, alpha=alpha, beta=beta, lam=lam)
    n, n_safe, f = 7, 4, 9
    alpha_abs, beta_abs = alpha * n, beta * n / n_safe
    lambda_abs = lam * torch.trace(K @ K.T).item() / f
    # Unknown dW^T (f x d); C0 = Z Z^T / p, so its penalty is ||sqrt(alpha_abs / p) Z^T dW^T||^2.
    A = torch.cat(
        [
            K.T,
            math.sqrt(alpha_abs / Z.shape[1]) * Z.T,
            math.sqrt(beta_abs) * Kn.T,
            math.sqrt(lambda_abs) * torch.eye(f, dtype=F64),
        ]
    )
    B = torch.cat([R.T, torch.zeros(A.shape[0] - K.shape[1], R.shape[0], dtype=F64)])
    expected = torch.linalg.lstsq(A, B).solution.T
    assert solution.delta.shape == (5, 9) and solution.delta.dtype == torch.float32
    torch.testing.assert_close(solution.delta.to(F64), expected, rtol=1e-5, atol=1e-6)

    dW = solution.delta.to(F64)
    diagnostics = solution.diagnostics
    assert diagnostics["relative_residual"] == pytest.approx(
        (torch.norm(dW @ K - R) / torch.norm(R)).item(), rel=1e-5
    )
    assert diagnostics["preservation_energy"] == pytest.approx(
        (torch.trace(dW @ C0 @ dW.T) / (torch.norm(R) ** 2 / n)).item(), rel=1e-5
    )
    assert diagnostics["harmless_key_leak"] == pytest.approx(
        (torch.norm(dW @ Kn) / torch.norm(R) * math.sqrt(n / n_safe)).item(), rel=1e-5
    )
    system = K @ K.T + alpha_abs * C0 + beta_abs * Kn @ Kn.T + lambda_abs * torch.eye(f, dtype=F64)
    assert diagnostics["condition_number"] == pytest.approx(
        torch.linalg.cond(system).item(), rel=1e-8
    )
    assert diagnostics["alpha_abs"] == pytest.approx(alpha_abs)
    assert diagnostics["beta_abs"] == pytest.approx(beta_abs)
    assert diagnostics["lambda_abs"] == pytest.approx(lambda_abs)
    assert diagnostics["rank"] == 5 and "nullspace_dim" not in diagnostics


def test_solve_residual_alpha_shrinks_energy_on_preserved_positions() -> None:
    data = _residual_data(seed=11)
    energies = []
    for alpha in (0.0, 0.1, 1.0, 10.0, 1e3):
        solution = solve_residual(
            data["K"], data["R"], C0=data["C0"], Kn=data["Kn"], alpha=alpha, beta=0.0, lam=0.01
        )
        energies.append(solution.diagnostics["preservation_energy"])
    assert all(later < earlier for earlier, later in zip(energies, energies[1:], strict=False))
    assert energies[-1] < 1e-3 * energies[0]


def test_solve_residual_beta_shrinks_harmless_key_leak() -> None:
    data = _residual_data(seed=12)
    leaks = [
        solve_residual(
            data["K"], data["R"], C0=data["C0"], Kn=data["Kn"], alpha=0.1, beta=beta, lam=0.01
        ).diagnostics["harmless_key_leak"]
        for beta in (0.0, 1.0, 100.0, 1e4)
    ]
    assert all(later < earlier for earlier, later in zip(leaks, leaks[1:], strict=False))
    assert leaks[-1] < 1e-3 * leaks[0]


def test_solve_residual_hard_annihilates_preserved_directions() -> None:
    g = _generator(13)
    f, d, n = 9, 5, 7
    basis, _ = torch.linalg.qr(torch.randn(f, f, generator=g, dtype=F64))
    C0 = basis[:, :4] @ torch.diag(torch.tensor([4.0, 3.0, 2.0, 1.0], dtype=F64)) @ basis[:, :4].T
    K = torch.randn(f, n, generator=g, dtype=F64)
    R = torch.randn(d, n, generator=g, dtype=F64)
    Kn = basis[:, 4:5] * 2.0  # one harmless key outside C0's range: beta must protect it too
    solution = solve_residual(K, R, C0=C0, Kn=Kn, alpha=1.0, beta=1.0, lam=0.02, hard=True)
    dW = solution.delta.to(F64)
    assert solution.diagnostics["nullspace_dim"] == 4
    assert torch.norm(dW @ basis[:, :5]) < 1e-5 * torch.norm(dW)  # top eigenvectors -> ~0
    assert solution.diagnostics["harmless_key_leak"] < 1e-5
    # AlphaEdit closed form Delta = R K^T P (K K^T P + lambda I)^-1, computed literally.
    lambda_abs = 0.02 * torch.trace(K @ K.T).item() / f
    P = basis[:, 5:] @ basis[:, 5:].T
    expected = R @ K.T @ P @ torch.linalg.inv(K @ K.T @ P + lambda_abs * torch.eye(f, dtype=F64))
    torch.testing.assert_close(dW, expected, rtol=1e-5, atol=1e-6)
    assert 0.0 < solution.diagnostics["relative_residual"] < 1.0


def test_solve_residual_rank_cap_is_the_constrained_optimum() -> None:
    data = _residual_data(seed=14)
    K, R, C0, Kn = data["K"], data["R"], data["C0"], data["Kn"]
    arguments = {"C0": C0, "Kn": Kn, "alpha": 0.5, "beta": 0.5, "lam": 0.05}
    dW = solve_residual(K, R, rank=2, **arguments).delta.to(F64)
    assert _rank(dW) <= 2
    n, n_safe, f = 7, 4, 9
    system = K @ K.T + 0.5 * n * C0 + 0.5 * n / n_safe * Kn @ Kn.T
    system = system + 0.05 * torch.trace(K @ K.T) / f * torch.eye(f, dtype=F64)

    def objective(update: torch.Tensor) -> float:
        return (torch.trace(update @ system @ update.T) - 2 * torch.trace(update @ K @ R.T)).item()

    optimum = objective(dW)
    g = _generator(140)
    for eps in (1e-3, 1e-2, 1e-1):
        for _ in range(20):
            U, S, Vh = torch.linalg.svd(dW + eps * torch.randn(5, 9, generator=g, dtype=F64))
            assert objective(U[:, :2] * S[:2] @ Vh[:2]) >= optimum - 1e-12 * abs(optimum)
    hard = solve_residual(K, R, rank=1, hard=True, threshold=0.5, **arguments).delta
    assert _rank(hard) <= 1


def test_solve_residual_relative_coefficients_are_scale_invariant() -> None:
    data = _residual_data(seed=15)
    K, R, C0, Kn = data["K"], data["R"], data["C0"], data["Kn"]
    arguments = {"alpha": 0.5, "beta": 2.0, "lam": 0.1}
    base = solve_residual(K, R, C0=C0, Kn=Kn, **arguments).delta.to(F64)
    c, b = 13.0, 0.25
    scaled = solve_residual(c * K, b * R, C0=c * c * C0, Kn=c * Kn, **arguments).delta.to(F64)
    torch.testing.assert_close(scaled, base * b / c, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"R": torch.zeros(5, 6)}, "R columns"),
        ({"C0": torch.zeros(8, 8)}, "C0 rows"),
        ({"C0": torch.zeros(9, 8)}, "C0 columns"),
        ({"Kn": torch.zeros(8, 4)}, "Kn rows"),
        ({"Kn": torch.zeros(9, 0)}, "Kn is empty"),
        ({"K": torch.full((9, 7), math.inf)}, "K holds NaN or Inf"),
        ({"lam": 0.0}, "lam must be"),
        ({"alpha": -0.1}, "alpha must be"),
        ({"beta": math.nan}, "beta must be"),
        ({"rank": 0}, "rank must be"),
    ],
)
def test_solve_residual_rejects_bad_inputs(change: dict, message: str) -> None:
    data = _residual_data()
    arguments = {key: data[key] for key in ("K", "R", "C0", "Kn")}
    arguments.update(alpha=1.0, beta=1.0, lam=0.1)
    arguments.update(change)
    with pytest.raises(SolveError, match=message):
        solve_residual(**arguments)
