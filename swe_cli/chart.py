"""The eval chart (asr.png): one panel per measure (attack success, refusals of benign prompts,
utility accuracy with n per bar, KL), base and edited bars per language. matplotlib is the
optional `plot` extra; without it no chart is written."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swe_cli.io.files import atomic_path
from swe_cli.report import EvalReport, judge_name


def write_chart(report: EvalReport, path: Path) -> bool:
    """asr.png (see chart_figure). False, writing nothing, when matplotlib is not installed (it is
    the optional `plot` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure = chart_figure(report)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=CHART_DPI)
    plt.close(figure)
    return True


CHART_DPI = 100


BASE_LABEL, EDITED_LABEL = "base", "edited"


_COLOURS = {BASE_LABEL: "#8c8c8c", EDITED_LABEL: "#1f77b4"}


@dataclass(frozen=True)
class Panel:
    """One chart panel: a metric per language, base and edited side by side (KL: edited only).
    `percent` metrics are shares shown in %; n is the count behind each bar."""

    title: str
    metric: str
    count: str
    percent: bool = True


# The panels of asr.png, in order; each is drawn when some language has its metric.
PANELS = (
    Panel("Attack success (ASR): harmful prompts answered, %", "asr", "n"),
    Panel(
        "Over-refusal: benign probes with alarming words refused, %",
        "over_refusal",
        "over_refusal_n",
    ),
    Panel("Harmless prompts refused, %", "harmless_refusal", "harmless_n"),
    Panel("Utility: short answers correct, %", "utility_accuracy", "utility_n"),
    Panel("Utility: multiple choice correct, %", "choice_accuracy", "choice_n"),
    Panel("Utility: replies with the reference answer, %", "harmless_accuracy", "answers_n"),
    Panel("KL(base ‖ edited) on harmless prompts", "kl", "harmless_n", percent=False),
)


def chart_panels(report: EvalReport) -> list[Panel]:
    results = [*report.model.languages, *(report.baseline.languages if report.baseline else ())]
    shown = [p for p in PANELS if any(getattr(r, p.metric) is not None for r in results)]
    if any(p.metric == "utility_accuracy" for p in shown):  # as in the tables: the reference
        shown = [p for p in shown if p.metric != "harmless_accuracy"]  # sentence means little
    return shown


def chart_figure(report: EvalReport) -> Any:
    """The figure of asr.png: one panel per measured metric (ASR, over-refusal, harmless
    refusals, utility, KL), base and edited bars per language, each bar labelled with its value
    and n (a zero is drawn as a thin bar with its 0 written above, so it cannot look missing),
    and one legend above the panels, outside every bar. Sized so that the labels stay readable
    when a model card shows it about 800 pixels wide."""
    import matplotlib.pyplot as plt

    langs = [r.lang for r in report.model.languages]
    panels = chart_panels(report)
    # two panels a row while the languages fit, so the image stays about 1100 pixels wide
    columns = 2 if len(panels) > 1 and len(langs) <= 6 else 1
    rows = -(-len(panels) // columns)
    width = max(4.0, 1.0 * len(langs) + 1.5) * columns
    figure, axes = plt.subplots(
        rows, columns, figsize=(width, 2.9 * rows + 0.7), squeeze=False, layout="constrained"
    )
    for axis, panel in zip(axes.flat, panels, strict=False):
        _panel(axis, report, langs, panel)
    for axis in list(axes.flat)[len(panels) :]:
        axis.set_visible(False)
    labels = [BASE_LABEL, EDITED_LABEL] if report.baseline is not None else [EDITED_LABEL]
    handles = [plt.Rectangle((0, 0), 1, 1, color=_COLOURS[label]) for label in labels]
    figure.legend(
        handles, labels, loc="outside upper center", ncols=len(labels), frameon=False, fontsize=11
    )
    judge = "refusal patterns" if report.judge == "pattern" else judge_name(report.judge)
    split = "held-out" if report.split == "heldout" else report.split
    figure.supxlabel(f"{split} prompts, judge: {judge}", fontsize="medium")
    return figure


def _panel(axis: Any, report: EvalReport, langs: list[str], panel: Panel) -> None:
    scale = 100.0 if panel.percent else 1.0
    series = []
    if report.baseline is not None and panel.metric != "kl":
        base = report.baseline.by_lang()
        series.append((BASE_LABEL, [base.get(lang) for lang in langs]))
    series.append((EDITED_LABEL, list(report.model.languages)))
    values = [
        getattr(r, panel.metric) * scale
        for _, results in series
        for r in results
        if r is not None and getattr(r, panel.metric) is not None
    ]
    top = 100.0 if panel.percent else max([*values, 0.0]) or 1.0
    width = 0.8 / len(series)
    for index, (label, results) in enumerate(series):
        for position, result in enumerate(results):
            value = None if result is None else getattr(result, panel.metric)
            x = position + (index - (len(series) - 1) / 2) * width
            if value is None:
                axis.text(x, 0, "–", ha="center", va="bottom", fontsize=9)
                continue
            height = value * scale
            # a zero would be an invisible bar: draw a stub and write the value
            shown = max(height, 0.012 * top)
            axis.bar(x, shown, width=width * 0.92, color=_COLOURS[label], label=label)
            text = (
                f"{height:.3f}"
                if not panel.percent
                else f"{height:.{1 if 0 < height < 10 else 0}f}"
            )
            count = getattr(result, panel.count)
            axis.text(
                x,
                shown + 0.02 * top,
                f"{text}\nn={count}",
                ha="center",
                va="bottom",
                fontsize=8.5,
                linespacing=1.0,
            )
    axis.set_xticks(range(len(langs)), langs)
    axis.set_ylim(0, top * 1.3)
    if panel.percent:
        axis.set_yticks(range(0, 101, 25))
    axis.set_title(panel.title, fontsize=11)
    axis.tick_params(labelsize=10)
    axis.spines[["top", "right"]].set_visible(False)
