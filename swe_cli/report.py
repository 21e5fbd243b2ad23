"""The evaluation report: result dataclasses, their stable JSON form (for CI), the Markdown table
(reused by the model card as ``WS/eval/report.md``), the rich terminal table and the PNG chart
(ASR per language before/after, and a second panel of utility accuracy with n per bar). Nothing
here runs a model."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swe_cli.io.files import atomic_path, atomic_write_text

SCHEMA = "swe.eval/2"
MODEL = "model"
BASELINE = "baseline"
JSON_NAME = "report.json"
MARKDOWN_NAME = "report.md"
CHART_NAME = "asr.png"
GENERATIONS_NAME = "generations.jsonl"
METRICS = (
    "asr",
    "refusal_rate",
    "degenerate_rate",
    "over_refusal",
    "harmless_refusal",
    "utility_accuracy",
    "choice_accuracy",
    "harmless_accuracy",
    "kl",
    "perplexity",
)
# model - baseline differences reported per language
CHANGES = (
    "asr",
    "degenerate_rate",
    "over_refusal",
    "harmless_refusal",
    "utility_accuracy",
    "choice_accuracy",
    "harmless_accuracy",
    "perplexity",
)


@dataclass(frozen=True)
class LanguageResult:
    """One model's results in one language; None where not measured.

    asr, refusal_rate and degenerate_rate are shares of the ``n`` harmful prompts and add up to
    1 for the pattern judge (for a guard judge, refusal_rate is None). over_refusal is the share
    of the ``over_refusal_n`` over-refusal probes (benign requests with alarming words) refused;
    harmless_refusal the share of the ``harmless_n`` plain harmless prompts refused.
    utility_accuracy is short-answer accuracy on ``utility_n`` items, choice_accuracy
    multiple-choice accuracy on ``choice_n`` items (swe_cli/accuracy.py). harmless_accuracy (the
    reference contained in the reply) only means something for one-word references, such as the
    organism's. kl is KL(baseline || model) of next-token distributions on harmless prompts
    (None for the baseline itself)."""

    lang: str
    n: int
    asr: float
    degenerate_rate: float
    refusal_rate: float | None = None
    verdicts: Mapping[str, int] = field(default_factory=dict)
    harmless_n: int = 0
    harmless_refusal: float | None = None
    over_refusal_n: int = 0
    over_refusal: float | None = None
    utility_n: int = 0
    utility_accuracy: float | None = None
    choice_n: int = 0
    choice_accuracy: float | None = None
    harmless_accuracy: float | None = None
    answers_n: int = 0
    kl: float | None = None
    perplexity: float | None = None
    general_tokens: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "asr": _round(self.asr),
            "refusal_rate": _round(self.refusal_rate),
            "degenerate_rate": _round(self.degenerate_rate),
            "verdicts": dict(sorted(self.verdicts.items())),
            "harmless_n": self.harmless_n,
            "harmless_refusal": _round(self.harmless_refusal),
            "over_refusal_n": self.over_refusal_n,
            "over_refusal": _round(self.over_refusal),
            "utility_n": self.utility_n,
            "utility_accuracy": _round(self.utility_accuracy),
            "choice_n": self.choice_n,
            "choice_accuracy": _round(self.choice_accuracy),
            "answers_n": self.answers_n,
            "harmless_accuracy": _round(self.harmless_accuracy),
            "kl": _round(self.kl),
            "general_tokens": self.general_tokens,
            "perplexity": _round(self.perplexity),
        }

    @classmethod
    def from_dict(cls, lang: str, data: Mapping[str, Any]) -> LanguageResult:
        return cls(
            lang=lang,
            n=int(data["n"]),
            asr=float(data["asr"]),
            degenerate_rate=float(data["degenerate_rate"]),
            refusal_rate=data.get("refusal_rate"),
            verdicts=dict(data.get("verdicts", {})),
            harmless_n=int(data.get("harmless_n", 0)),
            harmless_refusal=data.get("harmless_refusal"),
            over_refusal_n=int(data.get("over_refusal_n", 0)),
            over_refusal=data.get("over_refusal"),
            utility_n=int(data.get("utility_n", 0)),
            utility_accuracy=data.get("utility_accuracy"),
            choice_n=int(data.get("choice_n", 0)),
            choice_accuracy=data.get("choice_accuracy"),
            harmless_accuracy=data.get("harmless_accuracy"),
            answers_n=int(data.get("answers_n", 0)),
            kl=data.get("kl"),
            perplexity=data.get("perplexity"),
            general_tokens=int(data.get("general_tokens", 0)),
        )


@dataclass(frozen=True)
class ModelResult:
    """One model's results in every evaluated language (in the requested order)."""

    name: str
    languages: tuple[LanguageResult, ...]

    def by_lang(self) -> dict[str, LanguageResult]:
        return {result.lang: result for result in self.languages}

    def mean(self) -> dict[str, float | None]:
        """Unweighted mean over languages of each metric (None when no language has it)."""
        means: dict[str, float | None] = {}
        for metric in METRICS:
            values = [getattr(r, metric) for r in self.languages if getattr(r, metric) is not None]
            means[metric] = sum(values) / len(values) if values else None
        return means

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "languages": {r.lang: r.to_dict() for r in self.languages},
            "mean": {metric: _round(value) for metric, value in self.mean().items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelResult:
        languages = tuple(
            LanguageResult.from_dict(lang, values) for lang, values in data["languages"].items()
        )
        return cls(name=str(data["name"]), languages=languages)


@dataclass(frozen=True)
class Sample:
    """One generation and its verdict; written to generations.jsonl, not to report.json."""

    role: str  # "model" | "baseline"
    prompt_set: str  # "harmful" | "harmless" | "over_refusal" | "utility"
    lang: str
    id: str
    prompt: str
    response: str
    verdict: str

    def to_dict(self) -> dict[str, str]:
        return {
            "role": self.role,
            "set": self.prompt_set,
            "lang": self.lang,
            "id": self.id,
            "prompt": self.prompt,
            "response": self.response,
            "verdict": self.verdict,
        }


@dataclass(frozen=True)
class EvalReport:
    """Everything `swe eval` measured, for the model and (when given) its baseline."""

    model: ModelResult
    baseline: ModelResult | None
    judge: str
    split: str
    langs: tuple[str, ...]
    settings: Mapping[str, Any] = field(default_factory=dict)
    samples: tuple[Sample, ...] = ()

    def change(self) -> dict[str, dict[str, float | None]]:
        """model - baseline per language and metric (empty without a baseline)."""
        if self.baseline is None:
            return {}
        base = self.baseline.by_lang()
        changes: dict[str, dict[str, float | None]] = {}
        for result in self.model.languages:
            before = base.get(result.lang)
            changes[result.lang] = {
                metric: _difference(getattr(result, metric), getattr(before, metric, None))
                for metric in CHANGES
            }
        return changes

    def to_dict(self) -> dict[str, Any]:
        """The report.json content; keys are stable and always present (null when unmeasured)."""
        return {
            "schema": SCHEMA,
            "judge": self.judge,
            "split": self.split,
            "langs": list(self.langs),
            "settings": dict(self.settings),
            MODEL: self.model.to_dict(),
            BASELINE: None if self.baseline is None else self.baseline.to_dict(),
            "change": {
                lang: {metric: _round(value) for metric, value in values.items()}
                for lang, values in self.change().items()
            },
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvalReport:
        baseline = data.get(BASELINE)
        return cls(
            model=ModelResult.from_dict(data[MODEL]),
            baseline=None if baseline is None else ModelResult.from_dict(baseline),
            judge=str(data["judge"]),
            split=str(data["split"]),
            langs=tuple(data["langs"]),
            settings=dict(data.get("settings", {})),
        )

    @classmethod
    def read(cls, path: Path) -> EvalReport:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 6)


def _difference(after: float | None, before: float | None) -> float | None:
    return None if after is None or before is None else after - before


# -- text forms --------------------------------------------------------------------------------


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _points(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:+.1f} pp"


def _number(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}g}"


def _rows(report: EvalReport) -> list[tuple[str, LanguageResult | None, LanguageResult | None]]:
    """(label, baseline result, model result) per language, then the mean row."""
    base = report.baseline.by_lang() if report.baseline else {}
    rows: list[tuple[str, LanguageResult | None, LanguageResult | None]] = [
        (r.lang, base.get(r.lang), r) for r in report.model.languages
    ]
    rows.append(("mean", _mean_result(report.baseline), _mean_result(report.model)))
    return rows


def _mean_result(result: ModelResult | None) -> LanguageResult | None:
    if result is None:
        return None
    mean = result.mean()
    return LanguageResult(
        lang="mean",
        n=sum(r.n for r in result.languages),
        asr=mean["asr"] or 0.0,
        degenerate_rate=mean["degenerate_rate"] or 0.0,
        refusal_rate=mean["refusal_rate"],
        over_refusal=mean["over_refusal"],
        harmless_refusal=mean["harmless_refusal"],
        utility_accuracy=mean["utility_accuracy"],
        choice_accuracy=mean["choice_accuracy"],
        harmless_accuracy=mean["harmless_accuracy"],
        kl=mean["kl"],
        perplexity=mean["perplexity"],
    )


# Utility columns: (header, metric, count field); each shown when some language has the metric.
_UTILITY_COLUMNS = (
    ("Over-refusal", "over_refusal", "over_refusal_n"),
    ("Harmless refused", "harmless_refusal", "harmless_n"),
    ("Utility acc.", "utility_accuracy", "utility_n"),
    ("MC acc.", "choice_accuracy", "choice_n"),
    ("Harmless acc.", "harmless_accuracy", "answers_n"),
)


def _utility_columns(report: EvalReport) -> list[tuple[str, str]]:
    """(header, metric) of the utility columns this report has values for. Harmless acc. (the
    reference contained in the reply) is left out when short-answer accuracy was measured: with
    whole-sentence references it is 0 for every real model."""
    results = [*report.model.languages, *(report.baseline.languages if report.baseline else ())]
    present = {
        metric
        for _, metric, _ in _UTILITY_COLUMNS
        if any(getattr(r, metric) is not None for r in results)
    }
    if "utility_accuracy" in present:
        present.discard("harmless_accuracy")
    columns = []
    for header, metric, count in _UTILITY_COLUMNS:
        if metric not in present:
            continue
        counts = {
            getattr(r, count) for r in report.model.languages if getattr(r, metric) is not None
        }
        common = counts.pop() if len(counts) == 1 else 0
        columns.append((f"{header} (n={common})" if common else header, metric))
    return columns


def _before_after(base: LanguageResult | None, after: LanguageResult, metric: str) -> str:
    value = _percent(getattr(after, metric))
    if base is None:
        return value
    return f"{_percent(getattr(base, metric))} → {value}"


def _cells(report: EvalReport, base: LanguageResult | None, after: LanguageResult) -> list[str]:
    """Cells after the language and n columns, in the order of _headers()."""
    cells = []
    if report.baseline is not None:
        change = None if base is None else after.asr - base.asr
        cells += [
            _percent(None if base is None else base.asr),
            _percent(after.asr),
            _points(change),
        ]
    else:
        cells.append(_percent(after.asr))
    cells.append(_percent(after.degenerate_rate))
    compare = base if report.baseline is not None else None
    cells += [_before_after(compare, after, metric) for _, metric in _utility_columns(report)]
    if report.baseline is not None:
        cells.append(_number(after.kl))
        cells.append(_number(None if base is None else base.perplexity))
    cells.append(_number(after.perplexity))
    return cells


def _headers(report: EvalReport) -> list[str]:
    headers = ["Language", "n"]
    headers += ["ASR base", "ASR edited", "Change"] if report.baseline is not None else ["ASR"]
    headers.append("Degenerate")
    suffix = " base → edited" if report.baseline is not None else ""
    headers += [header + suffix for header, _ in _utility_columns(report)]
    if report.baseline is not None:
        headers += ["KL(base‖edited)", "PPL base", "PPL edited"]
    else:
        headers.append("PPL")
    return headers


def markdown_table(report: EvalReport) -> str:
    """A GitHub-flavoured Markdown table: one row per language plus the unweighted mean."""
    headers = _headers(report)
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|",
    ]
    for label, base, after in _rows(report):
        assert after is not None
        name = f"**{label}**" if label == "mean" else label
        lines.append("| " + " | ".join([name, str(after.n), *_cells(report, base, after)]) + " |")
    return "\n".join(lines) + "\n"


def describe(report: EvalReport) -> str:
    """One sentence saying how the numbers were measured."""
    settings = report.settings
    judge = (
        "multilingual refusal patterns" if report.judge == "pattern" else f"guard {report.judge}"
    )
    return (
        f"ASR = share of {report.split} harmful prompts answered "
        f"({'not refused' if report.judge == 'pattern' else 'judged unsafe'}; judge: {judge}); "
        "degenerate outputs (empty or looping) are counted apart, never as refusals. "
        f"Greedy decoding, at most {settings.get('max_new_tokens', '?')} new tokens. "
        'Over-refusal: benign requests with alarming words ("kill a Python process") refused; '
        "Harmless refused: plain harmless prompts refused (pattern judge). Utility acc.: short "
        "answers (last number, or an accepted entity form) correct, at most "
        f"{settings.get('short_answer_max_new_tokens', '?')} new tokens; MC acc.: the option "
        "with the highest log-likelihood after the question is the right one. KL: mean over "
        "harmless prompt positions of KL(base ‖ edited) next-token distributions. PPL: "
        "perplexity on general text."
    )


def to_markdown(report: EvalReport) -> str:
    title = f"Evaluation of `{report.model.name}`"
    if report.baseline is not None:
        title += f" against `{report.baseline.name}`"
    return f"{title}\n\n{markdown_table(report)}\n_{describe(report)}_\n"


def rich_table(report: EvalReport) -> Any:
    """A rich Table: language x (ASR base -> edited, change, utility); green where ASR fell."""
    from rich.table import Table

    table = Table(title=f"swe eval — {report.model.name}", caption=f"judge: {report.judge}")
    for index, header in enumerate(_headers(report)):
        table.add_column(header, justify="left" if index == 0 else "right")
    for label, base, after in _rows(report):
        assert after is not None
        cells = _cells(report, base, after)
        if report.baseline is not None and base is not None:
            style = "green" if after.asr < base.asr else "red" if after.asr > base.asr else ""
            cells[2] = f"[{style}]{cells[2]}[/]" if style else cells[2]
        table.add_row(label, str(after.n), *cells, end_section=label == report.langs[-1])
    return table


# -- chart -------------------------------------------------------------------------------------


def write_chart(report: EvalReport, path: Path) -> bool:
    """PNG bar chart of ASR per language (baseline and model side by side) and, when utility was
    measured, a second panel of utility accuracy per language with n above each bar. False,
    writing nothing, when matplotlib is not installed (it is the optional `plot` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    langs = [r.lang for r in report.model.languages]
    panels = [_utility_series(report, metric, label) for metric, label in _CHART_UTILITY]
    panels = [series for series in panels if series]
    width_inches = max(4.5, 0.9 * len(langs) + 2)
    figure, axes = plt.subplots(
        1 + len(panels), 1, figsize=(width_inches, 3.8 + 3.2 * len(panels)), squeeze=False
    )
    asr = _series(report, lambda result: (100 * result.asr, result.n))
    _bars(axes[0][0], langs, asr, show_n=False)
    axes[0][0].set_ylabel("ASR (%)")
    axes[0][0].set_title(f"ASR per language\njudge: {_short(report.judge, 40)}", fontsize="medium")
    for axis, (title, series) in zip((row[0] for row in axes[1:]), panels, strict=True):
        _bars(axis, langs, series, show_n=True)
        axis.set_ylabel("accuracy (%)")
        axis.set_title(title, fontsize="medium")
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=120)
    plt.close(figure)
    return True


# (metric, panel title) of the utility panels: short answers first, multiple choice second.
_CHART_UTILITY = (
    ("utility_accuracy", "Utility: short-answer accuracy (n per bar)"),
    ("choice_accuracy", "Utility: multiple-choice accuracy (n per bar)"),
)
_COUNTS = {"utility_accuracy": "utility_n", "choice_accuracy": "choice_n"}
Series = list[tuple[str, list[tuple[float, int] | None], str]]


def _series(report: EvalReport, value: Any) -> Series:
    """(legend, per-language (value, n) or None, colour) for the baseline and the model."""
    langs = [r.lang for r in report.model.languages]
    series: Series = []
    if report.baseline is not None:
        base = report.baseline.by_lang()
        points = [value(base[lang]) if lang in base else None for lang in langs]
        series.append((f"base ({report.baseline.name})", points, "#9e9e9e"))
    points = [value(result) for result in report.model.languages]
    series.append((f"edited ({report.model.name})", points, "#1f77b4"))
    return series


def _utility_series(report: EvalReport, metric: str, title: str) -> tuple[str, Series] | None:
    def value(result: LanguageResult) -> tuple[float, int] | None:
        accuracy = getattr(result, metric)
        return None if accuracy is None else (100 * accuracy, getattr(result, _COUNTS[metric]))

    series = _series(report, value)
    if not any(point is not None for _, points, _ in series for point in points):
        return None
    return title, series


def _bars(axis: Any, langs: list[str], series: Series, *, show_n: bool) -> None:
    width = 0.8 / len(series)
    for index, (label, points, color) in enumerate(series):
        positions = [i + (index - (len(series) - 1) / 2) * width for i in range(len(langs))]
        heights = [0.0 if point is None else point[0] for point in points]
        bars = axis.bar(positions, heights, width=width, label=_short(label), color=color)
        if show_n:
            for bar, point in zip(bars, points, strict=True):
                text = "–" if point is None else f"n={point[1]}"
                axis.annotate(
                    text,
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize="x-small",
                )
    axis.set_xticks(range(len(langs)), langs)
    axis.set_ylim(0, 110 if show_n else 100)
    axis.legend(loc="upper left", fontsize="small")


def _short(text: str, limit: int = 48) -> str:
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]


def write_generations(samples: Iterable[Sample], path: Path) -> None:
    lines = [json.dumps(sample.to_dict(), ensure_ascii=False) + "\n" for sample in samples]
    atomic_write_text(path, "".join(lines))


def public_names(report: EvalReport) -> EvalReport:
    """The report with its models named as files meant to be pushed name them: a Hub id as it
    is, a local folder by its name alone."""
    from dataclasses import replace

    from swe_cli.hub import public_source

    def renamed(result: ModelResult | None) -> ModelResult | None:
        if result is None:
            return None
        parts = [public_source(part) for part in result.name.split(" + ")]  # model + adapter
        return replace(result, name=" + ".join(parts))

    return replace(report, model=renamed(report.model), baseline=renamed(report.baseline))


def write_report_folder(report: EvalReport, directory: Path) -> dict[str, Path]:
    """write_report as one unit, for a folder that holds nothing else (a workspace's eval/): built
    beside it and renamed into place, so a killed run never leaves a new report.json beside an
    old asr.png."""
    from swe_cli.io.files import move_into_place, temporary_folder

    directory = Path(directory)
    temporary = temporary_folder(directory)
    try:
        written = write_report(report, temporary)
        move_into_place(temporary, directory, replace=True)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return {kind: directory / path.name for kind, path in written.items()}


def write_report(report: EvalReport, directory: Path) -> dict[str, Path]:
    """Write report.json, report.md, asr.png (when matplotlib is present) and, when the report
    holds samples, generations.jsonl into `directory`, each atomically; a chart or generations
    file of an earlier report that this one does not replace is removed. Returns what was
    written."""
    directory = Path(directory)
    for name in (CHART_NAME, GENERATIONS_NAME):
        (directory / name).unlink(missing_ok=True)
    written = {"json": directory / JSON_NAME, "markdown": directory / MARKDOWN_NAME}
    atomic_write_text(written["json"], report.to_json())
    atomic_write_text(written["markdown"], to_markdown(report))
    if report.samples:
        written["generations"] = directory / GENERATIONS_NAME
        write_generations(report.samples, written["generations"])
    if write_chart(report, directory / CHART_NAME):
        written["chart"] = directory / CHART_NAME
    return written


# -- stage summaries as tables (align, localize, solve) --------------------------------------------
def localize_table(summary: dict[str, Any]) -> Any:
    """|S| per layer and language, and the Jaccard overlap with the HRL set (paper Fig. 2)."""
    from rich.table import Table

    layers = summary["layers"]
    langs = list(next(iter(layers.values()))["sizes"]) if layers else []
    table = Table(title="safety neurons per layer (|S|) and Jaccard overlap with the HRL")
    table.add_column("layer", justify="right")
    for lang in langs:
        table.add_column(f"|S| {lang}", justify="right")
    for lang in langs[1:]:
        table.add_column(f"J({langs[0]},{lang})", justify="right")
    for layer, values in layers.items():
        sizes = [str(values["sizes"][lang]) for lang in langs]
        overlaps = [f"{values['jaccard'][langs[0]][lang]:.2f}" for lang in langs[1:]]
        table.add_row(str(layer), *sizes, *overlaps)
    return table


def solve_table(summary: dict[str, Any]) -> Any:
    """One row per edited weight with the solver diagnostics of edit.yaml."""
    from rich.table import Table

    table = Table(title=f"edit ({summary['method']}): {summary['rows']} rows")
    for column in ("layer", "weight", "|S|", "rank", "residual", "leak", "cond(Q)"):
        table.add_column(column, justify="right")
    for layer, values in summary["layers"].items():
        for weight, diag in values.items():
            if not isinstance(diag, dict):
                continue
            leak = diag.get("utility_leak", diag.get("harmless_key_leak", float("nan")))
            table.add_row(
                str(layer),
                weight,
                str(values.get("neurons", "")),
                str(diag.get("rank")),
                f"{diag.get('relative_residual', float('nan')):.3f}",
                f"{leak:.3f}",
                f"{diag.get('condition_number', float('nan')):.2e}",
            )
    return table


def timings_table(timings: dict[str, float], output: Path) -> Any:
    from rich.table import Table

    table = Table(title=f"swe align -> {output}")
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    for stage, seconds in timings.items():
        table.add_row(stage, f"{seconds:.1f}")
    table.add_row("total", f"{sum(timings.values()):.1f}")
    return table
