"""Method `paper`: the sparse gate-row edit of arXiv 2602.22554 (Sec. 4.3-4.4, Algorithm 1) on the
HRL safety neurons of one layer; optionally the up rows, and the hard null-space variant. The
closed form itself is methods/linalg.py (solve_paper, solve_paper_hard)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from typing import Any

from swe_cli.architectures import adapter_for
from swe_cli.edit import TensorEdit
from swe_cli.errors import SolveError
from swe_cli.io.checkpoint import read_rows
from swe_cli.methods.base import (
    Candidate,
    Context,
    LayerData,
    MethodResult,
    Plan,
    TuneData,
    WeightChange,
    band,
    failed,
    layer_data,
    mean,
    module_weight,
    ratio,
    shape_of,
    unique,
)
from swe_cli.settings import PAPER_RANK, SolveConfig
from swe_cli.workspace import load_selected


def paper_solution(data: LayerData, W_S: Any, config: SolveConfig) -> Any:
    """The paper's closed form (soft gamma penalty, or the hard null-space variant) for one
    projection's W_S = G[S,:]^T; shared by solve and tune."""
    from swe_cli.methods.linalg import solve_paper, solve_paper_hard

    rank = config.rank or PAPER_RANK
    if config.hard:
        return solve_paper_hard(
            data.x_low,
            data.x_hrl,
            data.x_safe,
            W_S,
            rank=rank,
            lam=config.lam,
            threshold=config.threshold,
            device=config.device,
        )
    return solve_paper(
        data.x_low,
        data.x_hrl,
        data.x_safe,
        W_S,
        rank=rank,
        gamma=config.gamma,
        lam=config.lam,
        device=config.device,
    )


def default_layer(context: Context) -> int:
    """The probed layer with the most HRL safety neurons (the paper edits one layer)."""
    context.workspace.require_stage("localize")
    sizes = context.workspace.manifest().neuron_counts(context.hrl)
    return max(context.probed_layers, key=lambda layer: (sizes[layer], -layer))


def gate_weights(
    context: Context, layer: int, neurons: Any, projections: Sequence[str]
) -> list[Any]:
    """W_S = G[S,:]^T (d x m, float64) per edited projection (gate, up) of the neurons S."""
    import torch

    adapter = adapter_for(context.model_type)
    weights = []
    for projection in projections:
        name, offset = adapter.tensor(layer, projection, context.intermediate_size)  # type: ignore[arg-type]
        rows, _, _ = read_rows(context.model_dir, name, (neurons + offset).tolist())
        weights.append(rows.T.to(torch.float64))
    return weights


class PaperMethod:
    name = "paper"
    grid: dict[str, list[Any]] = {  # noqa: RUF012 - read-only class data
        "gamma": [0.1, 1.0, 10.0],
        "lam": [0.01, 0.1, 1.0],
        "rank": [8, 32, 128],
    }
    grid_keys = ("layers", "gamma", "lam", "rank")
    extra_columns: tuple[str, ...] = ()

    def moment_layers(self, config: SolveConfig) -> tuple[int, ...] | None:
        return None  # the paper's solve uses last-position activations only

    def default_layers(self, context: Context) -> tuple[int, ...]:
        return (default_layer(context),)

    def candidates(self, num_layers: int) -> tuple[str, ...]:
        return ("paper",)  # at its own layer

    def solve(self, context: Context, config: SolveConfig) -> MethodResult:
        """Paper Algorithm 1 on the gate (and optionally up) rows of the HRL safety neurons."""
        import torch

        adapter = adapter_for(context.model_type)
        layers = list(config.layers or self.default_layers(context))
        edits: list[TensorEdit] = []
        report: dict[int, dict[str, Any]] = {}
        for layer in layers:
            neurons = load_selected(context.workspace, layer, context.hrl)
            if len(neurons) == 0:
                raise SolveError(
                    f"layer {layer} has no HRL safety neurons at the current thresholds",
                    hint="lower --tau-mag/--tau-stat in `swe localize` or choose another layer",
                )
            data = layer_data(context.workspace, layer, context.hrl, context.langs)
            report[layer] = {"neurons": len(neurons)}
            for projection in config.projections:
                name, offset = adapter.tensor(layer, projection, context.intermediate_size)  # type: ignore[arg-type]
                rows = (neurons + offset).tolist()
                weights, dtype, sha = read_rows(context.model_dir, name, rows)
                W_S = weights.T  # d x m, paper notation
                solution = paper_solution(data, W_S, config)
                edits.append(
                    TensorEdit(
                        name=name,
                        rows=torch.tensor(rows, dtype=torch.int64),
                        delta=solution.delta.T.contiguous(),
                        base_sha256=sha,
                        shape=shape_of(context, name),
                        dtype=dtype,
                    )
                )
                report[layer][projection] = solution.diagnostics
        return edits, report

    # -- tuning -----------------------------------------------------------------------------------
    def system_size(self, context: Context) -> int:
        return context.hidden_size

    def plan(self, data: TuneData, base: SolveConfig, grid: dict[str, list[Any]]) -> Plan:
        requested = grid.get("layers")
        probed = data.context.probed_layers
        layers = _single_layers(requested, probed) if requested else probed
        gammas = [base.gamma] if base.hard else grid["gamma"]  # the hard projector has no gamma
        plan: Plan = []
        for layer in layers:
            neurons = len(data.neurons(layer))
            if neurons == 0:
                if requested:
                    raise SolveError(
                        f"layer {layer} has no HRL safety neurons at the current thresholds",
                        hint="lower the localize thresholds or drop it from the grid",
                    )
                continue
            cap = min(data.context.hidden_size, neurons)
            ranks = unique(min(rank or PAPER_RANK, cap) for rank in grid["rank"])
            configs = [
                base.updated(layers=(layer,), gamma=gamma, lam=lam, rank=rank)
                for gamma, lam, rank in itertools.product(gammas, grid["lam"], ranks)
            ]
            plan.append(((layer,), configs))
        if not plan:
            raise SolveError(
                "no probed layer has HRL safety neurons", hint="lower the localize thresholds"
            )
        return plan

    def weights(self, data: TuneData, layer: int, projections: tuple[str, ...]) -> list[Any]:
        return data.memo(
            ("paper-weights", layer, projections),
            lambda: gate_weights(data.context, layer, data.neurons(layer), projections),
        )

    def score(
        self,
        data: TuneData,
        layers: tuple[int, ...],
        configs: list[SolveConfig],
        leak_weight: float,
    ) -> list[Candidate]:
        """Candidates of one layer. val_residual = ||X_low dW - D|| / ||D|| and val_leak =
        ||X_safe dW|| / ||X_safe W_S||, both on validation rows (means over the projections)."""
        import torch

        from swe_cli.methods.linalg import relative_residual

        (layer,) = layers
        fit, val = data.pair(layer)
        x_low, x_hrl, x_safe = (t.to(torch.float64) for t in (val.x_low, val.x_hrl, val.x_safe))
        weights = self.weights(data, layer, configs[0].projections)
        targets = [(x_hrl - x_low) @ W_S for W_S in weights]  # Sec. 4.3: D = X_en W_S - X_low W_S
        safe_norms = [torch.linalg.matrix_norm(x_safe @ W_S).item() for W_S in weights]
        candidates = []
        for config in configs:
            start = time.perf_counter()
            try:
                solutions = [paper_solution(fit, W_S, config) for W_S in weights]
            except SolveError:
                candidates.append(failed(config, time.perf_counter() - start))
                continue
            deltas = [solution.delta.to(torch.float64) for solution in solutions]
            residual = mean(
                relative_residual(x_low, dW, D) for dW, D in zip(deltas, targets, strict=True)
            )
            leak = mean(
                ratio(torch.linalg.matrix_norm(x_safe @ dW).item(), norm)
                for dW, norm in zip(deltas, safe_norms, strict=True)
            )
            candidates.append(
                Candidate(
                    config=config,
                    val_residual=residual,
                    val_leak=leak,
                    score=residual + leak_weight * leak,
                    fit_residual=mean(s.diagnostics["relative_residual"] for s in solutions),
                    seconds=time.perf_counter() - start,
                )
            )
        return candidates

    def weight_changes(self, model: Any, data: TuneData, config: SolveConfig) -> list[WeightChange]:
        (layer,) = tuple(config.layers or ())
        neurons = data.neurons(layer)
        fit, _ = data.pair(layer)
        changes: list[WeightChange] = []
        weights = self.weights(data, layer, config.projections)
        for projection, W_S in zip(config.projections, weights, strict=True):
            delta = paper_solution(fit, W_S, config).delta  # d x m: G[S,:] += delta^T
            parameter, offset = module_weight(model, data.context, layer, projection)
            changes.append((parameter, neurons + offset, None, delta.T))
        return changes


def _single_layers(entries: Sequence[Any], probed: Sequence[int]) -> list[int]:
    layers = []
    for entry in entries:
        layer_band = band(entry, probed)
        if len(layer_band) != 1:
            raise SolveError(
                f"method paper tunes one layer at a time, got the band {list(layer_band)}",
                hint="list single layers in the grid",
            )
        layers.append(layer_band[0])
    return unique(layers)
