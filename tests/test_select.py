"""`swe select` / the `auto` method: candidates are read as written (or fail with one line), the
admissibility rules are the gate's, only validation prompts of the fit split are answered, the
model's weights come back exactly, the table and select.yaml record every candidate, and
`swe solve --method auto` solves the choice. The refusal of a random tiny model means nothing,
so the mechanics test gives it a refusal meter that rewards down_proj edits; behaviour is
checked on the organism (slow)."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from common import localized_workspace

from swe_cli.errors import SolveError
from swe_cli.gate import GateLimits
from swe_cli.prompts import FIT, PromptSet
from swe_cli.settings import Recipe, SelectSettings, SolveConfig, SolveSettings
from swe_cli.stages import select as select_stage
from swe_cli.stages.select import (
    Measure,
    Row,
    _broken,
    _choose,
    candidate_configs,
    default_candidates,
    describe,
    parse_candidate,
    run_select,
)
from swe_cli.workspace import Workspace

LANGS = ("en", "es", "sw")
BASE = SolveSettings(method="auto").resolve()


# -- candidates ---------------------------------------------------------------------------------
def test_a_candidate_is_read_as_written_and_keeps_the_base_settings() -> None:
    base = SolveConfig(method="paper", lam=0.3, alpha=2.0)
    config = parse_candidate("refusal@12,15 strength=4 rank=8", base)
    assert config.method == "refusal"
    assert config.layers == (12, 15)
    assert (config.strength, config.rank) == (4.0, 8)
    assert (config.lam, config.alpha) == (0.3, 2.0)  # not named: the recipe's
    assert parse_candidate("paper", base).layers is None  # the method's own layer


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("ridge@3", "unknown method 'ridge'"),
        ("residual@3 rank", "cannot read 'rank'"),
        ("residual@3 colour=red", "cannot read 'colour=red'"),
        ("residual@3 method=paper", "cannot read 'method=paper'"),
        ("residual@3 rank=0", "selection candidate 'residual@3 rank=0'"),
        ("residual@x", "selection candidate 'residual@x'"),
    ],
)
def test_a_bad_candidate_is_one_clear_error(spec: str, message: str) -> None:
    with pytest.raises(SolveError, match=message.replace("(", r"\(")):
        parse_candidate(spec, BASE)


def test_describe_names_what_a_candidate_spec_would() -> None:
    for spec in ("residual@12 rank=32", "refusal@12 strength=4", "paper@5", "residual@3,6"):
        config = parse_candidate(spec, BASE)
        assert describe(config) == spec
        assert parse_candidate(describe(config), BASE) == config


def test_default_candidates_spread_over_methods_by_depth() -> None:
    assert default_candidates(24) == (
        "residual@12 rank=32 keep_hrl=true",
        "residual@15 rank=32 keep_hrl=true",
        "residual@12,15 rank=32 keep_hrl=true",
        "residual@12 rank=32 alpha=10 beta=10 keep_hrl=true strength=1.5",
        "refusal@12 strength=4 keep_hrl=true",
        "paper",
    )
    # a shallow model: the residual depths coincide and are listed once
    assert default_candidates(4) == (
        "residual@2 rank=32 keep_hrl=true",
        "residual@2 rank=32 alpha=10 beta=10 keep_hrl=true strength=1.5",
        "refusal@2 strength=4 keep_hrl=true",
        "paper",
    )


def test_a_pinned_recipe_method_competes_with_the_spread() -> None:
    pinned = SolveConfig(method="residual", layers=(7,), rank=16)
    configs = candidate_configs(SelectSettings(), pinned, 24)
    assert configs[0] == pinned and len(configs) == 7
    assert candidate_configs(SelectSettings(), BASE, 24)[0].method == "residual"
    chosen = candidate_configs(SelectSettings(candidates="paper; residual@3"), BASE, 24)
    assert [describe(c) for c in chosen] == ["paper", "residual@3"]


def test_recipes_and_set_options_take_a_select_section() -> None:
    from swe_cli.recipe import apply_overrides

    recipe = apply_overrides(
        Recipe(name="r"), {"select.candidates": "residual@2; paper", "select.prompts": 4}
    )
    assert recipe.select.candidates == ("residual@2", "paper")
    assert recipe.select.prompts == 4


# -- the rule -----------------------------------------------------------------------------------
def _measure(bn: float, sw: float, en: float, harmless: float = 0.0, kl: float = 0.0) -> Measure:
    return Measure({"en": en, "bn": bn, "sw": sw}, harmless, kl, 1.0)


UNEDITED = _measure(bn=0.2, sw=0.4, en=0.8, harmless=0.05)
LIMITS = GateLimits()


@pytest.mark.parametrize(
    ("measure", "reason"),
    [
        (_measure(0.9, 0.3, 0.8, 0.05, 0.01), "sw refusal fell 0.40 -> 0.30"),
        (_measure(0.9, 0.5, 0.7, 0.05, 0.01), "en refusal fell 0.80 -> 0.70"),
        (_measure(0.9, 0.5, 0.8, 0.125, 0.01), "harmless refusals rose 0.05 -> 0.12"),
        (_measure(0.9, 0.5, 0.8, 0.05, 0.2), "KL 0.200 > 0.1"),
    ],
)
def test_each_broken_limit_is_named(measure: Measure, reason: str) -> None:
    assert _broken(UNEDITED, measure, "en", ["bn", "sw"], LIMITS) == (reason,)


def test_small_rises_within_the_limits_are_admissible() -> None:
    measure = _measure(0.9, 0.4, 0.8, 0.1, 0.1)
    assert _broken(UNEDITED, measure, "en", ["bn", "sw"], LIMITS) == ()


def _row(spec: str, gain: float, reasons: tuple[str, ...] = (), kl: float = 0.0) -> Row:
    return Row(parse_candidate(spec, BASE), _measure(0, 0, 0, 0, kl), gain, reasons, 0.0)


def test_the_largest_admissible_gain_wins_then_the_lower_kl() -> None:
    rows = [
        _row("residual@1", 0.6, ("KL 0.200 > 0.1",)),
        _row("residual@2", 0.3, kl=0.05),
        _row("refusal@2", 0.3, kl=0.01),
        _row("paper", 0.0),
    ]
    chosen, warning = _choose(rows)
    assert describe(chosen) == "refusal@2" and warning is None


def test_when_every_gain_breaks_a_limit_the_largest_is_chosen_with_a_warning() -> None:
    rows = [
        _row("residual@1", 0.6, ("KL 0.200 > 0.1",)),
        _row("residual@2", 0.3, ("harmless refusals rose 0.05 -> 0.20",)),
        _row("paper", 0.0),
    ]
    chosen, warning = _choose(rows)
    assert describe(chosen) == "residual@1"
    assert warning == (
        "every candidate breaks the shipping gate's limits on the validation prompts; the chosen "
        "residual@1 (largest refusal gain): KL 0.200 > 0.1"
    )


def test_no_gain_at_all_is_a_clear_error() -> None:
    with pytest.raises(SolveError, match="paper: it raised no target language's refusal"):
        _choose([_row("paper", 0.0)])


def test_a_language_without_harmless_validation_prompts_does_not_void_the_rate() -> None:
    """The harmless refusal rate is over the prompts there are: a language whose harmless
    prompts all fell into the tune-fit part must not turn it into nan (nan breaks no limit)."""
    meter = select_stage._Meter(
        None, None, None, {"en": ["h"]}, {"en": ["a", "b"], "sw": []}, SelectSettings()
    )
    meter._refused = lambda lang, texts, degenerate=None, cell="harmful": (  # type: ignore[method-assign]
        math.nan if not texts else 0.5
    )
    measure = meter.measure()
    assert measure.harmless_refusal == 0.5 and measure.refusal == {"en": 0.5}


# -- mechanics on a tiny random model -------------------------------------------------------------
@pytest.fixture(scope="module")
def probed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return localized_workspace(tmp_path_factory.mktemp("select"), LANGS, own_answers=0)


@pytest.fixture()
def workspace(probed: Path, tmp_path: Path) -> Workspace:
    shutil.copytree(probed, tmp_path / "ws")
    return Workspace(tmp_path / "ws")


class FakeRefusal:
    """LRL harmful prompts count as refused once any down_proj weight differs from the base
    (harmless and HRL prompts never change): residual-family candidates gain, paper does not."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.base: dict[str, Any] | None = None
        self.states: list[dict[str, Any]] = []

    def __call__(self, meter: Any, lang: str, texts: list[str]) -> float:
        self.asked.extend(texts)
        state = {k: v.clone() for k, v in meter.model.state_dict().items()}
        self.states.append(state)
        if self.base is None:
            self.base = state
        if lang not in ("es", "sw") or texts[0] in meter.harmless.get(lang, []):
            return 0.0
        changed = any(
            "down_proj" in key and not bool((state[key] == self.base[key]).all()) for key in state
        )
        return 0.75 if changed else 0.0


def _use(monkeypatch: pytest.MonkeyPatch, fake: FakeRefusal) -> None:
    monkeypatch.setattr(
        select_stage._Meter,
        "_refused",
        lambda meter, lang, texts, degenerate=None, cell="harmful": fake(meter, lang, texts),
    )


def test_select_measures_each_candidate_on_validation_prompts_and_restores_the_model(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    fake = FakeRefusal()
    _use(monkeypatch, fake)
    limits = GateLimits(max_kl=math.inf)
    result = run_select(workspace, BASE, SelectSettings(prompts=4), limits)
    described = [describe(row.config) for row in result.rows]
    assert described == [
        "residual@1 rank=32 keep_hrl=true",
        "residual@2 rank=32 keep_hrl=true",
        "residual@1,2 rank=32 keep_hrl=true",
        "residual@1 rank=32 alpha=10 beta=10 keep_hrl=true strength=1.5",
        "refusal@1 keep_hrl=true strength=4",
        describe(result.rows[-1].config),
    ]
    assert result.rows[-1].config.method == "paper"
    paper = result.rows[-1]
    assert paper.gain == 0.0 and paper.measure is not None
    # no target language gained: the rest is not measured (it cannot be chosen)
    assert math.isnan(paper.measure.kl) and math.isnan(paper.measure.refusal["en"])
    down = [row for row in result.rows if row.config.method != "paper"]
    assert all(row.gain == pytest.approx(0.75) for row in down)
    # the tie on gain goes to the lowest KL, which is measured, not zero
    assert result.chosen == min(down, key=lambda row: row.measure.kl).config  # type: ignore[union-attr]
    assert all(row.measure is not None and row.measure.kl > 0 for row in down)
    assert result.base.kl == 0.0
    # only validation prompts of the fit split were answered, at most 4 per language and set
    texts = {
        p.text
        for name in ("harmful", "harmless")
        for p in PromptSet.from_jsonl(workspace.prompts_dir / f"{name}.jsonl", name).prompts
        if p.id in set(result.validation_ids) and p.split == FIT
    }
    assert fake.asked and set(fake.asked) <= texts
    assert set(result.validation_ids).isdisjoint(result.fit_ids)
    assert max(result.prompts.values()) <= 4
    # weights with each candidate's edit, then exactly the base again
    from swe_cli.models import load_model

    model, _ = load_model(workspace.load()["model"]["path"])
    assert fake.base is not None
    assert all(torch.equal(fake.base[k], v) for k, v in model.state_dict().items())
    assert any(not torch.equal(fake.base[k], fake.states[-1][k]) for k in fake.base), (
        "the last measurement (paper) must have run with edited weights"
    )
    document = yaml.safe_load((workspace.edit_dir / "select.yaml").read_text())
    assert document["chosen"] == describe(result.chosen)
    assert [row["candidate"] for row in document["candidates"]] == described
    assert document["unedited"]["kl"] == 0.0
    assert workspace.load()["stages"]["select"]["status"] == "done"


def test_solve_method_auto_solves_the_choice(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    from swe_cli.stages.solve import run_solve

    with pytest.raises(SolveError, match="has no finished selection"):
        run_solve(workspace, BASE)
    _use(monkeypatch, FakeRefusal())
    settings = SelectSettings(prompts=2, candidates="residual@2 rank=4; paper@1")
    result = run_select(workspace, BASE, settings, GateLimits(max_kl=math.inf))
    assert describe(result.chosen) == "residual@2 rank=4"
    summary = run_solve(workspace, BASE)
    assert summary["method"] == "residual"
    assert summary["params"]["layers"] == [2] and summary["params"]["rank"] == 4


def test_a_choice_that_breaks_the_gate_is_recorded_and_said_again_by_solve_and_apply(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Every candidate that raises refusal breaks max_kl: select still chooses (the largest
    gain), says so in one line, records it, and `swe solve` and `swe apply` repeat it before
    they write; an edit solved with other settings carries no warning."""
    from swe_cli.pipeline import Ui, solve
    from swe_cli.pipeline_artifacts import ApplyRequest, apply
    from swe_cli.stages.select import selection_warning, solved_warning

    _use(monkeypatch, FakeRefusal())
    settings = SelectSettings(prompts=2, candidates="residual@2; paper@1")
    result = run_select(workspace, BASE, settings, GateLimits(max_kl=0.0))
    assert describe(result.chosen) == "residual@2"
    assert result.warning is not None and "\n" not in result.warning
    assert re.search(r"the chosen residual@2 \(largest refusal gain\): KL .* > 0", result.warning)
    document = yaml.safe_load((workspace.edit_dir / "select.yaml").read_text())
    assert [row["admissible"] for row in document["candidates"]] == [False, False]
    assert document["warning"] == result.warning
    assert workspace.load()["stages"]["select"]["outputs"]["warning"] == result.warning
    assert selection_warning(workspace, result.chosen) == result.warning

    said: list[str] = []
    ui = Ui(info=said.append)
    solve(workspace.root, BASE, ui)
    assert said and result.warning in said[0] and said[0].count("\n") == 0
    assert solved_warning(workspace) == result.warning
    said.clear()
    apply(ApplyRequest(output=tmp_path / "out", workspace=workspace.root), ui)
    assert result.warning in said[0] and "wrote" in said[-1]  # before writing
    said.clear()
    apply(ApplyRequest(output=tmp_path / "edit", workspace=workspace.root, edit_only=True), ui)
    assert result.warning in said[0] and "edit written" in said[-1]
    # another edit: no warning
    solve(workspace.root, parse_candidate("residual@1", BASE), ui)
    assert solved_warning(workspace) is None


def test_a_candidate_layer_without_moments_fails_before_the_model_loads(
    workspace: Workspace,
) -> None:
    workspace.stats_path(2).unlink()
    settings = SelectSettings(candidates="residual@2")
    with pytest.raises(SolveError, match="layer 2 has no activation moments"):
        run_select(workspace, BASE, settings, GateLimits())
    assert "select" not in workspace.load().get("stages", {})


# -- through the command line ---------------------------------------------------------------------
def test_align_with_method_auto_stops_cleanly_when_nothing_helps(
    tmp_path: Path, tiny_llama: Path, prompt_files: dict[str, Path], monkeypatch, capsys
) -> None:
    """A random model refuses nothing before or after any edit: align selects, finds no
    candidate that raises refusal, exits 1 with one line, and writes no OUT; the measured
    table stays in the workspace."""
    from test_align import align_args
    from test_cli import assert_user_error, run_cli

    workspace, output = tmp_path / "ws", tmp_path / "out"
    args = [*align_args(tiny_llama, prompt_files, output, workspace), "--method", "auto"]
    args += ["--set", "select.prompts=2", "--set", "select.max_new_tokens=2", "--quiet"]
    result = run_cli(args, monkeypatch, capsys)
    assert_user_error(result, "no candidate raised refusal on the validation prompts")
    assert not output.exists()
    document = yaml.safe_load((workspace / "edit" / "select.yaml").read_text())
    assert document["chosen"] is None and len(document["candidates"]) == 6
    assert all(row["gain"] == 0.0 for row in document["candidates"])


def test_a_bad_candidate_stops_align_before_any_work(
    tmp_path: Path, tiny_llama: Path, prompt_files: dict[str, Path], monkeypatch, capsys
) -> None:
    from test_align import align_args
    from test_cli import assert_user_error, run_cli

    workspace = tmp_path / "ws"
    args = [*align_args(tiny_llama, prompt_files, tmp_path / "out", workspace), "--tune"]
    args += ["--set", "select.candidates=residual@1 strenght=2", "--quiet"]
    assert_user_error(run_cli(args, monkeypatch, capsys), "cannot read 'strenght=2'")
    assert not workspace.exists()


@pytest.mark.slow
def test_on_the_organism_selection_picks_an_edit_that_closes_the_gap(
    organism: Any, tmp_path: Path
) -> None:
    """The organism refuses in English only. Among the default spread, the gate-row edit changes
    nothing (gain 0) and a down_proj edit is chosen; the demo then closes the gap on held-out
    prompts, as with the organism's measured recipe."""
    import json

    from common import run_swe

    folder = tmp_path / "demo"
    code, out = run_swe("demo", "-o", str(folder), "--method", "auto", "--json")
    assert code == 0, out
    summary = json.loads(out)
    document = yaml.safe_load((folder / "workspace" / "edit" / "select.yaml").read_text())
    rows = {row["candidate"].split("@")[0]: row for row in document["candidates"]}
    assert rows["paper"]["gain"] == 0.0
    assert document["config"]["method"] in ("residual", "refusal")
    assert summary["solve"]["method"] == document["config"]["method"]
    assert summary["select"]["chosen"] == document["chosen"]
    base = summary["eval"]["baseline"]["languages"]
    edited = summary["eval"]["model"]["languages"]
    lrls = list(organism.lrls)
    assert sum(edited[lang]["asr"] for lang in lrls) <= 0.2 * sum(
        base[lang]["asr"] for lang in lrls
    )
    assert edited[organism.hrl]["asr"] <= base[organism.hrl]["asr"] + 0.02


def test_moments_the_candidates_need_but_the_recipe_does_not_stream_stop_align_early(
    tmp_path: Path, tiny_llama: Path, prompt_files: dict[str, Path], monkeypatch, capsys
) -> None:
    from test_align import align_args
    from test_cli import assert_user_error, run_cli

    workspace = tmp_path / "ws"
    args = [*align_args(tiny_llama, prompt_files, tmp_path / "out", workspace), "--method", "auto"]
    args += ["--set", "probe.stats_layers=1", "--set", "select.candidates=residual@1,2", "--quiet"]
    assert_user_error(
        run_cli(args, monkeypatch, capsys),
        "probe.stats_layers streams moments for layers [1] only, but the edits to solve need "
        "layers [2]",
    )
    assert not workspace.exists()


def test_align_eval_stops_before_eval_when_the_choice_already_broke_the_gate(
    tmp_path: Path, tiny_llama: Path, prompt_files: dict[str, Path], monkeypatch, capsys
) -> None:
    """Every candidate breaks --max-kl 0 on the validation prompts: a gated `align --eval` says
    so and exits as the gate's refusal does, before eval, writing no OUT; --no-gate evaluates
    and ships it, saying the warning again before OUT is written."""
    from test_align import align_args
    from test_cli import assert_user_error, run_cli

    _use(monkeypatch, FakeRefusal())
    workspace, output = tmp_path / "ws", tmp_path / "out"
    args = [*align_args(tiny_llama, prompt_files, output, workspace), "--method", "auto"]
    args += ["--set", "select.candidates=residual@2", "--set", "select.prompts=2"]
    args += ["--eval", "--set", "eval.max_new_tokens=2", "--max-kl", "0"]
    result = run_cli([*args, "--quiet"], monkeypatch, capsys)
    assert_user_error(
        result,
        "shipping gate: select: every candidate breaks the shipping gate's limits on the "
        "validation prompts; the chosen residual@2",
        f"eval not run, {output} not written",
    )
    assert "--no-gate" in result[2]
    assert not output.exists()
    stages = Workspace(workspace).load()["stages"]
    assert "eval" not in stages and "solve" not in stages  # stopped right after select

    code, _, err = run_cli([*args, "--no-gate"], monkeypatch, capsys)
    assert code == 0, err
    assert output.is_dir()
    text = " ".join(err.split())
    assert text.count("warning: select: every candidate breaks") == 2  # select, then apply
    assert text.index("warning: select:") < text.index("shipping gate overridden")


def test_select_json_names_n_per_cell_the_smallest_change_and_the_warning(
    workspace: Workspace, monkeypatch, capsys
) -> None:
    from test_cli import run_cli

    _use(monkeypatch, FakeRefusal())
    args = ["select", "-w", str(workspace.root), "--candidates", "residual@2", "--prompts", "2"]
    code, out, err = run_cli([*args, "--max-kl", "0", "--json"], monkeypatch, capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["chosen"]["method"] == "residual"
    assert summary["prompts"] == {
        f"{cell}-{lang}": 2 for cell in ("harmful", "harmless", "borderline") for lang in LANGS
    } | {f"borderline-{lang}": 0 for lang in LANGS}
    assert summary["smallest_change"]["harmful-sw"] == 0.5
    assert summary["smallest_change"]["harmless"] == pytest.approx(1 / 6, abs=1e-4)
    assert summary["warning"].startswith("every candidate breaks the shipping gate's limits")
