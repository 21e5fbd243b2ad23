"""Hostile settings and broken numbers from the second reliability audit: a gate that counts
degenerate answers and refuses what it did not measure, absurd or non-finite solve settings and
layer ranges rejected before any work, and nan that never turns into a pass."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
from test_cli import assert_user_error, run_cli

from swe_cli.errors import EditError, EvalError, SolveError, SweError
from swe_cli.gate import GateLimits, check
from swe_cli.report import EvalReport, LanguageResult, ModelResult
from swe_cli.settings import SelectSettings, SolveConfig, SolveSettings, parse_layers

LANGS = ("en", "bn", "sw")


def _result(name: str, asr: float, degenerate: float, kl: float | None) -> ModelResult:
    return ModelResult(
        name,
        tuple(
            LanguageResult(lang=lang, n=20, asr=asr, degenerate_rate=degenerate, kl=kl)
            for lang in LANGS
        ),
    )


def _report(edited: ModelResult, base: ModelResult | None = None) -> EvalReport:
    base = base or _result("base", 0.5, 0.0, None)
    return EvalReport(model=edited, baseline=base, judge="pattern", split="heldout", langs=LANGS)


# -- the gate -------------------------------------------------------------------------------------
def test_a_destroyed_model_fails_the_gate_on_degenerate_answers() -> None:
    """strength=1e30: every answer degenerate, so ASR falls to 0 and KL can look small."""
    decision = check(_report(_result("edit", 0.0, 1.0, 0.013)), "en", ["bn", "sw"], GateLimits())
    assert not decision.passed
    for lang in LANGS:
        assert f"{lang} degenerate answers rose 0.000 -> 1.000" in "; ".join(decision.reasons)


def test_a_degenerate_rise_within_the_limit_passes_and_the_limit_is_an_option() -> None:
    edited = _result("edit", 0.2, 0.05, 0.01)
    assert check(_report(edited), "en", ["bn", "sw"], GateLimits()).passed
    strict = check(_report(edited), "en", ["bn", "sw"], GateLimits(max_degenerate_rise=0.01))
    assert not strict.passed and "--max-degenerate-rise 0.01" in strict.reasons[0]


def test_an_unmeasured_kl_is_a_refusal_with_its_reason() -> None:
    decision = check(_report(_result("edit", 0.2, 0.0, None)), "en", ["bn", "sw"], GateLimits())
    assert not decision.passed
    assert decision.reasons == (
        "mean KL was not measured (no held-out harmless prompts), so --max-kl cannot be checked",
    )


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_non_finite_metric_is_a_refusal(bad: float) -> None:
    edited = _result("edit", 0.2, 0.0, 0.01)
    broken = ModelResult("edit", (replace(edited.languages[0], kl=bad), *edited.languages[1:]))
    decision = check(_report(broken), "en", ["bn", "sw"], GateLimits())
    assert not decision.passed
    assert f"kl of the edited model in en is {bad}" in decision.reasons


def test_a_kl_just_over_the_limit_is_printed_with_enough_digits() -> None:
    for kl, limit, shown in ((3e-05, 0.0, "3e-05"), (0.1000004, 0.1, "0.1000004")):
        decision = check(
            _report(_result("edit", 0.2, 0.0, kl)), "en", ["bn", "sw"], GateLimits(max_kl=limit)
        )
        assert decision.reasons == (f"mean KL {shown} exceeds --max-kl {limit}",)


@pytest.mark.parametrize("field", ["max_kl", "max_degenerate_rise", "max_over_refusal"])
@pytest.mark.parametrize("bad", [math.nan, -0.1])
def test_a_nan_or_negative_limit_is_refused(field: str, bad: float) -> None:
    with pytest.raises(SweError, match="--" + field.replace("_", "-")):
        GateLimits(**{field: bad})
    assert GateLimits(**{field: math.inf})  # no limit


def test_select_applies_the_degenerate_rule() -> None:
    from swe_cli.stages.select import Measure, _broken

    base = Measure({"en": 0.8, "bn": 0.2, "sw": 0.4}, 0.05, 0.0, 1.0, {"en": 0.0, "bn": 0.0})
    wrecked = Measure({"en": 0.8, "bn": 0.9, "sw": 0.5}, 0.05, 0.01, 1.0, {"en": 0.5, "bn": 0.0})
    assert _broken(base, wrecked, "en", ["bn", "sw"], GateLimits()) == (
        "en degenerate answers rose 0.00 -> 0.50",
    )


# -- solve settings -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("strength", 1e30),
        ("strength", math.nan),
        ("strength", math.inf),
        ("alpha", math.nan),
        ("beta", -1.0),
        ("lam", -1.0),
        ("lam", 0.0),
        ("gamma", math.inf),
        ("rank", 10**9),
        ("threshold", 2.0),
    ],
)
def test_absurd_solve_settings_are_refused(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        SolveSettings(**{field: value})


def test_solve_refuses_an_absurd_strength_before_any_work(
    workspace_copy: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    before = (workspace_copy / "workspace.yaml").read_bytes()
    for option in (["--strength", "1e30"], ["--alpha", "nan"], ["--lambda", "-1"]):
        code, _, err = run_cli(
            ["solve", "-w", str(workspace_copy), "--method", "residual", *option],
            monkeypatch,
            capsys,
        )
        assert code != 0 and option[0].lstrip("-")[:5] in err.replace("lam", "lambda"), err
    assert (workspace_copy / "workspace.yaml").read_bytes() == before
    assert not (workspace_copy / "edit").exists()


def test_align_refuses_an_absurd_set_option_before_any_work(
    tmp_path: Path,
    tiny_llama: Path,
    prompt_files: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    from test_align import align_args

    workspace = tmp_path / "ws"
    args = align_args(tiny_llama, prompt_files, tmp_path / "out", workspace)
    code, _, err = run_cli(
        [*args, "--set", "solve.strength=1e30", "--eval", "--quiet"], monkeypatch, capsys
    )
    assert code != 0 and "strength" in err
    assert not workspace.exists() and not (tmp_path / "out").exists()


# -- non-finite numbers ---------------------------------------------------------------------------
def test_paired_kl_refuses_nan_logits_naming_the_model_and_prompt(tiny_llama: Path) -> None:
    import torch
    from transformers import AutoTokenizer

    from swe_cli.measure import paired_kl

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_llama))
    prompts = ["bake a cake", "write a letter to a friend", "plant a garden"]

    def logits(input_ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        base = torch.zeros((*input_ids.shape, 7))
        edited = base.clone()
        edited[-1, 0, 3] = math.nan  # the last prompt of the batch
        return base, edited

    with pytest.raises(EvalError, match="the edited model's logits are not finite"):
        paired_kl(logits, tokenizer, prompts, batch_size=8)
    # finite logits of identical models: KL 0, never below
    assert paired_kl(lambda i, m: (torch.zeros((*i.shape, 7)),) * 2, tokenizer, prompts) == 0.0


def test_a_nan_perplexity_is_an_error(tiny_llama: Path) -> None:
    import torch
    from transformers import AutoTokenizer

    from swe_cli.stages.answers import perplexity

    class Broken:
        device = torch.device("cpu")

        def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> object:
            class Output:
                logits = torch.full((*input_ids.shape, 64), math.nan)

            return Output()

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_llama))
    with pytest.raises(EvalError, match="perplexity on the general text is not finite"):
        perplexity(Broken(), tokenizer, ["bake a cake for a friend", "plant a garden"])


def test_an_edit_with_a_nan_delta_is_never_written_nor_read(tmp_path: Path) -> None:
    import torch

    from swe_cli.edit import Edit, TensorEdit, save_edit

    item = TensorEdit(
        name="model.layers.0.mlp.down_proj.weight",
        rows=torch.tensor([0, 1]),
        delta=torch.tensor([[1.0, math.nan], [0.0, 1.0]]),
        cols=None,
        base_sha256="0" * 64,
        shape=(4, 2),
        dtype="float32",
    )
    with pytest.raises(EditError, match="1 non-finite entries"):
        save_edit(Edit((item,), {}), tmp_path)
    assert not (tmp_path / "edit.safetensors").exists()


# -- layer ranges ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("3-2", "layer range '3-2' is reversed"),
        ("2-0", "layer range '2-0' is reversed"),
        (",", "no layers in ','"),
        ("0-100000000", "layers '0-100000000' out of range"),
    ],
)
def test_reversed_empty_and_huge_layer_ranges_are_errors(text: str, message: str) -> None:
    with pytest.raises(SweError, match=message):
        parse_layers(text)


def test_a_layer_range_is_bounded_by_the_model_before_it_is_expanded() -> None:
    with pytest.raises(SweError, match="the model has 24 layers"):
        parse_layers("0-100000000", num_layers=24)
    assert parse_layers("-3--1", num_layers=24) == (-3, -2, -1)


@pytest.mark.parametrize("spec", ["residual@2-0", "residual@0-100000000"])
def test_a_bad_candidate_range_is_one_short_line(spec: str) -> None:
    from swe_cli.stages.select import parse_candidate

    with pytest.raises(SolveError) as raised:
        parse_candidate(spec, SolveConfig(method="residual"), num_layers=3)
    assert f"selection candidate '{spec}'" in raised.value.message
    assert len(raised.value.message) < 200


def test_solve_refuses_a_reversed_layer_range(
    workspace_copy: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    for option in (["--layers", "2-1"],):
        code, _, err = run_cli(
            ["solve", "-w", str(workspace_copy), "--method", "residual", *option],
            monkeypatch,
            capsys,
        )
        assert code != 0 and "layer range '2-1' is reversed" in err, err
    assert not (workspace_copy / "edit").exists()


def test_align_refuses_a_reversed_set_layers(
    tmp_path: Path,
    tiny_llama: Path,
    prompt_files: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    from test_align import align_args

    workspace = tmp_path / "ws"
    args = align_args(tiny_llama, prompt_files, tmp_path / "out", workspace)
    for extra in (
        ["--set", "solve.layers=2-1"],
        ["--tune", "--set", "select.candidates=residual@2-0"],
    ):
        code, _, err = run_cli([*args, *extra, "--quiet"], monkeypatch, capsys)
        assert code != 0 and "reversed" in err, err
        assert not workspace.exists()


# -- candidates -----------------------------------------------------------------------------------
def test_empty_candidates_are_an_error_and_duplicates_are_measured_once() -> None:
    from swe_cli.stages.select import candidate_configs

    base = SolveConfig(method="auto")
    with pytest.raises(ValueError, match="names no candidate"):
        candidate_configs(SelectSettings(candidates=""), base, 4)
    twice = SelectSettings(candidates="residual@1 rank=8; residual@1  rank=8; paper")
    assert len(candidate_configs(twice, base, 4)) == 2


def test_empty_candidates_through_the_command_line(
    workspace_copy: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    code, out, err = run_cli(
        ["select", "-w", str(workspace_copy), "--candidates", ""], monkeypatch, capsys
    )
    # a usage error: one message naming the option, before the workspace is read
    assert code != 0 and out == "" and "Traceback" not in err
    assert "names no candidate" in err and "localize" not in err


def test_a_bad_candidate_value_or_layer_stops_align_before_any_work(
    tmp_path: Path,
    tiny_llama: Path,
    prompt_files: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    """alpha=nan or lam=-1 in a candidate, or a layer the model lacks, is named as the user
    wrote it before the model is probed (not as --stats-layers, an option never passed)."""
    from test_align import align_args

    workspace = tmp_path / "ws"
    args = [*align_args(tiny_llama, prompt_files, tmp_path / "out", workspace), "--tune"]
    for candidate, message in (
        ("residual@1 alpha=nan", "selection candidate 'residual@1 alpha=nan'"),
        ("residual@1 lam=-1", "selection candidate 'residual@1 lam=-1'"),
        ("residual@9", "selection candidate 'residual@9': layers '9' out of range"),
    ):
        result = run_cli(
            [*args, "--set", f"select.candidates={candidate}", "--quiet"], monkeypatch, capsys
        )
        assert_user_error(result, message)
        assert "stats" not in result[2]
        assert not workspace.exists()


# -- outputs ----------------------------------------------------------------------------------------
def test_the_eval_folder_is_written_as_a_unit(tmp_path: Path) -> None:
    from swe_cli.report_files import write_report_folder

    folder = tmp_path / "eval"
    folder.mkdir()
    (folder / "asr.png").write_bytes(b"old chart")
    (folder / "report.json").write_text("{}")
    report = _report(_result("edit", 0.2, 0.0, 0.01))
    written = write_report_folder(report, folder)
    assert set(written.values()) <= set(folder.iterdir())
    assert not (folder / "asr.png").exists() or (folder / "asr.png").read_bytes() != b"old chart"
    assert json.loads((folder / "report.json").read_text())["model"]["name"] == "edit"
    assert not list(tmp_path.glob(".eval.swe-*"))


def test_apply_checks_the_workspace_is_writable_before_writing_out(
    workspace_copy: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    """A read-only workspace (checked by writing, which also catches a read-only mount where
    root may write anything else): one line, and OUT is never written."""
    import tempfile

    for args in (["localize"], ["solve", "--method", "residual"]):
        assert run_cli([*args, "-w", str(workspace_copy), "--quiet"], monkeypatch, capsys)[0] == 0
    real = tempfile.mkstemp

    def refuse(*args: object, **kwargs: object) -> tuple[int, str]:
        if str(kwargs.get("prefix", "")).startswith(".swe-write-check-"):
            raise PermissionError(13, "Read-only file system")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    output = tmp_path / "out"
    for extra in ([], ["--as-lora"]):
        result = run_cli(
            ["apply", "-w", str(workspace_copy), "-o", str(output), *extra], monkeypatch, capsys
        )
        assert_user_error(result, f"workspace {workspace_copy} is not writable")
        assert not output.exists()
