"""Automatic choice of the edited layer(s) and the solver coefficients (`--tune`; the paper names it
as future work), from the probe data alone, in seconds. The probe's fit prompts are split again by
id into a tune-fit and a validation part (salt "swe-tune"; the held-out eval split is never probed,
so it cannot be read). Every candidate of a small grid is solved on the tune-fit part with the same
solvers `swe solve` uses and scored on the validation part: how much of the LRL -> HRL gap it leaves
(validation residual) plus how much it moves harmless keys (utility leak). The candidate table and
the choice are written to WS/edit/tune.yaml and recorded as the stage "tune"."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from swe_cli.errors import SolveError
from swe_cli.io.files import atomic_write_text
from swe_cli.io.safetensors import read_header
from swe_cli.measure import judged_answers, patched, refusal_rate
from swe_cli.methods import get_method
from swe_cli.methods.base import (
    Candidate,
    Context,
    Method,
    TuneData,
    context_from,
)
from swe_cli.prompts import HELDOUT, sort_ids, split_of
from swe_cli.settings import SolveConfig
from swe_cli.workspace import Workspace

TUNE_SALT = "swe-tune"
TUNE_FILE = "tune.yaml"
SMALL_SYSTEM = 1024  # largest system order solved single-threaded
__all__ = [
    "Candidate",
    "TuneResult",
    "candidates_table",
    "confirm",
    "split_ids",
    "tune",
    "validation_prompts",
]


@dataclass(frozen=True)
class TuneResult:
    best: SolveConfig
    candidates: tuple[Candidate, ...]
    fit_ids: tuple[str, ...]  # tune-fit part of the probed (fit-split) ids, harmful and harmless
    validation_ids: tuple[str, ...]
    touched_ids: frozenset[str]  # every harmful prompt id whose activations were read
    touched_harmless_ids: frozenset[str] = frozenset()  # the same for the harmless set


@dataclass(frozen=True)
class Split:
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
    default values per key (the method's grid_keys); "layers" lists layers (paper) or layer
    bands (residual)."""
    method = get_method(base.method)
    if not 0.0 < validation_fraction < 1.0:
        raise SolveError(
            f"validation fraction must be strictly between 0 and 1, got {validation_fraction}"
        )
    if not (math.isfinite(leak_weight) and leak_weight >= 0):
        raise SolveError(f"leak weight must be a finite number >= 0, got {leak_weight}")
    data = TuneData(_context(workspace), frozenset(), frozenset())
    plan = method.plan(data, base, _grid(method, grid))
    count = sum(len(configs) for _, configs in plan)
    if count > max_candidates:
        raise SolveError(
            f"the tuning grid has {count} candidates, more than the limit of {max_candidates}",
            hint="narrow the grid or raise max_candidates",
        )
    layers = sorted({layer for key, _ in plan for layer in key})
    split = split_ids(data.context, layers, validation_fraction)
    data.fit, data.validation = split.fit, split.validation
    with _threads_for(method.system_size(data.context)):
        candidates = [
            candidate
            for key, configs in plan
            for candidate in method.score(data, key, configs, leak_weight)
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


def _context(workspace: Workspace) -> Context:
    manifest = workspace.manifest()
    for stage in ("probe", "localize"):
        record = manifest.stage(stage)
        if not record or not record.done:
            workspace.require_stage(stage)  # raises the stage's usual error
    return context_from(workspace, manifest)


# ---------------------------------------------------------------------------------------------
# The grid


def _grid(method: Method, overrides: dict[str, list[Any]] | None) -> dict[str, list[Any]]:
    values = dict(method.grid)
    for key, options in (overrides or {}).items():
        if key not in method.grid_keys:
            raise SolveError(
                f"unknown tuning grid key '{key}' for method {method.name}",
                hint="grid keys: " + ", ".join(method.grid_keys),
            )
        if not options:
            raise SolveError(f"the tuning grid lists no value for '{key}'")
        values[key] = list(options)
    return values


# ---------------------------------------------------------------------------------------------
# The tune-fit / validation split of the probed ids


def split_ids(context: Context, layers: Sequence[int], fraction: float) -> Split:
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
    return Split(fit, validation, frozenset(set().union(*harmful.values())), frozenset(harmless))


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
    if "preservation" in get_method(config.method).extra_columns:
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
    keys = get_method(method).grid_keys
    preservation = "preservation" in get_method(method).extra_columns
    choice = ", ".join(f"{key}={_cell(getattr(result.best, key))}" for key in keys)
    edges = edge_axes(result)
    edge_note = f"; at the grid edge in {', '.join(edges)}: widen the grid" if edges else ""
    table = Table(
        title=f"--tune: {len(result.candidates)} candidates ({method})",
        caption=f"choice (*): {choice}{edge_note}; score = val res + leak weight x val leak",
    )
    table.add_column("", justify="center")
    for key in keys:
        table.add_column(key, justify="right")
    columns = ["fit res", "val res", "val leak"]
    if preservation:
        columns.append("preserv")
    for column in [*columns, "score", "ms"]:
        table.add_column(column, justify="right")
    chosen = False
    for candidate in sorted(result.candidates, key=lambda c: c.score):
        mark = not chosen and candidate.config == result.best
        chosen = chosen or mark
        config = candidate.config
        cells = ["*" if mark else ""]
        cells += [_cell(getattr(config, key)) for key in keys]
        values = [candidate.fit_residual, candidate.val_residual, candidate.val_leak]
        if preservation:
            values.append(candidate.preservation)
        cells += [f"{value:.4f}" for value in [*values, candidate.score]]
        cells.append(f"{candidate.seconds * 1000:.0f}")
        table.add_row(*cells, style="bold green" if mark else None)
    return table


def edge_axes(result: TuneResult) -> list[str]:
    """Coefficient axes on which the choice is the smallest or largest value tried: the optimum
    may lie outside the grid."""
    edges = []
    for key in get_method(result.best.method).grid_keys:
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

    context = _context(workspace)
    validation = frozenset(result.validation_ids)
    data = TuneData(context, frozenset(result.fit_ids), validation)
    harmful = validation_prompts(workspace, "harmful", context.langs, validation)
    harmless = validation_prompts(workspace, "harmless", [context.hrl, *context.langs], validation)
    model, tokenizer = load_model(context.model_dir, device=device)
    judge = PatternJudge.from_files()

    def pooled_refusal(prompts: dict[str, list[str]]) -> float:
        verdicts = [
            verdict
            for lang, texts in prompts.items()
            for verdict in judged_answers(
                model,
                tokenizer,
                judge,
                texts,
                lang,
                max_new_tokens=max_new_tokens,
                batch_size=batch_size,
            )
        ]
        return refusal_rate(verdicts) if verdicts else 0.0

    def check(config: SolveConfig | None, score: float) -> Confirmation:
        return Confirmation(config, score, pooled_refusal(harmful), pooled_refusal(harmless))

    ranked = sorted(
        (c for c in result.candidates if math.isfinite(c.score)), key=lambda c: c.score
    )[:top]
    rows = [check(None, math.nan)]
    for candidate in ranked:
        method = get_method(candidate.config.method)
        with patched(method.weight_changes(model, data, candidate.config)):
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


def validation_prompts(
    workspace: Workspace, name: str, langs: Sequence[str], validation: frozenset[str]
) -> dict[str, list[str]]:
    """Texts of the validation ids per language (only fit-split prompts are considered)."""
    from swe_cli.prompts import FIT, PromptSet

    prompts = PromptSet.from_jsonl(workspace.prompts_dir / f"{name}.jsonl", name)
    return {
        lang: [p.text for p in prompts.select(lang, FIT) if p.id in validation] for lang in langs
    }


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
    row = {key: getattr(config, key) for key in get_method(config.method).grid_keys}
    row["layers"] = list(config.layers or ())
    return row
