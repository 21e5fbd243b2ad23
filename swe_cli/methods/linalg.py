"""The closed-form solvers: tensors in, one weight update and its diagnostics out.

Two families live here. `solve_paper` and `solve_paper_hard` compute the paper's sparse edit of
gate rows (arXiv 2602.22554, Sec. 4.3-4.4, Theorem 4.1, Algorithm 1) in the paper's notation, where
rows are samples. `solve_residual` computes the MEMIT/AlphaEdit-family edit of down_proj
(DESIGN.md, method `residual`), where columns are samples as in MEMIT. All arithmetic is float64;
the returned delta is float32 on the CPU. Coefficients arrive *relative* and are made absolute
here, so a recipe value means the same whatever the width, activation scale or sample counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from swe_cli.errors import SolveError

Device = str | torch.device | None


@dataclass(frozen=True)
class Solution:
    """A solver result: the update (float32, CPU) and plain-number diagnostics for edit.yaml."""

    delta: torch.Tensor
    diagnostics: dict[str, float]


# ---------------------------------------------------------------------------------------------
# Public helpers


def relative_residual(X: torch.Tensor, dW: torch.Tensor, D: torch.Tensor) -> float:
    """||X dW - D||_F / ||D||_F (rows are samples): 1.0 means the edit did nothing, 0.0 perfect.

    Usable on held-out anchors. Returns 0.0 when D and the residual are both zero, inf when only
    D is zero.
    """
    common = torch.promote_types(torch.promote_types(X.dtype, dW.dtype), D.dtype)
    residual = X.to(common) @ dW.to(device=X.device, dtype=common) - D.to(X.device, common)
    return _ratio(torch.linalg.matrix_norm(residual).item(), torch.linalg.matrix_norm(D).item())


def scale_paper_coefficients(
    X_low: torch.Tensor, X_safe: torch.Tensor, gamma: float, lam: float
) -> tuple[float, float]:
    """Turn the paper's relative (gamma, lam) into the absolute weights of its objective.

    gamma_abs = gamma * N_h / N_s: the harmless term ||X_safe dW||^2 sums over N_s rows and the
    edit term over N_h rows, so gamma = 1 weighs the harmless set like the harmful set whatever
    the sample counts. lambda_abs = lam * trace(X_low^T X_low) / d: the mean energy of X_low per
    input dimension, so lam is dimensionless and invariant to rescaling the activations.
    """
    n_harmful, n_safe = X_low.shape[0], X_safe.shape[0]
    gamma_abs = gamma * n_harmful / n_safe
    lambda_abs = lam * _energy_per_dimension(X_low)
    return float(gamma_abs), float(lambda_abs)


def nullspace_projector(C0: torch.Tensor, *, threshold: float = 1e-2) -> tuple[torch.Tensor, int]:
    """AlphaEdit's projector onto the (numerical) null space of a PSD second moment C0 (n x n).

    Eigenvectors whose eigenvalue is below threshold * (largest eigenvalue) span the null space
    U0; P = U0 U0^T (float64, C0's device). A zero C0 preserves nothing, so P = I. Returns P and
    the null-space dimension; dimension 0 means P = 0 and any projected edit vanishes.
    """
    _check_matrix("C0", C0)
    if C0.shape[0] != C0.shape[1]:
        raise SolveError(f"C0 must be square, got shape {tuple(C0.shape)}")
    if not 0.0 < threshold <= 1.0:
        raise SolveError(f"threshold must be in (0, 1], got {threshold}")
    C = C0.to(torch.float64)
    eigenvalues, eigenvectors = torch.linalg.eigh((C + C.T) / 2)
    top = eigenvalues[-1].item()
    null = eigenvalues < threshold * top if top > 0 else torch.ones_like(eigenvalues, dtype=bool)
    U0 = eigenvectors[:, null]
    return U0 @ U0.T, int(null.sum().item())


# ---------------------------------------------------------------------------------------------
# The paper's gate-row edit (rows are samples)


def solve_paper(
    X_low: torch.Tensor,
    X_en: torch.Tensor,
    X_safe: torch.Tensor,
    W_S: torch.Tensor,
    *,
    rank: int,
    gamma: float,
    lam: float,
    device: Device = None,
) -> Solution:
    """Paper Algorithm 1 / Theorem 4.1: the rank-r update dW (d x m) of W_S = G[S,:]^T.

    Minimises ||X_low dW - D||^2 + gamma_abs ||X_safe dW||^2 + lambda_abs ||dW||^2 subject to
    rank(dW) <= rank, with D = X_en W_S - X_low W_S. X_low, X_en: N_h x d, row-paired; X_safe:
    N_s x d. gamma and lam are relative (see `scale_paper_coefficients`). rank >= min(d, m)
    returns the exact ridge solution. The caller applies G[S,:] += delta^T.
    """
    _check_paper_inputs(X_low, X_en, X_safe, W_S, rank=rank, lam=lam)
    if not (math.isfinite(gamma) and gamma >= 0):
        raise SolveError(f"gamma must be a finite number >= 0, got {gamma}")
    gamma_abs, lambda_abs = scale_paper_coefficients(X_low, X_safe, gamma, lam)
    X_low, X_en, X_safe, W_S = _float64(device, X_low, X_en, X_safe, W_S)
    D = X_en @ W_S - X_low @ W_S  # Sec. 4.3: D = Y_target - X_low W_S, Y_target = X_en W_S
    eye = torch.eye(X_low.shape[1], dtype=torch.float64, device=X_low.device)
    Q = X_low.T @ X_low + gamma_abs * X_safe.T @ X_safe + lambda_abs * eye  # Thm 4.1
    dW = _weighted_low_rank(Q, X_low.T @ D, rank)
    diagnostics = _paper_diagnostics(X_low, X_safe, W_S, D, dW, Q, rank)
    diagnostics.update(gamma_abs=gamma_abs, lambda_abs=lambda_abs)
    return Solution(delta=_export(dW), diagnostics=diagnostics)


def solve_paper_hard(
    X_low: torch.Tensor,
    X_en: torch.Tensor,
    X_safe: torch.Tensor,
    W_S: torch.Tensor,
    *,
    rank: int,
    lam: float,
    threshold: float = 1e-2,
    device: Device = None,
) -> Solution:
    """The paper's edit with AlphaEdit's hard null-space constraint in place of the gamma term.

    P projects onto the null space of X_safe^T X_safe / N_s (see `nullspace_projector`); dW = P dW'
    where dW' minimises ||X_low P dW' - D||^2 + lambda_abs ||dW'||^2 subject to rank <= rank,
    solved by the same whitened SVD. The optimum lies in range(P) (any component outside it only
    adds to the lambda term), so X_safe dW ~ 0 up to the threshold.
    """
    _check_paper_inputs(X_low, X_en, X_safe, W_S, rank=rank, lam=lam)
    lambda_abs = lam * _energy_per_dimension(X_low)
    X_low, X_en, X_safe, W_S = _float64(device, X_low, X_en, X_safe, W_S)
    P, nullspace_dim = nullspace_projector(X_safe.T @ X_safe / X_safe.shape[0], threshold=threshold)
    _check_nullspace(nullspace_dim, threshold)
    D = X_en @ W_S - X_low @ W_S  # Sec. 4.3: D = Y_target - X_low W_S
    X_P = X_low @ P
    eye = torch.eye(X_low.shape[1], dtype=torch.float64, device=X_low.device)
    Q = X_P.T @ X_P + lambda_abs * eye  # Thm 4.1 with X_low -> X_low P and gamma = 0
    dW = P @ _weighted_low_rank(Q, X_P.T @ D, rank)
    diagnostics = _paper_diagnostics(X_low, X_safe, W_S, D, dW, Q, rank)
    diagnostics.update(lambda_abs=lambda_abs, nullspace_dim=nullspace_dim, threshold=threshold)
    return Solution(delta=_export(dW), diagnostics=diagnostics)


# ---------------------------------------------------------------------------------------------
# The residual (MEMIT/AlphaEdit-family) down_proj edit (columns are samples)


def solve_residual(
    K: torch.Tensor,
    R: torch.Tensor,
    *,
    C0: torch.Tensor,
    Kn: torch.Tensor,
    alpha: float,
    beta: float,
    lam: float,
    hard: bool = False,
    threshold: float = 1e-2,
    rank: int | None = None,
    device: Device = None,
) -> Solution:
    """Edit dW (d x f) of down_proj so that dW K ~ R while harmless activations are preserved.

    K (f x n): keys of the edit prompts; R (d x n): this layer's share of the target; C0 (f x f):
    MEAN second moment of the keys over all positions of harmless/general text; Kn (f x n_s):
    harmless keys at the last prompt position. Relative -> absolute: alpha_abs = alpha * n (C0 is
    a mean, so alpha = 1 weighs it like the n edit keys together), beta_abs = beta * n / n_s
    (beta = 1 weighs the harmless keys like the edit keys), lambda_abs = lam * trace(K K^T) / f.

    Soft: min ||dW K - R||^2 + alpha_abs tr(dW C0 dW^T) + beta_abs ||dW Kn||^2 + lambda_abs ||dW||^2,
    i.e. dW = R K^T (K K^T + alpha_abs C0 + beta_abs Kn Kn^T + lambda_abs I)^-1.
    Hard (AlphaEdit): P = null-space projector of the preservation moment alpha C0 + beta Kn Kn^T / n_s
    (the soft penalty divided by n; only the ratio alpha : beta matters), and
    dW = R K^T P (K K^T P + lambda_abs I)^-1, computed in its symmetric form
    R K^T P (P K K^T P + lambda_abs I)^-1; no soft penalty is added in hard mode.
    With rank given, dW is the exact optimum of the same objective under rank(dW) <= rank
    (whitened SVD, as in the paper), not a plain SVD truncation of the unconstrained solution.
    """
    _check_residual_inputs(K, R, C0, Kn, alpha=alpha, beta=beta, lam=lam, rank=rank)
    n_keys, n_safe = K.shape[1], Kn.shape[1]
    alpha_abs, beta_abs = alpha * n_keys, beta * n_keys / n_safe
    lambda_abs = lam * _energy_per_dimension(K.T)
    K, R, C0, Kn = _float64(device, K, R, C0, Kn)
    C0 = (C0 + C0.T) / 2
    eye = torch.eye(K.shape[0], dtype=torch.float64, device=K.device)
    diagnostics: dict[str, float] = {}
    if hard:
        preservation = alpha * C0 + beta * (Kn @ Kn.T) / n_safe
        P, nullspace_dim = nullspace_projector(preservation, threshold=threshold)
        _check_nullspace(nullspace_dim, threshold)
        K_P = P @ K
        A = K_P @ K_P.T + lambda_abs * eye  # AlphaEdit Eq. 12, symmetric form
        dW = (P @ _weighted_low_rank(A, K_P @ R.T, rank)).T
        diagnostics.update(nullspace_dim=nullspace_dim, threshold=threshold)
    else:
        A = K @ K.T + alpha_abs * C0 + beta_abs * (Kn @ Kn.T) + lambda_abs * eye  # MEMIT normal eq.
        dW = _weighted_low_rank(A, K @ R.T, rank).T
    target_energy = torch.linalg.matrix_norm(R).item() ** 2
    diagnostics.update(
        relative_residual=relative_residual(K.T, dW.T, R.T),
        preservation_energy=_ratio(torch.trace(dW @ C0 @ dW.T).item(), target_energy / n_keys),
        harmless_key_leak=_ratio(
            torch.linalg.matrix_norm(dW @ Kn).item() * math.sqrt(n_keys / n_safe),
            math.sqrt(target_energy),
        ),
        condition_number=_condition_number(A),
        alpha_abs=float(alpha_abs),
        beta_abs=float(beta_abs),
        lambda_abs=float(lambda_abs),
        rank=_numerical_rank(dW),
        rank_requested=0 if rank is None else rank,  # 0: no cap
        n_keys=n_keys,
        n_safe=n_safe,
        d=R.shape[0],
        f=K.shape[0],
    )
    return Solution(delta=_export(dW), diagnostics=diagnostics)


# ---------------------------------------------------------------------------------------------
# Shared math


def _weighted_low_rank(Q: torch.Tensor, B: torch.Tensor, rank: int | None) -> torch.Tensor:
    """argmin over rank(X) <= rank of tr(X^T Q X) - 2 tr(X^T B), Q symmetric positive definite.

    The objective equals ||R X - R M||_F^2 + const with Q = R^T R and M = Q^-1 B, so by
    Eckart-Young the optimum is X = R^-1 [R M]_rank (paper Algorithm 1). rank=None or
    rank >= min(B.shape) gives M itself.
    """
    L, info = torch.linalg.cholesky_ex(Q)  # Alg. 1: Q = R^T R with R = L^T upper triangular
    if info.item() != 0:
        raise SolveError(
            "the system matrix is not numerically positive definite",
            hint="increase lam (the ridge term) or check the activations for degenerate rows",
        )
    M = torch.cholesky_solve(B, L)  # Alg. 1: M = Q^-1 X_low^T D
    if rank is None or rank >= min(B.shape):
        return M
    U, S, Vh = torch.linalg.svd(L.T @ M, full_matrices=False)  # Alg. 1: M~ = R M = U S V^T
    truncated = U[:, :rank] * S[:rank] @ Vh[:rank]
    return torch.linalg.solve_triangular(L.T, truncated, upper=True)  # Alg. 1: dW = R^-1 U S_r V^T


def _paper_diagnostics(
    X_low: torch.Tensor,
    X_safe: torch.Tensor,
    W_S: torch.Tensor,
    D: torch.Tensor,
    dW: torch.Tensor,
    Q: torch.Tensor,
    rank: int,
) -> dict[str, float]:
    leak = torch.linalg.matrix_norm(X_safe @ dW).item()
    return {
        "rank": _numerical_rank(dW),
        "rank_requested": rank,
        "relative_residual": relative_residual(X_low, dW, D),
        "utility_leak": _ratio(leak, torch.linalg.matrix_norm(X_safe @ W_S).item()),
        "condition_number": _condition_number(Q),
        "n_harmful": X_low.shape[0],
        "n_safe": X_safe.shape[0],
        "d": W_S.shape[0],
        "m": W_S.shape[1],
    }


def _energy_per_dimension(X: torch.Tensor) -> float:
    """trace(X^T X) / d for X with samples as rows: the ridge scale that makes lam dimensionless."""
    X = X.to(torch.float64)
    return torch.linalg.matrix_norm(X).item() ** 2 / X.shape[1]


def _condition_number(Q: torch.Tensor) -> float:
    eigenvalues = torch.linalg.eigvalsh(Q)
    return _ratio(eigenvalues[-1].item(), eigenvalues[0].item())


def _numerical_rank(X: torch.Tensor) -> int:
    return int(torch.linalg.matrix_rank(X).item())


def _ratio(numerator: float, denominator: float) -> float:
    if denominator > 0:
        return float(numerator / denominator)
    return 0.0 if numerator == 0 else math.inf


def _float64(device: Device, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    target = device if device is not None else tensors[0].device
    return tuple(t.to(device=target, dtype=torch.float64) for t in tensors)


def _export(dW: torch.Tensor) -> torch.Tensor:
    return dW.to(device="cpu", dtype=torch.float32).contiguous()


# ---------------------------------------------------------------------------------------------
# Input validation: every failure names the offending input


def _check_matrix(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor) or t.ndim != 2:
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise SolveError(f"{name} must be a 2-D tensor, got {shape}")
    if t.numel() == 0:
        raise SolveError(
            f"{name} is empty (shape {tuple(t.shape)})",
            hint="check that the probe recorded prompts for every language and split used",
        )
    if not torch.isfinite(t).all():
        raise SolveError(
            f"{name} holds NaN or Inf values",
            hint="re-probe in float32/bfloat16 rather than float16, or drop the broken prompts",
        )


def _check_same(what: str, got: int, expected: int, detail: str) -> None:
    if got != expected:
        raise SolveError(f"shape mismatch: {what} is {got} but must be {expected} ({detail})")


def _check_coefficients(*, lam: float, rank: int | None) -> None:
    if not (math.isfinite(lam) and lam > 0):
        raise SolveError(
            f"lam must be a finite number > 0, got {lam}",
            hint="the ridge term is required (the paper's ablation without it destroys utility)",
        )
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise SolveError(f"rank must be an integer >= 1, got {rank!r}")


def _check_nullspace(nullspace_dim: int, threshold: float) -> None:
    if nullspace_dim == 0:
        raise SolveError(
            f"the preservation null space is empty at threshold {threshold}: "
            "a hard projection would zero the edit",
            hint="raise the threshold, use more edited neurons, or use the soft (gamma/alpha) form",
        )


def _check_paper_inputs(
    X_low: torch.Tensor,
    X_en: torch.Tensor,
    X_safe: torch.Tensor,
    W_S: torch.Tensor,
    *,
    rank: int,
    lam: float,
) -> None:
    for name, tensor in (("X_low", X_low), ("X_en", X_en), ("X_safe", X_safe), ("W_S", W_S)):
        _check_matrix(name, tensor)
    n_harmful, d = X_low.shape
    _check_same("X_en rows", X_en.shape[0], n_harmful, "X_low rows; X_en is row-paired with X_low")
    _check_same("X_en columns", X_en.shape[1], d, "the hidden size d of X_low")
    _check_same("X_safe columns", X_safe.shape[1], d, "the hidden size d of X_low")
    _check_same("W_S rows", W_S.shape[0], d, "the hidden size d of X_low; W_S = G[S,:]^T")
    _check_coefficients(lam=lam, rank=rank)
    if rank is None:
        raise SolveError("rank must be an integer >= 1, got None")


def _check_residual_inputs(
    K: torch.Tensor,
    R: torch.Tensor,
    C0: torch.Tensor,
    Kn: torch.Tensor,
    *,
    alpha: float,
    beta: float,
    lam: float,
    rank: int | None,
) -> None:
    for name, tensor in (("K", K), ("R", R), ("C0", C0), ("Kn", Kn)):
        _check_matrix(name, tensor)
    f, n_keys = K.shape
    _check_same("R columns", R.shape[1], n_keys, "the number of keys n, K columns")
    _check_same("C0 rows", C0.shape[0], f, "the key size f, K rows")
    _check_same("C0 columns", C0.shape[1], f, "the key size f, K rows")
    _check_same("Kn rows", Kn.shape[0], f, "the key size f, K rows")
    for name, value in (("alpha", alpha), ("beta", beta)):
        if not (math.isfinite(value) and value >= 0):
            raise SolveError(f"{name} must be a finite number >= 0, got {value}")
    _check_coefficients(lam=lam, rank=rank)
