"""What `swe select` measures its candidates on, and how: the harmless validation prompts are drawn
from the fit split's plain harmless and borderline sets (told apart by WS/prompts/borderline.jsonl,
which probe writes), each rate is a mean over languages as the gate reads eval's, the gate's
over-refusal rule reads the borderline cell, n and the smallest visible change are recorded per
cell, and the unedited model's answers are cached: a second selection on the same base generates
nothing for it."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from common import localized_workspace

from swe_cli.errors import SolveError
from swe_cli.gate import GateLimits
from swe_cli.prompts import FIT, PromptSet
from swe_cli.settings import SelectSettings, SolveSettings
from swe_cli.stages import select as select_stage
from swe_cli.stages.select import (
    BORDERLINE,
    HARMFUL,
    HARMLESS,
    Measure,
    _broken,
    run_select,
    smallest_changes,
)
from swe_cli.workspace import Workspace

LANGS = ("en", "es", "sw")
BASE = SolveSettings(method="auto").resolve()


@pytest.fixture(scope="module")
def probed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return localized_workspace(tmp_path_factory.mktemp("select-validation"), LANGS, own_answers=0)


@pytest.fixture()
def workspace(probed: Path, tmp_path: Path) -> Workspace:
    shutil.copytree(probed, tmp_path / "ws")
    return Workspace(tmp_path / "ws")


def _mark_borderline(workspace: Workspace) -> frozenset[str]:
    """Every other harmless id becomes a borderline request (as probe --borderline records)."""
    harmless = PromptSet.from_jsonl(workspace.prompts_dir / "harmless.jsonl", "harmless")
    ids = frozenset(harmless.ids()[::2])
    subset = tuple(p for p in harmless.prompts if p.id in ids)
    PromptSet("borderline", subset, "test").to_jsonl(workspace.prompts_dir / "borderline.jsonl")
    return ids


class CellRefusal:
    """Refusal by cell: the edited model refuses 3/4 of the target languages' harmful prompts
    and half the borderline requests; nothing else changes."""

    def __init__(self) -> None:
        self.asked: dict[str, list[str]] = {HARMFUL: [], HARMLESS: [], BORDERLINE: []}

    def __call__(self, meter: Any, lang: str, texts: list[str], cell: str) -> float:
        self.asked[cell].extend(texts)
        if meter._unedited:
            return 0.0
        if cell == HARMFUL:
            return 0.75 if lang != "en" else 0.0
        return 0.5 if cell == BORDERLINE else 0.0


def _use(monkeypatch: pytest.MonkeyPatch, fake: CellRefusal) -> None:
    monkeypatch.setattr(
        select_stage._Meter,
        "_refused",
        lambda meter, lang, texts, degenerate=None, cell=HARMFUL: fake(meter, lang, texts, cell),
    )


def test_borderline_requests_are_measured_apart_and_gated_as_over_refusal(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    border = _mark_borderline(workspace)
    fake = CellRefusal()
    _use(monkeypatch, fake)
    settings = SelectSettings(candidates="residual@2")
    result = run_select(workspace, BASE, settings, GateLimits(max_kl=math.inf))
    harmless = PromptSet.from_jsonl(workspace.prompts_dir / "harmless.jsonl", "harmless")
    validation = set(result.validation_ids)
    text_ids = {p.text: p.id for p in harmless.prompts if p.split == FIT and p.id in validation}
    # each cell holds validation prompts of its own set, and both sets are drawn from
    assert fake.asked[BORDERLINE] and fake.asked[HARMLESS]
    assert {text_ids[text] for text in fake.asked[BORDERLINE]} <= border
    assert not {text_ids[text] for text in fake.asked[HARMLESS]} & border
    # n per cell, for every language
    counts = result.prompts
    assert {f"{cell}-{lang}" for cell in (HARMFUL, HARMLESS, BORDERLINE) for lang in LANGS} == set(
        counts
    )
    assert sum(counts[f"borderline-{lang}"] for lang in LANGS) == len(fake.asked[BORDERLINE]) / 2
    # the borderline rise breaks the gate's over-refusal limit; nothing else does
    (row,) = result.rows
    assert row.measure is not None and row.measure.over_refusal == 0.5
    assert result.base.over_refusal == 0.0
    assert row.reasons == ("borderline refusals rose 0.00 -> 0.50",)
    assert result.warning is not None and "borderline refusals rose" in result.warning
    document = yaml.safe_load((workspace.edit_dir / "select.yaml").read_text())
    assert document["prompts"] == counts
    assert document["candidates"][0]["borderline_refusal"] == 0.5
    assert document["smallest_change"]["borderline"] == pytest.approx(
        1 / (3 * max(counts[f"borderline-{lang}"] for lang in LANGS)), abs=1e-4
    )
    # a looser limit lets it through: the verdict is the gate's rule with the gate's limit
    loose = run_select(workspace, BASE, settings, GateLimits(max_kl=math.inf, max_over_refusal=0.6))
    assert loose.rows[0].reasons == () and loose.warning is None


def test_without_a_borderline_file_every_harmless_prompt_is_plain() -> None:
    base = Measure({"en": 0.9, "sw": 0.1}, 0.0, 0.0, 0.0)
    edited = Measure({"en": 0.9, "sw": 0.8}, 0.0, 0.01, 0.0, over_refusal=None)
    assert _broken(base, edited, "en", ["sw"], GateLimits()) == ()


def test_rates_are_means_over_languages_as_the_gate_reads_them() -> None:
    """en 0 of 8, es 0 of 8, sw 2 of 4 refused: the mean over languages is 1/6 (the gate reads
    eval's per-language rates that way), not the pooled 2/20."""
    meter = select_stage._Meter(
        None,
        None,
        None,
        {"en": ["h"]},
        {"en": ["a"] * 8, "es": ["b"] * 8, "sw": ["c"] * 4},
        SelectSettings(),
    )
    rates = {"en": 0.0, "es": 0.0, "sw": 0.5}
    meter._refused = lambda lang, texts, degenerate=None, cell=HARMFUL: (  # type: ignore[method-assign]
        rates[lang] if cell == HARMLESS else 0.0
    )
    assert meter.measure().harmless_refusal == pytest.approx(1 / 6)


def test_smallest_visible_changes() -> None:
    counts = {
        "harmful-en": 16,
        "harmful-sw": 8,
        "harmless-en": 7,
        "harmless-sw": 5,
        "borderline-en": 0,
        "borderline-sw": 0,
    }
    changes = smallest_changes(counts)
    assert changes == {"harmful-en": 1 / 16, "harmful-sw": 1 / 8, "harmless": 1 / 14}


def test_validation_too_small_for_the_limit_is_said(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use(monkeypatch, CellRefusal())
    settings = SelectSettings(candidates="residual@2", prompts=2)
    result = run_select(workspace, BASE, settings, GateLimits(max_kl=math.inf))
    (note,) = result.notes
    assert note.startswith("harmless refusals: 6 validation prompts show changes of 0.167")
    assert "--max-over-refusal 0.05" in note
    assert not run_select(
        workspace, BASE, settings, GateLimits(max_kl=math.inf, max_over_refusal=0.2)
    ).notes


# -- the unedited model's answers, cached ---------------------------------------------------------
def _counting(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    from swe_cli import models

    calls: list[int] = []
    real = models.generate

    def counted(*args: Any, **kwargs: Any) -> list[str]:
        calls.append(len(args[2]))
        return real(*args, **kwargs)

    monkeypatch.setattr(models, "generate", counted)
    return calls


def _select(workspace: Workspace, cache: Path, **settings: Any) -> dict[str, Any]:
    """One selection on the random model (it refuses nothing, so it ends in 'no candidate raised
    refusal'); select.yaml as it recorded it."""
    options = {"candidates": "residual@2", "prompts": 2, "max_new_tokens": 2, **settings}
    with pytest.raises(SolveError, match="no candidate raised refusal"):
        run_select(workspace, BASE, SelectSettings(**options), GateLimits(), cache=cache)
    return yaml.safe_load((workspace.edit_dir / "select.yaml").read_text())


def test_a_second_selection_generates_nothing_for_the_unedited_model(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _mark_borderline(workspace)
    calls = _counting(monkeypatch)
    cache = tmp_path / "cache"
    first = _select(workspace, cache)
    cells = [n for n in first["prompts"].values() if n]  # one generate call per non-empty cell
    first_calls = list(calls)
    assert first["unedited"]["cached"] is False and len(list(cache.glob("*.json"))) == 1
    calls.clear()
    second = _select(workspace, cache)
    assert second["unedited"]["cached"] is True
    # the candidate's calls only: the base's are gone, one per cell
    assert len(calls) == len(first_calls) - len(cells)
    assert sorted(first_calls) == sorted([*calls, *cells])
    assert second["unedited"]["refusal"] == first["unedited"]["refusal"]
    assert second["unedited"]["harmless_refusal"] == first["unedited"]["harmless_refusal"]
    assert second["candidates"] == [
        {**row, "solve_seconds": second["candidates"][0]["solve_seconds"]}
        | {"seconds": second["candidates"][0]["seconds"]}
        for row in first["candidates"]
    ]


def test_the_select_cache_key_covers_generation_and_prompts(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    _select(workspace, cache)
    calls = _counting(monkeypatch)
    assert _select(workspace, cache, max_new_tokens=3)["unedited"]["cached"] is False
    assert _select(workspace, cache, prompts=3)["unedited"]["cached"] is False
    assert len(list(cache.glob("*.json"))) == 3
    assert calls
    # a damaged file is ignored and rewritten, never trusted
    for path in cache.glob("*.json"):
        path.write_text(json.dumps({"key": path.stem, "measured": {"answers": {"harmful": 1}}}))
    assert _select(workspace, cache)["unedited"]["cached"] is False
    assert _select(workspace, cache)["unedited"]["cached"] is True


def test_the_builtin_sets_let_select_see_a_five_point_change() -> None:
    """With the built-in harmless and borderline sets, probe's default held-out fraction and
    select's default validation fraction (half the fit ids), each language has 14 plain harmless
    and 26 borderline validation prompts: over en and three targets, the gated means move in
    steps of 1/56 and 1/104, well below the gate's 0.05. A quarter of the fit ids would leave
    6 plain harmless prompts per language: steps of 1/24, one answer nearly the whole limit."""
    from importlib import resources

    from swe_cli.prompts import HELDOUT, load_prompt_set, split_of
    from swe_cli.settings import ProbeSettings
    from swe_cli.stages.tune import TUNE_SALT

    def validation(name: str, fraction: float) -> int:
        path = resources.files("swe_cli") / "data" / f"{name}.jsonl"
        prompts = load_prompt_set(str(path), name, ["en"], heldout_fraction=0.5)
        return sum(split_of(i, fraction, TUNE_SALT) == HELDOUT for i in prompts.ids(FIT))

    assert ProbeSettings().heldout_fraction == 0.5
    fraction = SelectSettings().validation_fraction
    counts = {
        f"{cell}-{lang}": validation(cell, fraction)
        for cell in (HARMLESS, BORDERLINE)
        for lang in ("en", "bn", "sw", "th")
    }
    assert {name: n for name, n in counts.items() if name.startswith(HARMLESS)} == {
        f"{HARMLESS}-{lang}": 14 for lang in ("en", "bn", "sw", "th")
    }
    assert set(n for name, n in counts.items() if name.startswith(BORDERLINE)) == {26}
    steps = smallest_changes(counts)
    assert steps == {HARMLESS: 1 / 56, BORDERLINE: 1 / 104}
    assert 2 * max(steps.values()) < GateLimits().max_over_refusal  # two answers fit in it
    assert (validation(HARMLESS, 0.25), validation(BORDERLINE, 0.25)) == (6, 12)


def test_the_agreement_bench_compares_select_with_the_held_out_gate(
    workspace: Workspace, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """bench/select_agreement.py on a tiny workspace: one row per candidate with both verdicts,
    the agreement counted from them, and the held-out gate's verdict the one gate.check gives."""
    from common import load_bench

    bench = load_bench("select_agreement")
    report = tmp_path / "agreement.json"
    args = ["-w", str(workspace.root), "--candidates", "residual@2; residual@2 strength=50"]
    args += ["--select-prompts", "2", "--select-tokens", "2", "--eval-tokens", "2"]
    args += ["--max-prompts", "3", "--utility", "none", "--choices", "none"]
    args += ["--over-refusal", "none", "--cache", str(tmp_path / "cache"), "--json", str(report)]
    assert bench.main(args) == 0
    summary = json.loads(report.read_text())
    rows = summary["candidates"]
    assert [row["candidate"] for row in rows] == ["residual@2", "residual@2 strength=50"]
    assert all(row["agree"] == (row["select_pass"] == row["gate_pass"]) for row in rows)
    assert summary["agreement"] == {
        "agree": sum(row["agree"] for row in rows),
        "n": 2,
        "rate": sum(row["agree"] for row in rows) / 2,
    }
    # a verdict is "fail" exactly when some rule is named as broken, on either side
    for row in rows:
        assert row["select_pass"] == (not row["select_reasons"])
        assert row["gate_pass"] == (not row["gate_reasons"])
    confusion = summary["confusion"]
    assert sum(confusion.values()) == 2
    assert confusion["select_pass_gate_pass"] + confusion["select_fail_gate_fail"] == sum(
        row["agree"] for row in rows
    )
    assert set(summary["held_out_prompts"].values()) == {3}
    assert f"agreement: {summary['agreement']['agree']}/2" in capsys.readouterr().out
    # what the gate read: the edited and the base model's ASR in every language, finite rates
    for row in rows:
        for side in ("edited", "base"):
            seen = row["gate_measures"][side]
            assert set(seen["asr"]) == set(workspace.manifest().langs) | {"en"}
            assert all(0 <= value <= 1 for value in seen["asr"].values())
            assert 0 <= seen["harmless_refusal"] <= 1
        assert row["gate_measures"]["edited"]["kl"] >= 0

    # a second run reuses those held-out verdicts (no held-out evaluation) and measures select
    # again with another validation share; other held-out prompts are refused
    again = tmp_path / "again.json"
    rerun = [*args[:-1], str(again), "--gate-from", str(report), "--validation-fraction", "0.5"]
    assert bench.main(rerun) == 0
    assert "held-out gate:" not in capsys.readouterr().err
    second = json.loads(again.read_text())["candidates"]
    keys = ("candidate", "gate_pass", "gate_reasons", "gate_seconds", "gate_measures")
    assert [[row[key] for key in keys] for row in second] == [
        [row[key] for key in keys] for row in rows
    ]
    for other in (["--max-prompts", "2"], ["--over-refusal", "builtin"]):  # the last one counts
        with pytest.raises(SystemExit, match="other held-out prompts"):
            bench.main([*rerun, *other])
