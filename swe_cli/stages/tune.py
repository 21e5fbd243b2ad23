"""Automatic choice of the edited layer(s) and the solver coefficients (`--tune`; the paper names it
as future work), from the probe data alone, in seconds. The probe's fit prompts are split again by
id into a tune-fit and a validation part (salt "swe-tune"; the held-out eval split is never probed,
so it cannot be read). Every candidate of a small grid is solved on the tune-fit part with the same
solvers `swe solve` uses and scored on the validation part: how much of the LRL -> HRL gap it leaves
(validation residual) plus how much it moves harmless keys (utility leak). The candidate table and
the choice are written to WS/edit/tune.yaml and recorded as the stage "tune"."""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from swe_cli.architectures import adapter_for
from swe_cli.checkpoint import read_header, read_rows
from swe_cli.errors import SolveError
from swe_cli.prompts import HELDOUT, sort_ids, split_of
from swe_cli.settings import PAPER_RANK, SolveConfig
from swe_cli.stages.localize import load_selected
from swe_cli.stages.solve import (
    Context,
    LayerData,
    layer_data,
    load_moment,
    paper_solution,
    residual_step,
)
from swe_cli.workspace import Workspace, atomic_write_text

TUNE_SALT = "swe-tune"
TUNE_FILE = "tune.yaml"
# Coefficients are relative (solve.py scales them), so one grid fits every model size.
PAPER_GRID: dict[str, list[Any]] = {
    "gamma": [0.1, 1.0, 10.0],
    "lam": [0.01, 0.1, 1.0],
    "rank": [8, 32, 128],
}
RESIDUAL_GRID: dict[str, list[Any]] = {
    "alpha": [0.1, 1.0, 10.0],
    "beta": [0.1, 1.0, 10.0],
    "lam": [0.01, 0.1],
}
SMALL_SYSTEM = 1024  # largest system order solved single-threaded
GRID_KEYS = {
    "paper": ("layers", "gamma", "lam", "rank"),
    "residual": ("layers", "alpha", "beta", "lam", "rank"),
}


@dataclass(frozen=True)
class Candidate:
    """One solved and scored grid point. Residuals and leaks are relative (0 is perfect)."""

    config: SolveConfig
    val_residual: float
    val_leak: float
    score: float  # val_residual + leak_weight * val_leak; inf when the solver failed
    fit_residual: float
    seconds: float
    preservation: float = math.nan  # residual: tr(dW C0 dW^T) / (target energy per key)


@dataclass(frozen=True)
class TuneResult:
    best: SolveConfig
    candidates: tuple[Candidate, ...]
    fit_ids: tuple[str, ...]  # tune-fit part of the probed (fit-split) ids, harmful and harmless
    validation_ids: tuple[str, ...]
    touched_ids: frozenset[str]  # every harmful prompt id whose activations were read
    touched_harmless_ids: frozenset[str] = frozenset()  # the same for the harmless set


@dataclass(frozen=True)
class _Split:
    fit: frozenset[str]
    validation: frozenset[str]
    harmful: frozenset[str]
    harmless: frozenset[str]


# ---------------------------------------------------------------------------------------------
# Entry point


def tune(
    workspace: Workspace,
    base: SolveConfig,
    *,
    validation_fraction: float = 0.25,
    grid: dict[str, list[Any]] | None = None,
    leak_weight: float = 1.0,
    max_candidates: int = 200,
) -> TuneResult:
    """Solve every grid candidate of base.method on the tune-fit ids, score it on the validation
    ids, and return the lowest score (first in grid order on ties). base supplies every setting
    the grid does not vary (hard, sparse, projections, threshold, device). grid overrides the
    default values per key (see GRID_KEYS); "layers" lists layers (paper) or layer bands
    (residual)."""
    if base.method not in GRID_KEYS:
        raise SolveError(
            f"--tune does not know method '{base.method}'", hint="choose paper or residual"
        )
    if not 0.0 < validation_fraction < 1.0:
        raise SolveError(
            f"validation fraction must be strictly between 0 and 1, got {validation_fraction}"
        )
    if not (math.isfinite(leak_weight) and leak_weight >= 0):
        raise SolveError(f"leak weight must be a finite number >= 0, got {leak_weight}")
    setup = _setup(workspace)
    plan = _plan(setup, base, _grid(base.method, grid))
    count = sum(len(configs) for _, configs in plan)
    if count > max_candidates:
        raise SolveError(
            f"the tuning grid has {count} candidates, more than the limit of {max_candidates}",
            hint="narrow the grid or raise max_candidates",
        )
    layers = sorted({layer for key, _ in plan for layer in key})
    split = _split(setup.context, layers, validation_fraction)
    score = _score_paper if base.method == "paper" else _score_residual
    loader = _Loader(setup, split)
    system_size = setup.hidden_size if base.method == "paper" else setup.context.intermediate_size
    with _threads_for(system_size):
        candidates = [
            candidate
            for key, configs in plan
            for candidate in score(loader, key, configs, leak_weight)
        ]
    finite = [candidate for candidate in candidates if math.isfinite(candidate.score)]
    if not finite:
        raise SolveError(
            "every tuning candidate failed to solve",
            hint="raise lam in the grid or check the workspace activations",
        )
    result = TuneResult(
        best=min(finite, key=lambda candidate: candidate.score).config,
        candidates=tuple(candidates),
        fit_ids=tuple(sort_ids(split.fit)),
        validation_ids=tuple(sort_ids(split.validation)),
        touched_ids=split.harmful,
        touched_harmless_ids=split.harmless,
    )
    _record(workspace, result, validation_fraction=validation_fraction, leak_weight=leak_weight)
    return result


@contextlib.contextmanager
def _threads_for(system_size: int) -> Iterator[None]:
    """One thread for small systems: each solve is a few milliseconds of work, and on a shared
    machine OpenMP's spin-waiting between many tiny parallel ops costs 10-30x that."""
    import torch

    previous = torch.get_num_threads()
    if system_size <= SMALL_SYSTEM:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass
class _Setup:
    """What the tuner reads of the workspace once: the solve-stage context, the hidden size and
    (memoised) the HRL safety neurons per layer."""

    context: Context
    hidden_size: int
    selected: dict[int, Any] = field(default_factory=dict)

    def neurons(self, layer: int) -> Any:
        if layer not in self.selected:
            context = self.context
            self.selected[layer] = load_selected(context.workspace, layer, context.hrl)
        return self.selected[layer]


def _setup(workspace: Workspace) -> _Setup:
    manifest = workspace.load()
    for stage in ("probe", "localize"):
        if manifest.get("stages", {}).get(stage, {}).get("status") != "done":
            workspace.require_stage(stage)  # raises the stage's usual error
    model = manifest["model"]
    context = Context(
        workspace=workspace,
        model_dir=Path(model["path"]),
        hrl=manifest["hrl"],
        langs=list(manifest["langs"]),
        probed_layers=list(manifest["stages"]["probe"]["params"]["layers"]),
        intermediate_size=int(model["intermediate_size"]),
        model_type=str(model["model_type"]),
    )
    return _Setup(context, int(model["hidden_size"]))


# ---------------------------------------------------------------------------------------------
# The grid


def _grid(method: str, overrides: dict[str, list[Any]] | None) -> dict[str, list[Any]]:
    values = dict(PAPER_GRID if method == "paper" else RESIDUAL_GRID)
    for key, options in (overrides or {}).items():
        if key not in GRID_KEYS[method]:
            raise SolveError(
                f"unknown tuning grid key '{key}' for method {method}",
                hint="grid keys: " + ", ".join(GRID_KEYS[method]),
            )
        if not options:
            raise SolveError(f"the tuning grid lists no value for '{key}'")
        values[key] = list(options)
    return values


Plan = list[tuple[tuple[int, ...], list[SolveConfig]]]


def _plan(setup: _Setup, base: SolveConfig, grid: dict[str, list[Any]]) -> Plan:
    """The candidates, grouped by the layers they edit (so each layer's data is read once)."""
    if base.method == "paper":
        return _paper_plan(setup, base, grid)
    return _residual_plan(setup, base, grid)


def _paper_plan(setup: _Setup, base: SolveConfig, grid: dict[str, list[Any]]) -> Plan:
    requested = grid.get("layers")
    probed = setup.context.probed_layers
    layers = _single_layers(requested, probed) if requested else probed
    gammas = [base.gamma] if base.hard else grid["gamma"]  # the hard projector has no gamma
    plan: Plan = []
    for layer in layers:
        neurons = len(setup.neurons(layer))
        if neurons == 0:
            if requested:
                raise SolveError(
                    f"layer {layer} has no HRL safety neurons at the current thresholds",
                    hint="lower the localize thresholds or drop it from the grid",
                )
            continue
        cap = min(setup.hidden_size, neurons)
        ranks = _unique(min(rank or PAPER_RANK, cap) for rank in grid["rank"])
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


def _residual_plan(setup: _Setup, base: SolveConfig, grid: dict[str, list[Any]]) -> Plan:
    workspace = setup.context.workspace
    with_moments = [
        layer for layer in setup.context.probed_layers if workspace.stats_path(layer).exists()
    ]
    if grid.get("layers"):
        bands = [_band(entry, with_moments) for entry in grid["layers"]]
    else:
        bands = default_bands(with_moments)
    if base.sparse:
        bands = [band for band in bands if all(len(setup.neurons(layer)) for layer in band)]
    if not bands:
        raise SolveError(
            "no layer band to tune: no probed layer has activation moments"
            + (" and HRL safety neurons" if base.sparse else ""),
            hint="re-run `swe probe` with --stats-layers",
        )
    ranks = grid.get("rank", [base.rank])
    return [
        (
            band,
            [
                base.updated(layers=band, alpha=alpha, beta=beta, lam=lam, rank=rank)
                for alpha, beta, lam, rank in itertools.product(
                    grid["alpha"], grid["beta"], grid["lam"], ranks
                )
            ],
        )
        for band in _unique(bands)
    ]


def default_bands(layers: Sequence[int]) -> list[tuple[int, ...]]:
    """The last 1, 2 and 3 layers, and all but the first (the `swe solve` default), deduplicated."""
    layers = sorted(layers)
    bands = [tuple(layers[-count:]) for count in (1, 2, 3) if count <= len(layers)]
    if len(layers) > 1:
        bands.append(tuple(layers[1:]))
    return _unique(bands)


def _single_layers(entries: Sequence[Any], probed: Sequence[int]) -> list[int]:
    layers = []
    for entry in entries:
        band = _band(entry, probed)
        if len(band) != 1:
            raise SolveError(
                f"method paper tunes one layer at a time, got the band {list(band)}",
                hint="list single layers in the grid",
            )
        layers.append(band[0])
    return _unique(layers)


def _band(entry: Any, allowed: Sequence[int]) -> tuple[int, ...]:
    band = tuple(sorted({int(entry)} if isinstance(entry, int) else {int(x) for x in entry}))
    missing = [layer for layer in band if layer not in allowed]
    if not band or missing:
        raise SolveError(
            f"grid layers {list(band) or entry!r}: {missing or 'empty'} not usable",
            hint=f"choose among the probed layers with the data this method needs: {list(allowed)}",
        )
    return band


def _unique(items: Any) -> list[Any]:
    return list(dict.fromkeys(items))


# ---------------------------------------------------------------------------------------------
# The tune-fit / validation split of the probed ids


def _split(context: Context, layers: Sequence[int], fraction: float) -> _Split:
    """Split the ids stored in the shards of `layers` (the probe's fit split and nothing else)."""
    languages = [context.hrl, *context.langs]
    harmful = {lang: _stored_ids(context.workspace, layers, "harmful", lang) for lang in languages}
    harmless = set().union(
        *(_stored_ids(context.workspace, layers, "harmless", lang) for lang in languages)
    )
    every = set().union(*harmful.values()) | harmless
    validation = frozenset(i for i in every if split_of(i, fraction, TUNE_SALT) == HELDOUT)
    fit = frozenset(every - validation)
    for part, ids in (("tune-fit", fit), ("validation", validation)):
        for lang in context.langs:
            if not harmful[lang] & harmful[context.hrl] & ids:
                _too_few(f"harmful prompts of '{lang}' paired with '{context.hrl}'", part)
        if not harmless & ids:
            _too_few("harmless prompts", part)
    return _Split(fit, validation, frozenset(set().union(*harmful.values())), frozenset(harmless))


def _stored_ids(
    workspace: Workspace, layers: Sequence[int], prompt_set: str, lang: str
) -> set[str]:
    """The ids held by the shards that layer_data reads (header metadata only)."""
    ids: set[str] = set()
    for layer in layers:
        for path in workspace.layer_dir(layer).glob(f"{prompt_set}-{lang}-*.safetensors"):
            ids.update(filter(None, read_header(path).metadata.get("ids", "").split("\n")))
    return ids


def _too_few(what: str, part: str) -> None:
    raise SolveError(
        f"the {part} part of the tuning split has no {what}",
        hint="probe more prompts or change the validation fraction",
    )


# ---------------------------------------------------------------------------------------------
# Scoring


class _Loader:
    """Reads each layer's workspace data once per tune: the tune-fit and validation rows
    (layer_data filtered by id), the edited gate rows W_S and the residual-method keys."""

    def __init__(self, setup: _Setup, split: _Split) -> None:
        self.setup = setup
        self.context = setup.context
        self.split = split
        self._pairs: dict[int, tuple[LayerData, LayerData]] = {}
        self._weights: dict[tuple[int, tuple[str, ...]], list[Any]] = {}
        self._keys: dict[tuple[int, bool], _Keys] = {}

    def pair(self, layer: int) -> tuple[LayerData, LayerData]:
        if layer not in self._pairs:
            workspace, hrl, langs = self.context.workspace, self.context.hrl, self.context.langs
            self._pairs[layer] = (
                layer_data(workspace, layer, hrl, langs, ids=self.split.fit),
                layer_data(workspace, layer, hrl, langs, ids=self.split.validation),
            )
        return self._pairs[layer]

    def weights(self, layer: int, projections: tuple[str, ...]) -> list[Any]:
        if (layer, projections) not in self._weights:
            neurons = self.setup.neurons(layer)
            self._weights[(layer, projections)] = _gate_weights(
                self.context, layer, neurons, projections
            )
        return self._weights[(layer, projections)]

    def keys(self, layer: int, sparse: bool) -> _Keys:
        if (layer, sparse) not in self._keys:
            columns = self.setup.neurons(layer) if sparse else None
            self._keys[(layer, sparse)] = _residual_keys(
                self.context, layer, self.pair(layer), columns
            )
        return self._keys[(layer, sparse)]


def _score_paper(
    loader: _Loader, layers: tuple[int, ...], configs: list[SolveConfig], leak_weight: float
) -> list[Candidate]:
    """Paper candidates of one layer. val_residual = ||X_low dW - D|| / ||D|| and val_leak =
    ||X_safe dW|| / ||X_safe W_S||, both on validation rows (means over the edited projections)."""
    import torch

    from swe_cli.methods.linalg import relative_residual

    (layer,) = layers
    fit, val = loader.pair(layer)
    x_low, x_hrl, x_safe = (t.to(torch.float64) for t in (val.x_low, val.x_hrl, val.x_safe))
    weights = loader.weights(layer, configs[0].projections)
    targets = [(x_hrl - x_low) @ W_S for W_S in weights]  # Sec. 4.3: D = X_en W_S - X_low W_S
    safe_norms = [torch.linalg.matrix_norm(x_safe @ W_S).item() for W_S in weights]
    candidates = []
    for config in configs:
        start = time.perf_counter()
        try:
            solutions = [paper_solution(fit, W_S, config) for W_S in weights]
        except SolveError:
            candidates.append(_failed(config, time.perf_counter() - start))
            continue
        deltas = [solution.delta.to(torch.float64) for solution in solutions]
        residual = _mean(
            relative_residual(x_low, dW, D) for dW, D in zip(deltas, targets, strict=True)
        )
        leak = _mean(
            _ratio(torch.linalg.matrix_norm(x_safe @ dW).item(), norm)
            for dW, norm in zip(deltas, safe_norms, strict=True)
        )
        fit_residual = _mean(s.diagnostics["relative_residual"] for s in solutions)
        candidates.append(
            Candidate(
                config=config,
                val_residual=residual,
                val_leak=leak,
                score=residual + leak_weight * leak,
                fit_residual=fit_residual,
                seconds=time.perf_counter() - start,
            )
        )
    return candidates


def _gate_weights(
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


@dataclass(frozen=True)
class _Keys:
    """One layer's residual-method inputs (float64, columns are samples)."""

    K: Any  # f x n tune-fit LRL harmful keys
    Kn: Any  # f x n_s tune-fit harmless keys
    C0: Any  # f x f all-position moment
    K_val: Any  # f x n_val validation LRL harmful keys
    Kn_val: Any  # f x n_s_val validation harmless keys


def _score_residual(
    loader: _Loader, band: tuple[int, ...], configs: list[SolveConfig], leak_weight: float
) -> list[Candidate]:
    """Residual candidates of one layer band. The layers' predicted changes dW K add up at the
    last edited layer: val_residual = ||sum dW K_val - T_val|| / ||T_val|| with T = h_HRL - h_LRL;
    val_leak = ||sum dW Kn_val|| scaled per key (x sqrt(n_val / n_safe_val)) / ||T_val||."""
    import torch

    keys = {layer: loader.keys(layer, configs[0].sparse) for layer in band}
    fit, val = loader.pair(band[-1])
    target = (fit.r_hrl - fit.r_low).T.to(torch.float64)  # d x n
    target_val = (val.r_hrl - val.r_low).T.to(torch.float64)
    target_norm = torch.linalg.matrix_norm(target).item()
    val_norm = torch.linalg.matrix_norm(target_val).item()
    per_key = math.sqrt(target_val.shape[1] / keys[band[-1]].Kn_val.shape[1])
    candidates = []
    for config in configs:
        start = time.perf_counter()
        remaining, change, harmless_change, preservation = target, 0.0, 0.0, 0.0
        try:
            for position, layer in enumerate(band):
                item = keys[layer]
                solution, remaining = residual_step(
                    item.K, item.Kn, item.C0, remaining, len(band) - position, config
                )
                dW = solution.delta.to(torch.float64)
                change = change + dW @ item.K_val
                harmless_change = harmless_change + dW @ item.Kn_val
                preservation += torch.trace(dW @ item.C0 @ dW.T).item()
        except SolveError:
            candidates.append(_failed(config, time.perf_counter() - start))
            continue
        residual = _relative(change - target_val, target_val)
        leak = _ratio(torch.linalg.matrix_norm(harmless_change).item() * per_key, val_norm)
        candidates.append(
            Candidate(
                config=config,
                val_residual=residual,
                val_leak=leak,
                score=residual + leak_weight * leak,
                fit_residual=_ratio(torch.linalg.matrix_norm(remaining).item(), target_norm),
                seconds=time.perf_counter() - start,
                preservation=_ratio(preservation, target_norm**2 / target.shape[1]),
            )
        )
    return candidates


def _residual_keys(
    context: Context, layer: int, pair: tuple[LayerData, LayerData], columns: Any | None
) -> _Keys:
    """columns: the `swe solve --sparse` restriction to the safety-neuron columns, or None."""
    import torch

    fit, val = pair
    C0 = load_moment(context.workspace, layer).to(torch.float64)
    tensors = [fit.a_low.T, fit.a_safe.T, C0, val.a_low.T, val.a_safe.T]
    if columns is not None:
        tensors = [t[columns] for t in tensors]
        tensors[2] = tensors[2][:, columns]
    return _Keys(*(t.to(torch.float64) for t in tensors))


def _failed(config: SolveConfig, seconds: float) -> Candidate:
    return Candidate(config, math.inf, math.inf, math.inf, math.inf, seconds)


def _relative(residual: Any, reference: Any) -> float:
    import torch

    return _ratio(
        torch.linalg.matrix_norm(residual).item(), torch.linalg.matrix_norm(reference).item()
    )


def _ratio(numerator: float, denominator: float) -> float:
    if denominator > 0:
        return float(numerator / denominator)
    return 0.0 if numerator == 0 else math.inf


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return float(sum(values) / len(values))


# ---------------------------------------------------------------------------------------------
# Recording and display


def _candidate_row(candidate: Candidate) -> dict[str, Any]:
    config = candidate.config
    row = _candidate_key(config)
    row.update(
        fit_residual=_number(candidate.fit_residual),
        val_residual=_number(candidate.val_residual),
        val_leak=_number(candidate.val_leak),
        score=_number(candidate.score),
        seconds=round(candidate.seconds, 4),
    )
    if config.method == "residual":
        row["preservation"] = _number(candidate.preservation)
    return row


def _number(value: float) -> float | str:
    return round(value, 6) if math.isfinite(value) else str(value)


def _plain_config(config: SolveConfig) -> dict[str, Any]:
    return config.plain()


def _record(
    workspace: Workspace, result: TuneResult, *, validation_fraction: float, leak_weight: float
) -> None:
    best = _plain_config(result.best)
    params = {
        "method": result.best.method,
        "validation_fraction": validation_fraction,
        "leak_weight": leak_weight,
        "salt": TUNE_SALT,
    }
    document = {
        **params,
        "best": best,
        "fit_ids": list(result.fit_ids),
        "validation_ids": list(result.validation_ids),
        "seconds": round(sum(c.seconds for c in result.candidates), 4),
        "grid_edge": edge_axes(result),
        "candidates": [_candidate_row(c) for c in result.candidates],
    }
    path = workspace.edit_dir / TUNE_FILE
    atomic_write_text(path, yaml.safe_dump(document, sort_keys=False))
    workspace.record_stage(
        "tune",
        params,
        {
            "tune": str(path.relative_to(workspace.root)),
            "best": best,
            "candidates": len(result.candidates),
            "fit_ids": len(result.fit_ids),
            "validation_ids": len(result.validation_ids),
        },
    )


def candidates_table(result: TuneResult) -> Any:
    """A rich Table with one row per candidate, best score first; the choice is marked."""
    from rich.table import Table

    method = result.best.method
    choice = ", ".join(f"{key}={_cell(getattr(result.best, key))}" for key in GRID_KEYS[method])
    edges = edge_axes(result)
    edge_note = f"; at the grid edge in {', '.join(edges)}: widen the grid" if edges else ""
    table = Table(
        title=f"--tune: {len(result.candidates)} candidates ({method})",
        caption=f"choice (*): {choice}{edge_note}; score = val res + leak weight x val leak",
    )
    table.add_column("", justify="center")
    for key in GRID_KEYS[method]:
        table.add_column(key, justify="right")
    columns = ["fit res", "val res", "val leak"]
    if method == "residual":
        columns.append("preserv")
    for column in [*columns, "score", "ms"]:
        table.add_column(column, justify="right")
    chosen = False
    for candidate in sorted(result.candidates, key=lambda c: c.score):
        mark = not chosen and candidate.config == result.best
        chosen = chosen or mark
        config = candidate.config
        cells = ["*" if mark else ""]
        cells += [_cell(getattr(config, key)) for key in GRID_KEYS[method]]
        values = [candidate.fit_residual, candidate.val_residual, candidate.val_leak]
        if method == "residual":
            values.append(candidate.preservation)
        cells += [f"{value:.4f}" for value in [*values, candidate.score]]
        cells.append(f"{candidate.seconds * 1000:.0f}")
        table.add_row(*cells, style="bold green" if mark else None)
    return table


def edge_axes(result: TuneResult) -> list[str]:
    """Coefficient axes on which the choice is the smallest or largest value tried: the optimum
    may lie outside the grid."""
    edges = []
    for key in GRID_KEYS[result.best.method]:
        if key == "layers":
            continue
        tried = {getattr(c.config, key) for c in result.candidates} - {None}
        value = getattr(result.best, key)
        if len(tried) > 1 and value in (min(tried), max(tried)):
            edges.append(key)
    return edges


def _cell(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(str(item) for item in value)
    return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


# ---------------------------------------------------------------------------------------------
# Optional confirmation by a short refusal check


@dataclass(frozen=True)
class Confirmation:
    """A short refusal check on the validation prompts; config None is the unedited model."""

    config: SolveConfig | None
    score: float  # the candidate's tune score (nan for the unedited model)
    refusal_rate: float  # validation LRL harmful prompts refused: higher is better
    over_refusal: float  # validation harmless prompts refused: lower is better


def confirm(
    workspace: Workspace,
    result: TuneResult,
    *,
    top: int = 3,
    max_new_tokens: int = 32,
    batch_size: int = 16,
    device: str = "cpu",
) -> tuple[Confirmation, ...]:
    """Refit the `top` best candidates on the tune-fit ids exactly as `tune` did, patch each into
    the model in memory in turn, answer the validation prompts greedily and judge the answers
    with the refusal-pattern judge. The first row is the unedited model. Adds the rows to
    WS/edit/tune.yaml under `confirmation`; choosing among them is the caller's (see
    `confirmed_choice`)."""
    from swe_cli.judges import PatternJudge
    from swe_cli.models import load_model

    setup = _setup(workspace)
    context = setup.context
    validation = frozenset(result.validation_ids)
    split = _Split(
        frozenset(result.fit_ids), validation, result.touched_ids, result.touched_harmless_ids
    )
    loader = _Loader(setup, split)
    harmful = _validation_prompts(workspace, "harmful", context.langs, validation)
    harmless = _validation_prompts(workspace, "harmless", [context.hrl, *context.langs], validation)
    model, tokenizer = load_model(context.model_dir, device=device)
    judge = PatternJudge.from_files()

    def check(config: SolveConfig | None, score: float) -> Confirmation:
        refused = _refusal_rate(model, tokenizer, judge, harmful, max_new_tokens, batch_size)
        over = _refusal_rate(model, tokenizer, judge, harmless, max_new_tokens, batch_size)
        return Confirmation(config, score, refused, over)

    ranked = sorted(
        (c for c in result.candidates if math.isfinite(c.score)), key=lambda c: c.score
    )[:top]
    rows = [check(None, math.nan)]
    for candidate in ranked:
        with _patched(_weight_changes(model, loader, candidate.config)):
            rows.append(check(candidate.config, candidate.score))
    _record_confirmation(workspace, rows)
    return tuple(rows)


def confirmed_choice(rows: Sequence[Confirmation]) -> SolveConfig:
    """The confirmed candidate that refuses most minus over-refuses least (tune score on ties)."""
    edited = [row for row in rows if row.config is not None]
    if not edited:
        raise SolveError("no confirmed candidate to choose from")
    best = min(edited, key=lambda row: (row.over_refusal - row.refusal_rate, row.score))
    assert best.config is not None
    return best.config


def _validation_prompts(
    workspace: Workspace, name: str, langs: Sequence[str], validation: frozenset[str]
) -> dict[str, list[str]]:
    """Texts of the validation ids per language (only fit-split prompts are considered)."""
    from swe_cli.prompts import FIT, PromptSet

    prompts = PromptSet.from_jsonl(workspace.prompts_dir / f"{name}.jsonl", name)
    return {
        lang: [p.text for p in prompts.select(lang, FIT) if p.id in validation] for lang in langs
    }


def _refusal_rate(
    model: Any,
    tokenizer: Any,
    judge: Any,
    prompts: dict[str, list[str]],
    max_new_tokens: int,
    batch_size: int,
) -> float:
    from swe_cli.judges import REFUSED
    from swe_cli.models import generate

    refused = total = 0
    for lang, texts in prompts.items():
        answers = generate(
            model, tokenizer, texts, max_new_tokens=max_new_tokens, batch_size=batch_size
        )
        refused += sum(judge.verdict(answer, lang) == REFUSED for answer in answers)
        total += len(texts)
    return _ratio(refused, total)


# (weight parameter, row indices or None, column indices or None, delta for that block)
WeightChange = tuple[Any, Any, Any, Any]


def _weight_changes(model: Any, loader: _Loader, config: SolveConfig) -> list[WeightChange]:
    """The candidate's edit, fitted on the tune-fit ids, as in-memory weight blocks."""
    import torch

    context = loader.context
    adapter = adapter_for(context.model_type)
    layers = tuple(config.layers or ())
    changes: list[WeightChange] = []
    if config.method == "paper":
        (layer,) = layers
        neurons = loader.setup.neurons(layer)
        fit, _ = loader.pair(layer)
        weights = loader.weights(layer, config.projections)
        for projection, W_S in zip(config.projections, weights, strict=True):
            delta = paper_solution(fit, W_S, config).delta  # d x m: G[S,:] += delta^T
            parameter, offset = _module_weight(model, adapter, layer, projection, context)
            changes.append((parameter, neurons + offset, None, delta.T))
        return changes
    fit, _ = loader.pair(layers[-1])
    remaining = (fit.r_hrl - fit.r_low).T.to(torch.float64)
    for position, layer in enumerate(layers):
        keys = loader.keys(layer, config.sparse)
        solution, remaining = residual_step(
            keys.K, keys.Kn, keys.C0, remaining, len(layers) - position, config
        )
        columns = loader.setup.neurons(layer) if config.sparse else None
        parameter, _ = _module_weight(model, adapter, layer, "down", context)
        changes.append((parameter, None, columns, solution.delta))
    return changes


def _module_weight(
    model: Any, adapter: Any, layer: int, projection: str, context: Context
) -> tuple[Any, int]:
    """The loaded module's weight for a projection and the row offset of its rows."""
    if projection == "down":
        return model.get_submodule(adapter.down_module(layer)).weight, 0
    if adapter.fused_gate_up is not None:
        module = model.get_submodule(f"{adapter.layer_module(layer)}.{adapter.fused_gate_up}")
        return module.weight, 0 if projection == "gate" else context.intermediate_size
    name = adapter.gate if projection == "gate" else adapter.up
    return model.get_submodule(f"{adapter.layer_module(layer)}.{name}").weight, 0


@contextlib.contextmanager
def _patched(changes: Sequence[WeightChange]) -> Iterator[None]:
    """Add each delta to its weight block; restore the exact original values afterwards."""
    import torch

    saved = []
    with torch.no_grad():
        for parameter, rows, columns, delta in changes:
            index = _block(rows, columns)
            saved.append((parameter, index, parameter[index].clone()))
            block = parameter[index].float() + delta.to(parameter.device)
            parameter[index] = block.to(parameter.dtype)
    try:
        yield
    finally:
        with torch.no_grad():
            for parameter, index, original in reversed(saved):  # overlapping blocks too
                parameter[index] = original


def _block(rows: Any, columns: Any) -> Any:
    if rows is not None:
        return (rows.to("cpu").long(),)
    if columns is not None:
        return (slice(None), columns.to("cpu").long())
    return (slice(None), slice(None))


def _record_confirmation(workspace: Workspace, rows: Sequence[Confirmation]) -> None:
    path = workspace.edit_dir / TUNE_FILE
    document = yaml.safe_load(path.read_text(encoding="utf-8")) if path.exists() else {}
    document["confirmation"] = [
        {
            "config": None if row.config is None else _candidate_key(row.config),
            "score": _number(row.score),
            "refusal_rate": round(row.refusal_rate, 6),
            "over_refusal": round(row.over_refusal, 6),
        }
        for row in rows
    ]
    atomic_write_text(path, yaml.safe_dump(document, sort_keys=False))


def _candidate_key(config: SolveConfig) -> dict[str, Any]:
    row = {key: getattr(config, key) for key in GRID_KEYS[config.method]}
    row["layers"] = list(config.layers or ())
    return row
