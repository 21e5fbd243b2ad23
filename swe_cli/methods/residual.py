"""Method `residual` (MEMIT/AlphaEdit family, DESIGN.md): a multi-layer down_proj edit that moves
the residual stream of LRL harmful prompts towards the HRL one, with all-position harmless
preservation. The closed form itself is methods/linalg.py (solve_residual)."""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from swe_cli.architectures import adapter_for
from swe_cli.edit import TensorEdit
from swe_cli.errors import SolveError, WorkspaceError
from swe_cli.io.checkpoint import locate
from swe_cli.io.safetensors import rows_sha256
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
    module_weight,
    ratio,
    relative,
    unique,
)
from swe_cli.settings import SolveConfig, language_factors
from swe_cli.workspace import load_moment, load_selected


def residual_step(
    K: Any,
    Kn: Any,
    C0: Any,
    remaining: Any,
    layers_left: int,
    config: SolveConfig,
    harmful_keys: int | None = None,
) -> tuple[Any, Any]:
    """One MEMIT spreading step: this layer solves for remaining / layers_left (its share) and
    returns its solution and the target its predicted output dW K leaves to the later layers.
    harmful_keys: how many of K's columns are harmful prompts; the relative preservation
    weights count those (alpha, beta x n_harmful), so that mapping harmless pairs too
    (harmless_targets) does not also strengthen the preservation."""
    import torch

    from swe_cli.methods.linalg import solve_residual

    scale = 1.0 if harmful_keys is None else harmful_keys / K.shape[1]
    solution = solve_residual(
        K,
        remaining / layers_left,
        C0=C0,
        Kn=Kn,
        alpha=config.alpha * scale,
        beta=config.beta * scale,
        lam=config.lam,
        hard=config.hard,
        threshold=config.threshold,
        rank=config.rank,
        device=config.device,
    )
    remaining = remaining - solution.delta.to(torch.float64) @ K.to(torch.float64)
    return solution, remaining


def edit_keys(data: LayerData, config: SolveConfig) -> Any:
    """f x n keys the edit maps: the LRL harmful prompts' last positions and, with
    harmless_targets, those of the LRL harmless prompts that have an HRL translation (that block
    weighted harmless_targets x the harmful block as a whole: columns x sqrt(w n_h / n_pairs))."""
    import torch

    keys = data.a_low.T
    low, _ = data.harmless_pairs() if config.harmless_targets > 0 else ([], [])
    if not low:
        return keys
    weight = math.sqrt(config.harmless_targets * keys.shape[1] / len(low))
    return torch.cat([keys, data.a_safe[low].T * weight], dim=1)


def edit_target(data: LayerData, config: SolveConfig, harmful: Any) -> Any:
    """d x n target of edit_keys' columns: `harmful` (the method's target of the LRL harmful
    prompts) times the lang_strength factor of each prompt's language, then with
    harmless_targets each LRL harmless prompt's HRL translation's residual stream minus its own
    (weighted as in edit_keys)."""
    import torch

    factors = language_factors(config.lang_strength)
    if factors:
        scale = [factors.get(lang, 1.0) for lang in data.low_langs]
        harmful = harmful * torch.tensor(scale, dtype=harmful.dtype)[None, :]
    low, hrl = data.harmless_pairs() if config.harmless_targets > 0 else ([], [])
    if not low:
        return harmful
    weight = math.sqrt(config.harmless_targets * harmful.shape[1] / len(low))
    pairs = (data.r_safe[hrl] - data.r_safe[low]).T.to(harmful.dtype) * weight
    return torch.cat([harmful, pairs], dim=1)


def protected_keys(data: LayerData, config: SolveConfig) -> Any:
    """f x n_s keys whose outputs the edit must keep: the harmless prompts' last positions (with
    harmless_targets, those the edit maps are left out), and with keep_hrl the HRL harmful
    prompts' too (each block weighted as a whole like the edit keys, whatever its size:
    solve_residual scales the columns by n / n_columns)."""
    import torch

    safe = data.a_safe.T
    if config.harmless_targets > 0:
        mapped = set(data.harmless_pairs()[0])
        safe = safe[:, [row for row in range(safe.shape[1]) if row not in mapped]]
    if not config.keep_hrl or data.a_hrl is None:
        return safe
    hrl = data.a_hrl.T
    total = safe.shape[1] + hrl.shape[1]
    return torch.cat(
        [safe * math.sqrt(total / safe.shape[1]), hrl * math.sqrt(total / hrl.shape[1])], dim=1
    )


def layers_with_moments(context: Context) -> list[int]:
    workspace = context.workspace
    return [layer for layer in context.probed_layers if workspace.stats_path(layer).exists()]


def default_layers(context: Context) -> list[int]:
    """Every probed layer that has moments, except the first (prototype: layers 1-3 of 4)."""
    with_moments = layers_with_moments(context)
    if not with_moments:
        raise WorkspaceError(
            "no probed layer has activation moments", hint="re-run `swe probe` with --stats-layers"
        )
    return with_moments[1:] if len(with_moments) > 1 else with_moments


def default_bands(layers: Sequence[int]) -> list[tuple[int, ...]]:
    """The last 1, 2 and 3 layers, and all but the first (the `swe solve` default), deduplicated."""
    layers = sorted(layers)
    bands = [tuple(layers[-count:]) for count in (1, 2, 3) if count <= len(layers)]
    if len(layers) > 1:
        bands.append(tuple(layers[1:]))
    return unique(bands)


@dataclass(frozen=True)
class Keys:
    """One layer's inputs for tuning (float64, columns are samples)."""

    K: Any  # f x n tune-fit LRL harmful keys
    Kn: Any  # f x n_s tune-fit harmless keys
    C0: Any  # f x f all-position moment
    K_val: Any  # f x n_val validation LRL harmful keys
    Kn_val: Any  # f x n_s_val validation harmless keys


def _keys(
    context: Context,
    layer: int,
    pair: tuple[LayerData, LayerData],
    columns: Any,
    config: SolveConfig,
) -> Keys:
    """columns: the `swe solve --sparse` restriction to the safety-neuron columns, or None."""
    import torch

    fit, val = pair
    C0 = load_moment(context.workspace, layer).to(torch.float64)
    tensors = [edit_keys(fit, config), protected_keys(fit, config), C0, val.a_low.T, val.a_safe.T]
    if columns is not None:
        tensors = [t[columns] for t in tensors]
        tensors[2] = tensors[2][:, columns]
    return Keys(*(t.to(torch.float64) for t in tensors))


class ResidualMethod:
    name = "residual"
    grid: dict[str, list[Any]] = {  # noqa: RUF012 - read-only class data
        "alpha": [0.1, 1.0, 10.0],
        "beta": [0.1, 1.0, 10.0],
        "lam": [0.01, 0.1],
    }
    grid_keys = ("layers", "alpha", "beta", "lam", "rank")
    extra_columns = ("preservation",)  # tr(dW C0 dW^T) per target energy, in the table

    def moment_layers(self, config: SolveConfig) -> tuple[int, ...] | None:
        return config.layers  # C0 of every edited layer

    def default_layers(self, context: Context) -> tuple[int, ...]:
        return tuple(default_layers(context))

    def candidates(self, num_layers: int) -> tuple[str, ...]:
        """After what moved Qwen2.5-Coder-0.5B and the organism (README): down_proj of the middle
        layer, of the layer 5/8 deep and of both; at the middle layer also the variant chosen on
        Qwen (stronger preservation, target x1.5). All keep the HRL harmful prompts' outputs
        (keep_hrl): without it every one-layer edit of the organism lost most of its English
        refusals."""
        middle = num_layers // 2
        upper = min(num_layers - 1, round(num_layers * 5 / 8))
        bands = dict.fromkeys(
            [str(middle), str(upper), ",".join(map(str, sorted({middle, upper})))]
        )
        return (
            *[f"residual@{layers} rank=32 keep_hrl=true" for layers in bands],
            f"residual@{middle} rank=32 alpha=10 beta=10 keep_hrl=true strength=1.5",
        )

    def target(
        self, data: LayerData, config: SolveConfig, reference: LayerData | None = None
    ) -> Any:
        """The residual-stream change wanted after the last edited layer, d x n (float64), one
        column per LRL harmful prompt: here its HRL translation's residual stream minus its own,
        times config.strength (1: exactly onto the HRL stream). reference: the rows any
        statistic of the target comes from (the tune-fit rows when validation rows are scored);
        this target has none."""
        import torch

        return config.strength * (data.r_hrl - data.r_low).T.to(torch.float64)

    def solve(self, context: Context, config: SolveConfig) -> MethodResult:
        """The target h_HRL - h_LRL after the last edited layer is spread over the edited layers
        in order (MEMIT): each layer takes its share of what the earlier layers' predicted
        outputs left."""
        import torch

        adapter = adapter_for(context.model_type)
        layers = sorted(config.layers or self.default_layers(context))
        last = layer_data(
            context.workspace, layers[-1], context.hrl, context.langs, positions=config.positions
        )
        remaining = edit_target(last, config, self.target(last, config))  # d x n
        edits: list[TensorEdit] = []
        report: dict[int, dict[str, Any]] = {}
        for position, layer in enumerate(layers):
            data = (
                last
                if layer == layers[-1]
                else layer_data(
                    context.workspace, layer, context.hrl, context.langs, positions=config.positions
                )
            )
            C0 = load_moment(context.workspace, layer)
            K, Kn = edit_keys(data, config), protected_keys(data, config)
            columns = None
            if config.sparse:
                columns = load_selected(context.workspace, layer, context.hrl)
                if len(columns) == 0:
                    raise SolveError(
                        f"layer {layer} has no HRL safety neurons",
                        hint="lower the localize thresholds",
                    )
                K, Kn, C0 = K[columns], Kn[columns], C0[columns][:, columns]
            solution, remaining = residual_step(
                K, Kn, C0, remaining, len(layers) - position, config, data.a_low.shape[0]
            )
            name, _ = adapter.tensor(layer, "down", context.intermediate_size)
            entry = locate(context.model_dir, name)  # every row: hash the bytes, no float copy
            rows = list(range(entry.shape[0]))
            edits.append(
                TensorEdit(
                    name=name,
                    rows=torch.tensor(rows, dtype=torch.int64),
                    delta=solution.delta.contiguous(),
                    base_sha256=rows_sha256(entry, rows),
                    shape=entry.shape,
                    dtype=entry.dtype,
                    cols=None if columns is None else columns.to(torch.int64),
                )
            )
            report[layer] = {"neurons": K.shape[0], "down": solution.diagnostics}
        return edits, report

    # -- tuning -----------------------------------------------------------------------------------
    def system_size(self, context: Context) -> int:
        return context.intermediate_size

    def plan(self, data: TuneData, base: SolveConfig, grid: dict[str, list[Any]]) -> Plan:
        with_moments = layers_with_moments(data.context)
        if grid.get("layers"):
            bands = [band(entry, with_moments) for entry in grid["layers"]]
        else:
            bands = default_bands(with_moments)
        if base.sparse:
            bands = [b for b in bands if all(len(data.neurons(layer)) for layer in b)]
        if not bands:
            raise SolveError(
                "no layer band to tune: no probed layer has activation moments"
                + (" and HRL safety neurons" if base.sparse else ""),
                hint="re-run `swe probe` with --stats-layers",
            )
        ranks = grid.get("rank", [base.rank])
        return [
            (
                layer_band,
                [
                    base.updated(layers=layer_band, alpha=alpha, beta=beta, lam=lam, rank=rank)
                    for alpha, beta, lam, rank in itertools.product(
                        grid["alpha"], grid["beta"], grid["lam"], ranks
                    )
                ],
            )
            for layer_band in unique(bands)
        ]

    def keys(self, data: TuneData, layer: int, config: SolveConfig) -> Keys:
        def compute() -> Keys:
            columns = data.neurons(layer) if config.sparse else None
            pair = data.pair(layer, config.positions)
            return _keys(data.context, layer, pair, columns, config)

        key = (
            "residual-keys",
            layer,
            config.sparse,
            config.keep_hrl,
            config.harmless_targets,
            config.positions,
        )
        return data.memo(key, compute)

    def score(
        self,
        data: TuneData,
        layers: tuple[int, ...],
        configs: list[SolveConfig],
        leak_weight: float,
    ) -> list[Candidate]:
        """Candidates of one layer band. The layers' predicted changes dW K add up at the last
        edited layer: val_residual = ||sum dW K_val - T_val|| / ||T_val|| with T = h_HRL - h_LRL;
        val_leak = ||sum dW Kn_val|| scaled per key (x sqrt(n_val / n_safe_val)) / ||T_val||."""
        import torch

        keys = {layer: self.keys(data, layer, configs[0]) for layer in layers}
        fit, val = data.pair(layers[-1], configs[0].positions)
        per_key = math.sqrt(val.r_low.shape[0] / keys[layers[-1]].Kn_val.shape[1])
        candidates = []
        for config in configs:
            start = time.perf_counter()
            target = edit_target(fit, config, self.target(fit, config))  # d x n
            target_val = self.target(val, config, reference=fit)
            target_norm = torch.linalg.matrix_norm(target).item()
            val_norm = torch.linalg.matrix_norm(target_val).item()
            remaining, change, harmless_change, preservation = target, 0.0, 0.0, 0.0
            try:
                for position, layer in enumerate(layers):
                    item = keys[layer]
                    solution, remaining = residual_step(
                        item.K,
                        item.Kn,
                        item.C0,
                        remaining,
                        len(layers) - position,
                        config,
                        fit.a_low.shape[0],
                    )
                    dW = solution.delta.to(torch.float64)
                    change = change + dW @ item.K_val
                    harmless_change = harmless_change + dW @ item.Kn_val
                    preservation += torch.trace(dW @ item.C0 @ dW.T).item()
            except SolveError:
                candidates.append(failed(config, time.perf_counter() - start))
                continue
            residual = relative(change - target_val, target_val)
            leak = ratio(torch.linalg.matrix_norm(harmless_change).item() * per_key, val_norm)
            candidates.append(
                Candidate(
                    config=config,
                    val_residual=residual,
                    val_leak=leak,
                    score=residual + leak_weight * leak,
                    fit_residual=ratio(torch.linalg.matrix_norm(remaining).item(), target_norm),
                    seconds=time.perf_counter() - start,
                    preservation=ratio(preservation, target_norm**2 / target.shape[1]),
                )
            )
        return candidates

    def weight_changes(self, model: Any, data: TuneData, config: SolveConfig) -> list[WeightChange]:

        layers = tuple(config.layers or ())
        fit, _ = data.pair(layers[-1], config.positions)
        remaining = edit_target(fit, config, self.target(fit, config))
        changes: list[WeightChange] = []
        for position, layer in enumerate(layers):
            keys = self.keys(data, layer, config)
            solution, remaining = residual_step(
                keys.K,
                keys.Kn,
                keys.C0,
                remaining,
                len(layers) - position,
                config,
                fit.a_low.shape[0],
            )
            columns = data.neurons(layer) if config.sparse else None
            parameter, _ = module_weight(model, data.context, layer, "down")
            changes.append((parameter, None, columns, solution.delta))
        return changes
