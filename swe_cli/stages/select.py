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
- cost, as the shipping gate reads eval: KL(base || edited) of the next-token distributions over
  the plain harmless validation prompts, and the share of them refused, each a mean over
  languages; and, when probe recorded borderline benign requests (`--borderline`), the share of
  their validation part refused (the gate's over-refusal rule, in place of eval's probes).

Each candidate's validation measures go through the gate's own rules and limits (gate.broken):
no target language refuses less than the unedited model, the HRL at most `max_hrl_asr_rise`
less, harmless and borderline refusals up at most `max_over_refusal`, KL within `max_kl`,
degenerate answers up at most `max_degenerate_rise`. The candidate within every limit with the
largest mean refusal gain over the target languages wins (the lower KL on ties). When every
candidate that raises refusal breaks a limit, the one with the largest gain is chosen with a
warning, recorded so that `swe solve`, `swe apply` and `swe align` say it again and `swe align
--eval` stops before eval. The unedited model's answers are the same for every candidate and
every run on the same base: they are cached (stages/base_cache.py's keying). Every row, n per
cell and the choice are written to WS/edit/select.yaml and recorded as the stage "select"; `swe
solve --method auto` then solves the choice on every fit id."""

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
    OVER_REFUSAL,
    TARGET,
    TOLERANCE,
    Breach,
    GateLimits,
    Outcome,
    broken,
    number,
)
from swe_cli.io.files import atomic_write_text
from swe_cli.measure import logits_of, paired_kl, patched, refusal_rate
from swe_cli.methods import get_method, method_names
from swe_cli.methods.base import Context, TuneData, context_from
from swe_cli.prompts import sort_ids
from swe_cli.settings import SelectSettings, SolveConfig, parse_layers
from swe_cli.stages import base_cache
from swe_cli.stages.tune import TUNE_SALT, split_ids, validation_prompts
from swe_cli.workspace import Workspace

SELECT_FILE = "select.yaml"
HARMFUL, HARMLESS, BORDERLINE = "harmful", "harmless", "borderline"  # the validation cells
CELLS = (HARMFUL, HARMLESS, BORDERLINE)
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
    # plain harmless validation prompts refused: mean over the languages that have some (as the
    # gate reads eval's harmless refusals)
    harmless_refusal: float
    kl: float  # KL(base || this) on the plain harmless prompts, mean over languages; 0 for the base
    seconds: float
    # share of degenerate answers (empty, looping) to the harmful prompts, per language measured
    degenerate: dict[str, float] = field(default_factory=dict)
    # borderline benign requests refused, mean over languages (the gate's over-refusal rule);
    # None: the workspace has no borderline validation prompts
    over_refusal: float | None = None


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
    chosen: SolveConfig | None  # None: no candidate raised refusal (run_select then raises)
    base: Measure
    rows: tuple[Row, ...]
    fit_ids: tuple[str, ...]
    validation_ids: tuple[str, ...]
    prompts: dict[str, int] = field(default_factory=dict)  # validation prompts per set-language
    # the chosen candidate breaks the shipping gate's limits on the validation prompts (every
    # candidate does): one line, recorded so solve, apply and align repeat it
    warning: str | None = None
    # the smallest change of each gated rate the validation prompts can show (1/n)
    smallest_change: dict[str, float] = field(default_factory=dict)
    notes: tuple[str, ...] = ()  # validation too small to see a change of the gate's size
    base_cached: bool = False  # the unedited model's answers came from the cache


def run_select(
    workspace: Workspace,
    base: SolveConfig,
    settings: SelectSettings,
    limits: GateLimits,
    *,
    dtype: str = "auto",
    patterns: Sequence[Path] = (),
    progress: Progress | None = None,
    cache: Path | None = None,
) -> Selection:
    """Measure the unedited model and every candidate on the validation prompts and choose.
    cache: the folder keeping the unedited model's answers between runs (None: not kept)."""
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
    cells = validation_cells(workspace, [context.hrl, *context.langs], split.validation, settings)
    if not any(cells[HARMLESS].values()):
        raise SolveError(
            "no harmless prompt fell into the validation part of the fit split",
            hint="probe more harmless prompts or raise select.validation_fraction",
        )
    workspace.begin_stage("select")
    note = progress or (lambda _message: None)
    model, tokenizer = load_model(context.model_dir, device=base.device, dtype=dtype)
    judge = PatternJudge.from_files(patterns)
    key = _cache_key(context.model_dir, cells, settings, base.device, dtype)
    stored = _load_answers(cache, key, cells) if cache is not None else None
    meter = _Meter(
        model, tokenizer, judge, cells[HARMFUL], cells[HARMLESS], settings, cells[BORDERLINE]
    )
    meter.base_answers = stored
    note(
        "reading the unedited model's answers from the cache"
        if stored is not None
        else "measuring the unedited model on the validation prompts"
    )
    reference = meter.measure()
    if cache is not None and stored is None:
        base_cache.store(cache, key, {"stage": "select", "answers": meter.answered})
    rows = [measure_candidate(meter, data, config, reference, limits, note) for config in configs]
    try:
        chosen, warning = _choose(rows)
        failure = None
    except SolveError as error:
        chosen, warning, failure = None, None, error
    counts = {f"{cell}-{lang}": len(texts) for cell in CELLS for lang, texts in cells[cell].items()}
    changes = smallest_changes(counts)
    selection = Selection(
        chosen=chosen,
        base=reference,
        rows=tuple(rows),
        fit_ids=tuple(sort_ids(split.fit)),
        validation_ids=tuple(sort_ids(split.validation)),
        prompts=counts,
        warning=warning,
        smallest_change=changes,
        notes=_coarse(changes, counts, limits),
        base_cached=stored is not None,
    )
    _record(workspace, selection, settings, limits)
    if failure is not None:
        raise failure
    assert selection.chosen is not None
    return selection


def measure_candidate(
    meter: _Meter,
    data: TuneData,
    config: SolveConfig,
    reference: Measure,
    limits: GateLimits,
    note: Progress,
    *,
    full: bool = False,
) -> Row:
    """Solve one candidate on the tune-fit ids, measure it in memory and apply the gate's rules.
    full: measure every cell even when no target language gained (bench/select_agreement.py)."""
    context = data.context
    note(f"candidate {describe(config)}")
    start = time.perf_counter()
    try:
        changes = get_method(config.method).weight_changes(meter.model, data, config)
    except SolveError as error:
        return Row(config, None, -math.inf, (), time.perf_counter() - start, str(error))
    solve_seconds = time.perf_counter() - start
    try:
        measure = meter.measure(changes, reference, context.langs, full=full)
    except EvalError as error:  # e.g. non-finite logits: the candidate breaks the model
        return Row(config, None, -math.inf, (), solve_seconds, error.message)
    gain = _gain(reference.refusal, measure.refusal, context.langs)
    reasons = _broken(reference, measure, context.hrl, context.langs, limits)
    return Row(config, measure, gain, reasons, solve_seconds)


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


def validation_cells(
    workspace: Workspace, langs: Sequence[str], validation: frozenset[str], settings: SelectSettings
) -> dict[str, dict[str, list[str]]]:
    """The validation texts per cell (harmful, plain harmless, borderline) and language, at most
    settings.prompts each. Borderline requests are probed with the harmless prompts; the ids
    in WS/prompts/borderline.jsonl tell them apart."""
    from swe_cli.prompts import FIT, PromptSet

    border = borderline_ids(workspace)
    harmless = PromptSet.from_jsonl(workspace.prompts_dir / f"{HARMLESS}.jsonl", HARMLESS)

    def texts(lang: str, borderline: bool) -> list[str]:
        return [
            p.text
            for p in harmless.select(lang, FIT)
            if p.id in validation and (p.id in border) == borderline
        ]

    return {
        HARMFUL: _capped(
            validation_prompts(workspace, HARMFUL, langs, validation), settings.prompts
        ),
        HARMLESS: _capped({lang: texts(lang, False) for lang in langs}, settings.prompts),
        BORDERLINE: _capped({lang: texts(lang, True) for lang in langs}, settings.prompts),
    }


def borderline_ids(workspace: Workspace) -> frozenset[str]:
    """The ids of the borderline requests probe added to the harmless set (none without)."""
    from swe_cli.prompts import PromptSet

    path = workspace.prompts_dir / f"{BORDERLINE}.jsonl"
    if not path.is_file():
        return frozenset()
    return frozenset(PromptSet.from_jsonl(path, BORDERLINE).ids())


def smallest_changes(counts: dict[str, int]) -> dict[str, float]:
    """The smallest change each gated rate can show: 1/n for a language's harmful refusal; for
    the harmless and borderline refusals, means over L languages, 1/(L n) with n the largest
    language's count (one answer there changing its verdict)."""
    changes: dict[str, float] = {}
    for cell in CELLS:
        sizes = [n for name, n in counts.items() if name.startswith(f"{cell}-") and n]
        if cell == HARMFUL:
            changes.update(
                {name: 1 / n for name, n in counts.items() if name.startswith(f"{cell}-") and n}
            )
        elif sizes:
            changes[cell] = 1 / (len(sizes) * max(sizes))
    return changes


def _coarse(
    changes: dict[str, float], counts: dict[str, int], limits: GateLimits
) -> tuple[str, ...]:
    """A line for each refusal rate of the gate that one changed answer moves by more than the
    gate allows: select cannot tell a passing candidate from a failing one there."""
    notes = []
    for cell, label in ((HARMLESS, "harmless"), (BORDERLINE, "borderline")):
        step = changes.get(cell)
        if step is not None and step > limits.max_over_refusal + TOLERANCE:
            total = sum(n for name, n in counts.items() if name.startswith(f"{cell}-"))
            notes.append(
                f"{label} refusals: {total} validation prompts show changes of {step:.3f} at the "
                f"smallest, more than --max-over-refusal {limits.max_over_refusal}; probe more "
                "harmless prompts or borderline requests (--borderline builtin)"
            )
    return tuple(notes)


def _cache_key(
    model_dir: Path,
    cells: dict[str, dict[str, list[str]]],
    settings: SelectSettings,
    device: str,
    dtype: str,
) -> str:
    """The unedited model's answers depend on the model, the prompts and how it generates."""
    generation = {
        "stage": "select",
        "max_new_tokens": settings.max_new_tokens,
        "batch_size": settings.batch_size,
        "device": device,
        "dtype": dtype,
        "decoding": "greedy",
    }
    return base_cache.prompts_key(base_cache.model_key(Path(model_dir)), cells, generation)


def _load_answers(
    cache: Path, key: str, cells: dict[str, dict[str, list[str]]]
) -> dict[str, dict[str, list[str]]] | None:
    """The cached answers when they cover every prompt of every cell, else None."""
    stored = base_cache.load(cache, key)
    answers = stored.get("answers") if stored else None
    if not isinstance(answers, dict):
        return None
    for cell, by_lang in cells.items():
        for lang, texts in by_lang.items():
            found = (
                (answers.get(cell) or {}).get(lang) if isinstance(answers.get(cell), dict) else None
            )
            if not texts:
                continue
            if not isinstance(found, list) or len(found) != len(texts):
                return None
            if not all(isinstance(answer, str) for answer in found):
                return None
    return answers


class _Meter:
    """Short greedy answers judged by refusal patterns, and the harmless KL against the unedited
    weights (recomputed per batch with the candidate's blocks removed: no second model copy and
    no vocabulary-sized cache). base_answers: the unedited model's answers read from the cache
    (used when measuring without an edit); answered: the answers of the last measure()."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        judge: Any,
        harmful: dict[str, list[str]],
        harmless: dict[str, list[str]],
        settings: SelectSettings,
        borderline: dict[str, list[str]] | None = None,
    ) -> None:
        self.model, self.tokenizer, self.judge = model, tokenizer, judge
        self.harmful, self.harmless, self.settings = harmful, harmless, settings
        self.borderline = borderline or {}
        self.base_answers: dict[str, dict[str, list[str]]] | None = None
        self.answered: dict[str, dict[str, list[str]]] = {}
        self._unedited = False

    def measure(
        self,
        edited: Any = None,
        reference: Measure | None = None,
        targets: Sequence[str] = (),
        *,
        full: bool = False,
    ) -> Measure:
        """With a reference, the target languages are answered first, and a candidate that
        raises none of them is not measured further (it cannot be chosen): nan elsewhere,
        unless full."""
        import contextlib

        start = time.perf_counter()
        self._unedited, self.answered = edited is None, {}
        patch = patched(edited) if edited is not None else contextlib.nullcontext()
        refusal: dict[str, float] = {}
        degenerate: dict[str, float] = {}
        with patch:
            for lang in targets:
                refusal[lang] = self._refused(lang, self.harmful[lang], degenerate)
            if (
                reference is not None
                and not full
                and _gain(reference.refusal, refusal, targets) <= TOLERANCE
            ):
                rest = {lang: math.nan for lang in self.harmful if lang not in refusal}
                return Measure(
                    {**refusal, **rest},
                    math.nan,
                    math.nan,
                    time.perf_counter() - start,
                    degenerate,
                    None if not any(self.borderline.values()) else math.nan,
                )
            for lang, texts in self.harmful.items():
                if lang not in refusal:
                    refusal[lang] = self._refused(lang, texts, degenerate)
            harmless = self._mean_refused(self.harmless, HARMLESS)
            borderline = self._mean_refused(self.borderline, BORDERLINE)
        kl = 0.0 if edited is None else self._kl(edited)
        return Measure(
            refusal,
            math.nan if harmless is None else harmless,
            kl,
            time.perf_counter() - start,
            degenerate,
            borderline,
        )

    def _mean_refused(self, prompts: dict[str, list[str]], cell: str) -> float | None:
        """Mean over the languages that have prompts (a language without any counts for
        nothing); None when none has."""
        rates = [self._refused(lang, texts, cell=cell) for lang, texts in prompts.items() if texts]
        return sum(rates) / len(rates) if rates else None

    def _refused(
        self,
        lang: str,
        texts: list[str],
        degenerate: dict[str, float] | None = None,
        cell: str = HARMFUL,
    ) -> float:
        """Share of `texts` refused; with `degenerate`, its share of degenerate answers too."""
        from swe_cli.judges import DEGENERATE as DEGENERATE_VERDICT

        answers = self._answers(cell, lang, texts)
        verdicts = self.judge.judge(list(texts), answers, lang) if texts else []
        if degenerate is not None and verdicts:
            degenerate[lang] = verdicts.count(DEGENERATE_VERDICT) / len(verdicts)
        return refusal_rate(verdicts)

    def _answers(self, cell: str, lang: str, texts: list[str]) -> list[str]:
        from swe_cli.models import generate

        cached = (self.base_answers or {}).get(cell, {}).get(lang) if self._unedited else None
        if cached is not None and len(cached) == len(texts):
            answers = list(cached)
        elif texts:
            answers = generate(
                self.model,
                self.tokenizer,
                list(texts),
                max_new_tokens=self.settings.max_new_tokens,
                batch_size=self.settings.batch_size,
            )
        else:
            answers = []
        self.answered.setdefault(cell, {})[lang] = answers
        return answers

    def _kl(self, edited: Any) -> float:
        """Per language, then the mean over languages (as eval's KL reaches the gate)."""

        def logits(input_ids: Any, mask: Any) -> tuple[Any, Any]:
            base = logits_of(self.model, input_ids, mask)
            with patched(edited):
                return base, logits_of(self.model, input_ids, mask)

        values = [
            paired_kl(logits, self.tokenizer, texts, batch_size=self.settings.batch_size)
            for texts in self.harmless.values()
            if texts
        ]
        return sum(values) / len(values)


def _broken(
    base: Measure, measure: Measure, hrl: str, langs: Sequence[str], limits: GateLimits
) -> tuple[str, ...]:
    """The shipping gate's rules (gate.broken) on validation measures, worded in refusal."""
    breaches = broken(_outcome(base), _outcome(measure), hrl, langs, limits)
    return tuple(_reason(breach, base, measure, limits) for breach in breaches)


def _outcome(measure: Measure) -> Outcome:
    """What the gate reads: the share of harmful prompts not refused, harmless refusals, the
    borderline refusals as its over-refusal, KL."""
    return Outcome(
        harm={lang: 1.0 - rate for lang, rate in measure.refusal.items()},
        over_refusal=measure.over_refusal,
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
    if breach.rule == OVER_REFUSAL:
        return (
            f"borderline refusals rose {float(base.over_refusal):.2f} -> "
            f"{float(measure.over_refusal):.2f}"
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


def _choose(rows: Sequence[Row]) -> tuple[SolveConfig, str | None]:
    """The admissible candidate with the largest gain (the lower KL on ties), no warning. When
    every candidate that raised refusal breaks a limit, the one with the largest gain, and a
    warning line naming what it breaks: `swe align --eval` stops on it before eval."""
    raised = [
        row
        for row in rows
        if row.measure is not None and not math.isnan(row.measure.kl) and row.gain > TOLERANCE
    ]
    if not raised:
        best = max(rows, key=lambda row: row.gain)
        why = best.error or "; ".join(best.reasons) or "it raised no target language's refusal"
        raise SolveError(
            f"no candidate raised refusal on the validation prompts (best, "
            f"{describe(best.config)}: {why})",
            hint="see WS/edit/select.yaml; try other select.candidates",
        )
    admissible = [row for row in raised if not row.reasons]
    pool = admissible or raised
    chosen = max(pool, key=lambda row: (row.gain, -row.measure.kl))  # type: ignore[union-attr]
    if admissible:
        return chosen.config, None
    return chosen.config, (
        f"every candidate breaks the shipping gate's limits on the validation prompts; the "
        f"chosen {describe(chosen.config)} (largest refusal gain): {'; '.join(chosen.reasons)}"
    )


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
        **(
            {}
            if measure.over_refusal is None
            else {"borderline_refusal": number(measure.over_refusal, 4)}
        ),
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
        "warning": selection.warning,
        # n per cell, and the smallest change of each gated rate those n can show
        "prompts": selection.prompts,
        "smallest_change": {
            key: round(value, 4) for key, value in selection.smallest_change.items()
        },
        "notes": list(selection.notes),
        "unedited": {**_measure_row(selection.base), "cached": selection.base_cached},
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
            "warning": selection.warning,
        },
        status="done" if chosen is not None else "failed",
    )


def selection_warning(workspace: Workspace, config: SolveConfig | dict[str, Any]) -> str | None:
    """The warning the workspace's last finished `swe select` recorded about its choice, when
    `config` (a SolveConfig or its plain form, as solve records it) is that choice."""
    record = workspace.manifest().stage("select")
    if not record or not record.done or not record.outputs.get("warning"):
        return None
    plain = config.plain() if isinstance(config, SolveConfig) else dict(config)
    if plain.get("method") == AUTO:  # solves the choice, whatever it is
        return str(record.outputs["warning"])
    chosen = dict(record.outputs.get("config") or {})
    for values in (plain, chosen):
        values.pop("device", None)
        values["layers"] = list(parse_layers(values.get("layers")) or ())
    return str(record.outputs["warning"]) if plain == chosen else None


def solved_warning(workspace: Workspace) -> str | None:
    """selection_warning for the edit the workspace's last finished solve wrote."""
    record = workspace.manifest().stage("solve")
    if not record or not record.done:
        return None
    return selection_warning(workspace, record.params)


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
    """A rich Table: the unedited model, then every candidate; the choice is marked. Each column
    names its n (validation prompts per language; summed over languages for the harmless and
    borderline rates, which are means over languages). Narrow enough for an 80-column terminal
    with three target languages."""
    from rich.table import Table

    seconds = selection.base.seconds + sum(
        row.solve_seconds + (row.measure.seconds if row.measure else 0.0) for row in selection.rows
    )
    counts = selection.prompts
    borderline = selection.base.over_refusal is not None

    def total(cell: str) -> int:
        return sum(n for name, n in counts.items() if name.startswith(f"{cell}-"))

    steps = ", ".join(
        f"{name} {selection.smallest_change[key]:.3f}"
        for key, name in ((HARMLESS, "harmless"), (BORDERLINE, "borderline"))
        if key in selection.smallest_change
    )
    table = Table(
        title=f"select: {len(selection.rows)} candidates on validation prompts of the fit split",
        caption=f"choice (*): {describe(selection.chosen)} ({seconds:.0f} s). Share of harmful "
        "prompts refused per language (higher is better), harmless and borderline prompts "
        "refused (mean over languages), KL; n: validation prompts; smallest visible change: 1/n "
        f"per language, {steps}; broken: the gate's limits a candidate breaks on them "
        "(select.yaml says how); '-': not measured, no target language gained",
    )
    table.add_column("candidate", min_width=14, overflow="fold")
    columns = [f"{lang}\nn={counts.get(f'{HARMFUL}-{lang}', 0)}" for lang in [*langs, hrl]]
    columns.append(f"harm-\nless\nn={total(HARMLESS)}")
    if borderline:
        columns.append(f"bord-\nerline\nn={total(BORDERLINE)}")
    for column in [*columns, "KL", "gain"]:
        table.add_column(column, justify="right")
    table.add_column("broken", overflow="fold")

    def cells(measure: Measure) -> list[str]:
        rates = [measure.harmless_refusal]
        if borderline:
            rates.append(math.nan if measure.over_refusal is None else measure.over_refusal)
        return [
            *(_rate(measure.refusal[lang]) for lang in [*langs, hrl]),
            *(_rate(rate) for rate in rates),
            "-" if math.isnan(measure.kl) else f"{measure.kl:.3f}",
        ]

    table.add_row("unedited", *cells(selection.base), "", "")
    for row in selection.rows:
        name = describe(row.config)
        if row.measure is None:
            table.add_row(name, *["-"] * (len(columns) + 2), f"failed: {row.error}")
            continue
        mark = row.config == selection.chosen
        table.add_row(
            f"* {name}" if mark else name,
            *cells(row.measure),
            f"{row.gain:+.2f}",
            ", ".join(reason.split()[0] for reason in row.reasons) or "-",
            style=("bold green" if not selection.warning else "bold yellow") if mark else None,
        )
    return table
