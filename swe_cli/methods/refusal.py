"""Method `refusal`: the `residual` down_proj edit with another target. Instead of moving the
whole residual stream of an LRL harmful prompt onto its HRL translation's (which also carries
language identity), it moves only the stream's projection on the HRL refusal direction
r = mean(h_HRL harmful) - mean(h_HRL harmless) (Arditi et al. 2024; AlphaSteer, arXiv
2506.07022), up to the mean projection of the HRL harmful prompts. Prompts already at or past
that level get no push. Preservation, spreading over layers and the closed form are residual's."""

from __future__ import annotations

from typing import Any

from swe_cli.errors import SolveError
from swe_cli.methods.base import LayerData
from swe_cli.methods.residual import ResidualMethod
from swe_cli.settings import SolveConfig


def refusal_direction(data: LayerData) -> Any:
    """Unit vector (d, float64) from the HRL harmless mean to the HRL harmful mean, and the HRL
    harmful prompts' mean projection on it."""
    import torch

    if not data.n_safe_hrl:
        raise SolveError(
            "no HRL harmless prompt was probed: the refusal direction needs them",
            hint="give harmless prompts in the HRL too",
        )
    harmful = data.r_hrl.to(torch.float64)
    harmless = data.r_safe[: data.n_safe_hrl].to(torch.float64)
    direction = harmful.mean(0) - harmless.mean(0)
    norm = torch.linalg.vector_norm(direction)
    if not norm > 0:
        raise SolveError("the HRL harmful and harmless prompts have the same mean activation")
    direction = direction / norm
    return direction, (harmful @ direction).mean()


def refusal_target(data: LayerData, strength: float, reference: LayerData | None = None) -> Any:
    """d x n: for each LRL harmful prompt, strength x (how far its projection on the refusal
    direction falls short of the HRL harmful mean) along that direction; never negative.
    reference: the rows the direction and level are taken from (default: data)."""
    import torch

    direction, level = refusal_direction(reference if reference is not None else data)
    shortfall = (level - data.r_low.to(torch.float64) @ direction).clamp(min=0)
    return strength * direction[:, None] * shortfall[None, :]


class RefusalMethod(ResidualMethod):
    name = "refusal"
    grid: dict[str, list[Any]] = {  # noqa: RUF012 - read-only class data
        "alpha": [1.0, 10.0],
        "beta": [1.0, 10.0],
        "lam": [0.1],
        "strength": [1.0, 2.0],
    }
    grid_keys = ("layers", "alpha", "beta", "lam", "rank", "strength")

    def candidates(self, num_layers: int) -> tuple[str, ...]:
        return (f"refusal@{num_layers // 2} strength=4 keep_hrl=true",)  # the middle layer

    def target(
        self, data: LayerData, config: SolveConfig, reference: LayerData | None = None
    ) -> Any:
        return refusal_target(data, config.strength, reference)
