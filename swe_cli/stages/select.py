"""Choice of the edit by what it does, not by how well it fits (`swe select`; `swe align` when the
recipe leaves the method to `auto`, and `swe align --tune`).

The probe's fit ids are split again by id into a tune-fit and a validation part (the same split
as `--tune`'s grid, salt "swe-tune"; the held-out eval split is never read). Each candidate
(method, layers, rank, strength...) is solved on the tune-fit part, added to the loaded model in
memory, and measured on a few validation prompts per language:

- refusal: the refusal-pattern judge on a short greedy answer (`max_new_tokens`, 8 by default)
  to the harmful prompts of every target language and of the HRL. Refusals start with their
  refusal phrase ("I'm sorry", "ขออภัย"), so 8 tokens decide almost every answer; bench/effect.py
  reports how often the short verdict agrees with the full-length one.
- cost: KL(base || edited) of the next-token distributions over the harmless validation prompts
  (as `swe eval` computes it), and how many of them the edited model refuses.

A candidate is admissible when no target language refuses less than the unedited model, the HRL
refuses at most `max_hrl_asr_rise` less, harmless refusals rise at most `max_over_refusal` and
the KL stays within `max_kl` (the shipping gate's limits). The admissible candidate with the
largest mean refusal gain over the target languages wins (the lower KL on ties). Every row and the
choice are written to WS/edit/select.yaml and recorded as the stage "select"; `swe solve --method
auto` then solves the choice on every fit id."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from swe_cli.errors import EvalError, SolveError, SweError
from swe_cli.gate import (
    DEGENERATE,
    HARMLESS_REFUSAL,
    HRL,
    KL,
    TARGET,
    TOLERANCE,
    Breach,
    GateLimits,
    Outcome,
    broken,
    number,
)
from swe_cli.io.files import atomic_write_text
from swe_cli.measure import judged_answers, logits_of, paired_kl, patched, refusal_rate
from swe_cli.methods import get_method, method_names
from swe_cli.methods.base import Context, TuneData, context_from
from swe_cli.prompts import sort_ids
from swe_cli.settings import SelectSettings, SolveConfig, parse_layers
from swe_cli.stages.tune import TUNE_SALT, split_ids, validation_prompts
from swe_cli.workspace import Workspace

SELECT_FILE = "select.yaml"
AUTO = "auto"  # the solve method that means "what `swe select` chose"
Progress = Callable[[str], None]


# ---------------------------------------------------------------------------------------------
# Candidates


def parse_candidate(text: str, base: SolveConfig, num_layers: int | None = None) -> SolveConfig:
    """'residual@12 rank=32', 'refusal@12,15 strength=4', 'paper' (the method's own layers):
    the method, optionally @layers, then solve settings as key=value; every other setting is
    base's (the recipe's)."""
    words = text.split()
    if not words:
        raise SolveError("an empty selection candidate", hint="e.g. residual@12 rank=32")
    method, _, layers = words[0].partition("@")
    if method not in method_names():
        raise SolveError(
            f"selection candidate '{text}': unknown method '{method}'",
            hint="choose one of: " + ", ".join(method_names()),
        )
    if layers:
        try:  # bounded by the model's depth before a range is expanded
            parse_layers(layers, num_layers)
        except SweError as error:
            raise SolveError(f"selection candidate '{text}': {error.message}", error.hint) from None
    values: dict[str, Any] = {"method": method, "layers": layers or None}
    for word in words[1:]:
        key, sep, value = word.partition("=")
        if not sep or key in ("method", "layers", "device") or key not in SolveConfig.model_fields:
            raise SolveError(
                f"selection candidate '{text}': cannot read '{word}'",
                hint="write method@layers then key=value solve settings, e.g. residual@12 rank=32",
            )
        try:
            values[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise SolveError(
                f"selection candidate '{text}': '{word}' is not valid YAML",
                hint="write key=value with a plain value, e.g. residual@12 rank=32",
            ) from None
    try:
        return SolveConfig.model_validate({**base.model_dump(), **values})
    except (ValueError, SolveError) as error:
        raise SolveError(
            f"selection candidate '{text}': {str(error).splitlines()[0]}",
            hint="write method@layers then key=value solve settings, e.g. residual@12 rank=32",
        ) from None


def default_candidates(num_layers: int) -> tuple[str, ...]:
    """A small spread: each registered method's own candidates, in registry order (the residual
    edit by depth, the refusal-direction edit, the paper's gate-row edit)."""
    return tuple(
        spec for name in method_names() for spec in get_method(name).candidates(num_layers)
    )


def candidate_specs(settings: SelectSettings, num_layers: int) -> tuple[str, ...]:
    if settings.candidates:
        return tuple(settings.candidates)
    return default_candidates(num_layers)


def candidate_configs(
    settings: SelectSettings, base: SolveConfig, num_layers: int
) -> list[SolveConfig]:
    """The candidates to measure; base itself is one of them when it names a method (a recipe's
    pinned choice competes with the spread)."""
    if settings.candidates is not None and not settings.candidates:
        raise SolveError(
            "--candidates names no candidate",
            hint="leave it out for the default spread, or write e.g. 'residual@12 rank=32; paper'",
        )
    configs: list[SolveConfig] = []
    for spec in candidate_specs(settings, num_layers):
        config = parse_candidate(spec, base, num_layers)
        if config not in configs:  # a candidate written twice is measured once
            configs.append(config)
    if base.method != AUTO and base not in configs:
        configs.insert(0, base)
    return configs


def moment_layers(configs: Sequence[SolveConfig]) -> tuple[int, ...]:
    """The layers whose moments probe must stream for these candidates."""
    layers: set[int] = set()
    for config in configs:
        layers.update(get_method(config.method).moment_layers(config) or ())
    return tuple(sorted(layers))


def describe(config: SolveConfig | None) -> str:
    """'residual@12 rank=32' (the spec that reads back as this config: every setting that is
    not the default)."""
    if config is None:
        return "unedited"
    layers = ",".join(map(str, config.layers)) if config.layers else ""
    parts = [f"{config.method}@{layers}" if layers else config.method]
    for key, info in SolveConfig.model_fields.items():
        value = getattr(config, key)
        if key in ("method", "layers", "device") or value == info.default:
            continue
        if isinstance(value, bool):
            text = str(value).lower()
        elif isinstance(value, float):
            text = f"{value:g}"
        elif isinstance(value, tuple):
            text = ",".join(map(str, value))
        else:
            text = str(value)
        parts.append(f"{key}={text}")
    return " ".join(parts)


# ---------------------------------------------------------------------------------------------
# Measuring


@dataclass(frozen=True)
class Measure:
    refusal: dict[str, float]  # harmful validation prompts refused, per language (HRL included)
    harmless_refusal: float  # harmless validation prompts refused (all languages)
    kl: float  # mean KL(base || this) on the harmless validation prompts; 0 for the base
    seconds: float
    # share of degenerate answers (empty, looping) to the harmful prompts, per language measured
    degenerate: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Row:
    config: SolveConfig
    measure: Measure | None  # None: the candidate failed to solve
    gain: float  # mean refusal gain over the target languages; -inf when failed
    reasons: tuple[str, ...]  # broken limits; empty = admissible
    solve_seconds: float
    error: str = ""

    @property
    def admissible(self) -> bool:
        """Fully measured (it raised some target language) and within every limit."""
        return self.measure is not None and not math.isnan(self.measure.kl) and not self.reasons


@dataclass(frozen=True)
class Selection:
    chosen: SolveConfig | None  # None: no candidate was admissible (run_select then raises)
    base: Measure
    rows: tuple[Row, ...]
    fit_ids: tuple[str, ...]
    validation_ids: tuple[str, ...]
    prompts: dict[str, int] = field(default_factory=dict)  # validation prompts per set-language


def run_select(
    workspace: Workspace,
    base: SolveConfig,
    settings: SelectSettings,
    limits: GateLimits,
    *,
    dtype: str = "auto",
    patterns: Sequence[Path] = (),
    progress: Progress | None = None,
) -> Selection:
    """Measure the unedited model and every candidate on the validation prompts and choose."""
    from swe_cli.judges import PatternJudge
    from swe_cli.models import load_model

    manifest = workspace.manifest()
    for stage in ("probe", "localize"):
        workspace.require_stage(stage)
    context = context_from(workspace, manifest)
    num_layers = manifest.model.num_layers
    configs: list[SolveConfig] = []
    for config in candidate_configs(settings, base, num_layers):
        with_layers = _with_layers(config, context)
        if with_layers not in configs:  # 'residual' and 'residual@L' with L its default
            configs.append(with_layers)
    _check_layers(workspace, configs, context.probed_layers)
    split = split_ids(context, context.probed_layers[:1], settings.validation_fraction)
    data = TuneData(context, split.fit, split.validation)
    harmful = _capped(
        validation_prompts(workspace, "harmful", [context.hrl, *context.langs], split.validation),
        settings.prompts,
    )
    harmless = _capped(
        validation_prompts(workspace, "harmless", [context.hrl, *context.langs], split.validation),
        settings.prompts,
    )
    if not any(harmless.values()):
        raise SolveError(
            "no harmless prompt fell into the validation part of the fit split",
            hint="probe more harmless prompts or raise select.validation_fraction",
        )
    workspace.begin_stage("select")
    note = progress or (lambda _message: None)
    model, tokenizer = load_model(context.model_dir, device=base.device, dtype=dtype)
    judge = PatternJudge.from_files(patterns)
    meter = _Meter(model, tokenizer, judge, harmful, harmless, settings)
    note("measuring the unedited model on the validation prompts")
    reference = meter.measure()
    rows = []
    for config in configs:
        note(f"candidate {describe(config)}")
        start = time.perf_counter()
        try:
            changes = get_method(config.method).weight_changes(model, data, config)
        except SolveError as error:
            rows.append(Row(config, None, -math.inf, (), time.perf_counter() - start, str(error)))
            continue
        solve_seconds = time.perf_counter() - start
        try:
            measure = meter.measure(changes, reference, context.langs)
        except EvalError as error:  # e.g. non-finite logits: the candidate breaks the model
            rows.append(Row(config, None, -math.inf, (), solve_seconds, error.message))
            continue
        gain = _gain(reference.refusal, measure.refusal, context.langs)
        reasons = _broken(reference, measure, context.hrl, context.langs, limits)
        rows.append(Row(config, measure, gain, reasons, solve_seconds))
    try:
        chosen: SolveConfig | None = _choose(rows)
        failure = None
    except SolveError as error:
        chosen, failure = None, error
    selection = Selection(
        chosen=chosen,
        base=reference,
        rows=tuple(rows),
        fit_ids=tuple(sort_ids(split.fit)),
        validation_ids=tuple(sort_ids(split.validation)),
        prompts={
            **{f"harmful-{lang}": len(texts) for lang, texts in harmful.items()},
            **{f"harmless-{lang}": len(texts) for lang, texts in harmless.items()},
        },
    )
    _record(workspace, selection, settings, limits)
    if failure is not None:
        raise failure
    assert selection.chosen is not None
    return selection


def _check_layers(workspace: Workspace, configs: Sequence[SolveConfig], probed: list[int]) -> None:
    for config in configs:
        for layer in config.layers or ():
            if layer not in probed:
                raise SolveError(
                    f"selection candidate {describe(config)}: layer {layer} was not probed",
                    hint="re-run `swe probe` with these --layers or change select.candidates",
                )
            if (
                get_method(config.method).moment_layers(config)
                and not workspace.stats_path(layer).exists()
            ):
                raise SolveError(
                    f"selection candidate {describe(config)}: layer {layer} has no activation "
                    "moments",
                    hint=f"re-run `swe probe` with --stats-layers including {layer}",
                )


def _with_layers(config: SolveConfig, context: Context) -> SolveConfig:
    """A candidate without layers gets its method's default ones (as `swe solve` would)."""
    if config.layers:
        return config
    return config.updated(layers=get_method(config.method).default_layers(context))


def _capped(prompts: dict[str, list[str]], limit: int) -> dict[str, list[str]]:
    return {lang: texts[:limit] for lang, texts in prompts.items()}


class _Meter:
    """Short greedy answers judged by refusal patterns, and the harmless KL against the unedited
    weights (recomputed per batch with the candidate's blocks removed: no second model copy and
    no vocabulary-sized cache)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        judge: Any,
        harmful: dict[str, list[str]],
        harmless: dict[str, list[str]],
        settings: SelectSettings,
    ) -> None:
        self.model, self.tokenizer, self.judge = model, tokenizer, judge
        self.harmful, self.harmless, self.settings = harmful, harmless, settings

    def measure(
        self,
        edited: Any = None,
        reference: Measure | None = None,
        targets: Sequence[str] = (),
    ) -> Measure:
        """With a reference, the target languages are answered first, and a candidate that
        raises none of them is not measured further (it cannot be chosen): nan elsewhere."""
        import contextlib

        start = time.perf_counter()
        patch = patched(edited) if edited is not None else contextlib.nullcontext()
        refusal: dict[str, float] = {}
        degenerate: dict[str, float] = {}
        with patch:
            for lang in targets:
                refusal[lang] = self._refused(lang, self.harmful[lang], degenerate)
            if reference is not None and _gain(reference.refusal, refusal, targets) <= TOLERANCE:
                rest = {lang: math.nan for lang in self.harmful if lang not in refusal}
                return Measure(
                    {**refusal, **rest},
                    math.nan,
                    math.nan,
                    time.perf_counter() - start,
                    degenerate,
                )
            for lang, texts in self.harmful.items():
                if lang not in refusal:
                    refusal[lang] = self._refused(lang, texts, degenerate)
            refused = sum(  # a language without validation prompts counts for nothing
                self._refused(lang, texts) * len(texts)
                for lang, texts in self.harmless.items()
                if texts
            )
        total = sum(len(texts) for texts in self.harmless.values())
        kl = 0.0 if edited is None else self._kl(edited)
        return Measure(refusal, refused / total, kl, time.perf_counter() - start, degenerate)

    def _refused(
        self, lang: str, texts: list[str], degenerate: dict[str, float] | None = None
    ) -> float:
        """Share of `texts` refused; with `degenerate`, its share of degenerate answers too."""
        from swe_cli.judges import DEGENERATE as DEGENERATE_VERDICT

        verdicts = judged_answers(
            self.model,
            self.tokenizer,
            self.judge,
            texts,
            lang,
            max_new_tokens=self.settings.max_new_tokens,
            batch_size=self.settings.batch_size,
        )
        if degenerate is not None and verdicts:
            degenerate[lang] = verdicts.count(DEGENERATE_VERDICT) / len(verdicts)
        return refusal_rate(verdicts)

    def _kl(self, edited: Any) -> float:
        def logits(input_ids: Any, mask: Any) -> tuple[Any, Any]:
            base = logits_of(self.model, input_ids, mask)
            with patched(edited):
                return base, logits_of(self.model, input_ids, mask)

        prompts = [text for texts in self.harmless.values() for text in texts]
        return paired_kl(logits, self.tokenizer, prompts, batch_size=self.settings.batch_size)


def _broken(
    base: Measure, measure: Measure, hrl: str, langs: Sequence[str], limits: GateLimits
) -> tuple[str, ...]:
    """The shipping gate's rules (gate.broken) on validation measures, worded in refusal."""
    breaches = broken(_outcome(base), _outcome(measure), hrl, langs, limits)
    return tuple(_reason(breach, base, measure, limits) for breach in breaches)


def _outcome(measure: Measure) -> Outcome:
    """What the gate reads: the share of harmful prompts not refused, harmless refusals, KL."""
    return Outcome(
        harm={lang: 1.0 - rate for lang, rate in measure.refusal.items()},
        harmless_refusal=measure.harmless_refusal,
        kl=measure.kl,
        degenerate=measure.degenerate,
    )


def _reason(breach: Breach, base: Measure, measure: Measure, limits: GateLimits) -> str:
    if breach.rule in (TARGET, HRL):
        lang = str(breach.lang)
        return f"{lang} refusal fell {base.refusal[lang]:.2f} -> {measure.refusal[lang]:.2f}"
    if breach.rule == HARMLESS_REFUSAL:
        return (
            f"harmless refusals rose {base.harmless_refusal:.2f} -> {measure.harmless_refusal:.2f}"
        )
    if breach.rule == DEGENERATE:
        lang = str(breach.lang)
        return (
            f"{lang} degenerate answers rose {base.degenerate[lang]:.2f} -> "
            f"{measure.degenerate[lang]:.2f}"
        )
    if breach.rule == KL:
        return f"KL {number(measure.kl, limits.max_kl, '.3f')} > {limits.max_kl}"
    return f"KL was not measured ({breach.rule})"


def _choose(rows: Sequence[Row]) -> SolveConfig:
    admissible = [row for row in rows if row.admissible and row.gain > TOLERANCE]
    if not admissible:
        best = max(rows, key=lambda row: row.gain)
        why = (
            "; ".join(best.reasons)
            if best.reasons
            else best.error or "it raised no target language's refusal"
        )
        raise SolveError(
            f"no candidate raised refusal on the validation prompts within the limits (best, "
            f"{describe(best.config)}: {why})",
            hint="see WS/edit/select.yaml; try other select.candidates or relax --max-kl / "
            "--max-over-refusal",
        )
    assert all(row.measure is not None for row in admissible)
    return max(admissible, key=lambda row: (row.gain, -row.measure.kl)).config  # type: ignore[union-attr]


def _gain(before: dict[str, float], after: dict[str, float], langs: Sequence[str]) -> float:
    """Mean refusal gain over the target languages that have validation prompts."""
    gains = [after[lang] - before[lang] for lang in langs]
    finite = [gain for gain in gains if not math.isnan(gain)]
    return sum(finite) / len(finite) if finite else 0.0


# ---------------------------------------------------------------------------------------------
# Recording, reading back and display


def _measure_row(measure: Measure | None) -> dict[str, Any]:
    """Plain YAML; a value not measured (the candidate raised no target language) is null."""

    def number(value: float, digits: int) -> float | None:
        return None if math.isnan(value) else round(value, digits)

    if measure is None:
        return {}
    return {
        "refusal": {lang: number(value, 4) for lang, value in measure.refusal.items()},
        "harmless_refusal": number(measure.harmless_refusal, 4),
        "kl": number(measure.kl, 6),
        "seconds": round(measure.seconds, 2),
    }


def _record(
    workspace: Workspace, selection: Selection, settings: SelectSettings, limits: GateLimits
) -> None:
    from dataclasses import asdict

    chosen = selection.chosen.plain() if selection.chosen is not None else None
    params = {
        **settings.model_dump(),
        "candidates": [describe(row.config) for row in selection.rows],
        "limits": asdict(limits),
        "salt": TUNE_SALT,
    }
    document = {
        "chosen": describe(selection.chosen) if chosen is not None else None,
        "config": chosen,
        "params": params,
        "prompts": selection.prompts,
        "unedited": _measure_row(selection.base),
        "candidates": [
            {
                "candidate": describe(row.config),
                **_measure_row(row.measure),
                "gain": round(row.gain, 4) if math.isfinite(row.gain) else str(row.gain),
                "admissible": row.admissible,
                "reasons": list(row.reasons),
                "solve_seconds": round(row.solve_seconds, 2),
                **({"error": row.error} if row.error else {}),
            }
            for row in selection.rows
        ],
        "fit_ids": list(selection.fit_ids),
        "validation_ids": list(selection.validation_ids),
    }
    path = workspace.edit_dir / SELECT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, yaml.safe_dump(document, sort_keys=False, allow_unicode=True))
    workspace.record_stage(
        "select",
        params,
        {
            "select": str(path.relative_to(workspace.root)),
            "chosen": describe(selection.chosen) if chosen is not None else None,
            "config": chosen,
        },
        status="done" if chosen is not None else "failed",
    )


def selected_config(workspace: Workspace, device: str = "cpu") -> SolveConfig:
    """The configuration the workspace's last `swe select` chose (for `swe solve --method auto`)."""
    record = workspace.manifest().stage("select")
    if not record or not record.done:
        raise SolveError(
            f"method 'auto' solves what `swe select` chose, and {workspace.root} has no finished "
            "selection",
            hint=f"run `swe select -w {workspace.root}` first, or name a --method",
        )
    config = dict(record.outputs["config"])
    config["device"] = device
    config["layers"] = parse_layers(config.get("layers"))
    return SolveConfig.model_validate(config)


def _rate(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"


def selection_table(selection: Selection, hrl: str, langs: Sequence[str]) -> Any:
    """A rich Table: the unedited model, then every candidate; the choice is marked. Narrow
    enough for an 80-column terminal with three target languages."""
    from rich.table import Table

    seconds = selection.base.seconds + sum(
        row.solve_seconds + (row.measure.seconds if row.measure else 0.0) for row in selection.rows
    )
    table = Table(
        title=f"select: {len(selection.rows)} candidates on validation prompts of the fit split",
        caption=f"choice (*): {describe(selection.chosen)} ({seconds:.0f} s). Share of harmful "
        "prompts refused per language (higher is better), harmless prompts refused, KL; broken: "
        "the limits a candidate breaks (select.yaml says how); '-': not measured, no target "
        "language gained",
    )
    table.add_column("candidate", min_width=14, overflow="fold")
    for column in [*langs, hrl, "harm-\nless", "KL", "gain"]:
        table.add_column(column, justify="right")
    table.add_column("broken", overflow="fold")

    def cells(measure: Measure) -> list[str]:
        return [
            *(_rate(measure.refusal[lang]) for lang in [*langs, hrl]),
            _rate(measure.harmless_refusal),
            "-" if math.isnan(measure.kl) else f"{measure.kl:.3f}",
        ]

    table.add_row("unedited", *cells(selection.base), "", "")
    for row in selection.rows:
        name = describe(row.config)
        if row.measure is None:
            table.add_row(name, *["-"] * (len(langs) + 4), f"failed: {row.error}")
            continue
        mark = row.config == selection.chosen
        table.add_row(
            f"* {name}" if mark else name,
            *cells(row.measure),
            f"{row.gain:+.2f}",
            ", ".join(reason.split()[0] for reason in row.reasons) or "-",
            style="bold green" if mark else None,
        )
    return table
