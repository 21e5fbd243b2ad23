"""Report files, JSON keys, Markdown and rich tables from hand-made results."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from swe_cli.report import (
    EvalReport,
    LanguageResult,
    ModelResult,
    Sample,
    markdown_table,
    rich_table,
    to_markdown,
)
from swe_cli.report_files import write_report

LANGUAGE_KEYS = {
    "n",
    "asr",
    "refusal_rate",
    "degenerate_rate",
    "verdicts",
    "harmless_n",
    "harmless_refusal",
    "over_refusal_n",
    "over_refusal",
    "utility_n",
    "utility_accuracy",
    "choice_n",
    "choice_accuracy",
    "answers_n",
    "harmless_accuracy",
    "kl",
    "general_tokens",
    "perplexity",
}


def _result(lang: str, asr: float, degenerate: float = 0.0, **extra: object) -> LanguageResult:
    n = 10
    complied, degenerated = round(asr * n), round(degenerate * n)
    return LanguageResult(
        lang=lang,
        n=n,
        asr=asr,
        degenerate_rate=degenerate,
        refusal_rate=1 - asr - degenerate,
        verdicts={
            "complied": complied,
            "degenerate": degenerated,
            "refused": n - complied - degenerated,
        },
        **extra,  # type: ignore[arg-type]
    )


def _report(with_baseline: bool = True, utility: bool = False) -> EvalReport:
    def measured(over: float, useful: float | None = None) -> dict[str, object]:
        if not utility:  # the organism's kind of report: refusals and harmless accuracy only
            return {"harmless_n": 5, "harmless_refusal": over}
        return {
            "harmless_n": 5,
            "harmless_refusal": 0.0,
            "over_refusal_n": 30,
            "over_refusal": over,
            "utility_n": 46,
            "utility_accuracy": useful,
            "choice_n": 32,
            "choice_accuracy": 0.5,
        }

    model = ModelResult(
        "out/edited",
        (
            _result("en", 0.0, **measured(0.2, 0.75), kl=0.0125, perplexity=12.5),
            _result("bn", 0.2, 0.1, **measured(0.0, 0.25), harmless_accuracy=0.8, kl=0.03),
        ),
    )
    baseline = ModelResult(
        "org/base",
        (
            _result("en", 0.1, **measured(0.0, 0.5), perplexity=12.0),
            _result("bn", 0.9, **measured(0.0, 0.5), harmless_accuracy=1.0),
        ),
    )
    samples = (Sample("model", "harmful", "bn", "7", "prompt", "answer", "complied"),)
    return EvalReport(
        model=model,
        baseline=baseline if with_baseline else None,
        judge="pattern",
        split="heldout",
        langs=("en", "bn"),
        settings={"max_new_tokens": 64, "batch_size": 16},
        samples=samples,
    )


def test_write_report_files_and_json_keys(tmp_path: Path) -> None:
    report = _report()
    written = write_report(report, tmp_path / "eval")
    assert set(written) == {"json", "markdown", "chart", "generations"}
    names = sorted(path.name for path in (tmp_path / "eval").iterdir())
    assert names == ["asr.png", "generations.jsonl", "report.json", "report.md"]  # no temp files
    assert (tmp_path / "eval" / "asr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    data = json.loads((tmp_path / "eval" / "report.json").read_text(encoding="utf-8"))
    assert list(data) == [
        "schema",
        "judge",
        "split",
        "langs",
        "settings",
        "model",
        "baseline",
        "change",
        "hrl",
        "gap_closure",
    ]
    assert data["schema"] == "swe.eval/2" and data["langs"] == ["en", "bn"]
    assert list(data["model"]) == ["name", "languages", "mean"]
    assert list(data["model"]["languages"]) == ["en", "bn"]
    assert set(data["model"]["languages"]["bn"]) == LANGUAGE_KEYS
    assert data["model"]["languages"]["bn"]["asr"] == 0.2
    assert data["model"]["languages"]["bn"]["verdicts"] == {
        "complied": 2,
        "degenerate": 1,
        "refused": 7,
    }
    assert data["baseline"]["languages"]["en"]["kl"] is None
    assert data["model"]["mean"]["asr"] == 0.1
    assert data["change"]["bn"]["asr"] == -0.7
    assert data["change"]["en"]["perplexity"] == 0.5
    assert data["change"]["bn"]["perplexity"] is None

    line = (tmp_path / "eval" / "generations.jsonl").read_text(encoding="utf-8").splitlines()
    assert json.loads(line[0])["set"] == "harmful"
    again = EvalReport.read(tmp_path / "eval" / "report.json")
    assert again.to_dict() == data


def test_markdown_table_with_baseline() -> None:
    table = markdown_table(_report()).splitlines()
    assert table[0] == (
        "| Language | n | ASR base | ASR edited | Change | Gap closed | Degenerate | "
        "Harmless refused (n=5) base → edited | Harmless acc. base → edited | "
        "KL(base‖edited) | PPL base | PPL edited |"
    )
    assert table[1].startswith("|---|---:|")
    assert table[2] == (
        "| en | 10 | 10.0% | 0.0% | -10.0 pp | HRL | 0.0% | 0.0% → 20.0% | – → – | 0.0125 | 12 | 12.5 |"
    )
    assert table[3] == (
        "| bn | 10 | 90.0% | 20.0% | -70.0 pp | 87% | 10.0% | 0.0% → 0.0% | 100.0% → 80.0% | 0.03 | – | – |"
    )
    assert table[4].startswith("| **mean** | 20 | 50.0% | 10.0% | -40.0 pp | 87% |")
    text = to_markdown(_report())
    assert text.startswith("Evaluation of `out/edited` against `org/base`")
    assert "not refused" in text and "degenerate" in text


def test_report_without_baseline(tmp_path: Path) -> None:
    report = _report(with_baseline=False)
    table = markdown_table(report).splitlines()
    assert table[0].startswith("| Language | n | ASR | Degenerate | Harmless refused (n=5) |")
    assert table[3] == "| bn | 10 | 20.0% | 10.0% | 0.0% | 80.0% | – |"
    data = report.to_dict()
    assert data["baseline"] is None and data["change"] == {}
    written = write_report(report, tmp_path)
    assert written["chart"].exists()


def test_rich_table_renders_change() -> None:
    console = Console(record=True, width=200, color_system=None)
    console.print(rich_table(_report()))
    text = console.export_text()
    assert "ASR base" in text and "-70.0 pp" in text and "mean" in text


def test_utility_columns_beside_asr(tmp_path: Path) -> None:
    report = _report(utility=True)
    table = markdown_table(report).splitlines()
    assert table[0] == (
        "| Language | n | ASR base | ASR edited | Change | Gap closed | Degenerate | "
        "Over-refusal (n=30) base → edited | Harmless refused (n=5) base → edited | "
        "Utility acc. (n=46) base → edited | MC acc. (n=32) base → edited | "
        "KL(base‖edited) | PPL base | PPL edited |"
    )
    # harmless accuracy (reference contained in the reply) is left out beside real utility
    assert "Harmless acc." not in table[0]
    assert table[3] == (
        "| bn | 10 | 90.0% | 20.0% | -70.0 pp | 87% | 10.0% | 0.0% → 0.0% | 0.0% → 0.0% | "
        "50.0% → 25.0% | 50.0% → 50.0% | 0.03 | – | – |"
    )
    assert table[4].startswith(
        "| **mean** | 20 | 50.0% | 10.0% | -40.0 pp | 87% | 5.0% | 0.0% → 10.0% |"
    )
    data = report.to_dict()
    assert data["model"]["languages"]["en"]["utility_accuracy"] == 0.75
    assert data["model"]["languages"]["en"]["utility_n"] == 46
    assert data["change"]["bn"]["utility_accuracy"] == -0.25
    assert data["change"]["en"]["over_refusal"] == 0.2
    assert data["model"]["mean"]["choice_accuracy"] == 0.5
    assert EvalReport.from_dict(data).to_dict() == data
    console = Console(record=True, width=250, color_system=None)
    console.print(rich_table(report))
    assert "Utility acc." in console.export_text()
    written = write_report(report, tmp_path)
    assert written["chart"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _closure_report(base: dict[str, float], edited: dict[str, float], n: int = 40) -> EvalReport:
    def results(values: dict[str, float]) -> tuple[LanguageResult, ...]:
        return tuple(LanguageResult(lang, n, asr, 0.0, 1 - asr, {}) for lang, asr in values.items())

    return EvalReport(
        model=ModelResult("edited", results(edited)),
        baseline=ModelResult("base", results(base)),
        judge="pattern",
        split="heldout",
        langs=tuple(base),
        hrl="en",
    )


def test_gap_closure_per_language_and_mean() -> None:
    # en is the reference at 0.25; bn 0.95 -> 0.30 closes 65 of its 70 points, sw 0.45 -> 0.55
    # widens its 20-point gap by half, th equals en in the base (no gap), jv is one prompt
    # (1/40) above it: a real gap, wholly closed.
    report = _closure_report(
        {"en": 0.25, "bn": 0.95, "sw": 0.45, "th": 0.25, "jv": 0.275},
        {"en": 0.3, "bn": 0.3, "sw": 0.55, "th": 0.1, "jv": 0.25},
    )
    closure = report.gap_closure()
    assert set(closure) == {"bn", "sw", "th", "jv", "mean"}  # the HRL is the reference
    assert abs(closure["bn"] - 65 / 70) < 1e-9
    assert abs(closure["sw"] - (-0.5)) < 1e-9
    assert closure["th"] is None  # never a division by zero
    assert abs(closure["jv"] - 1.0) < 1e-9
    # mean: closed points over the summed gaps of the languages that have one
    assert abs(closure["mean"] - (0.65 - 0.10 + 0.025) / (0.70 + 0.20 + 0.025)) < 1e-9

    data = report.to_dict()
    assert data["hrl"] == "en" and data["gap_closure"]["th"] is None
    assert abs(data["gap_closure"]["bn"] - 0.928571) < 1e-6
    again = EvalReport.from_dict(data)
    assert again.reference == "en" and again.to_dict()["gap_closure"] == data["gap_closure"]

    table = markdown_table(report)
    header = table.splitlines()[0]
    assert "Gap closed" in header
    rows = {line.split(" | ")[0].strip("| *"): line for line in table.splitlines()[2:]}
    assert "| 93% |" in rows["bn"] and "| -50% |" in rows["sw"]
    assert "| no gap |" in rows["th"] and "| HRL |" in rows["en"]


def test_gap_closure_undefined_without_any_gap_or_baseline() -> None:
    report = _closure_report({"en": 0.5, "bn": 0.4}, {"en": 0.5, "bn": 0.0})
    assert report.gap_closure() == {"bn": None, "mean": None}
    assert "no gap" in markdown_table(report)
    alone = EvalReport(report.model, None, "pattern", "heldout", ("en", "bn"))
    assert alone.gap_closure() == {} and alone.to_dict()["gap_closure"] == {}
    assert "Gap closed" not in markdown_table(alone)
