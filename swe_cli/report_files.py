"""An eval report's files: report.json, report.md, asr.png (swe_cli/chart.py) and
generations.jsonl, written atomically into a folder or as one unit, and the report with its
models named as files meant to be pushed name them."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path

from swe_cli.chart import write_chart
from swe_cli.io.files import atomic_write_text
from swe_cli.report import (
    CHART_NAME,
    GENERATIONS_NAME,
    JSON_NAME,
    MARKDOWN_NAME,
    EvalReport,
    ModelResult,
    Sample,
    to_markdown,
)


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
