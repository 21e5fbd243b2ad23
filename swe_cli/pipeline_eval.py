"""The eval calls behind `swe eval` and the gated eval of `swe align --eval`: a typed request in,
the prompt and utility sets loaded, the model (or the workspace's edit, patched in memory against
a cached base) evaluated, the report written and returned. Terminal output goes through the
caller's `Ui` (swe_cli/pipeline.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swe_cli.errors import SweError
from swe_cli.pipeline import SILENT, Ui, check_device, langs_in, writing
from swe_cli.pipeline_artifacts import check_adapter_base
from swe_cli.settings import check_dtype


@dataclass(frozen=True)
class EvalRequest:
    model: str
    langs: list[str]  # HRL first
    harmful: str
    baseline: str | None = None
    harmless: str | None = None
    general: str | None = None
    split: str = "heldout"
    heldout_fraction: float = 0.5
    max_prompts: int | None = None
    judge: str = "pattern"
    patterns: list[Path] = field(default_factory=list)
    max_new_tokens: int = 64
    batch_size: int = 16
    device: str = "cpu"
    dtype: str = "auto"
    revision: str | None = None
    output: Path | None = None
    workspace: Path | None = None
    backend: str = "hf"
    tensor_parallel_size: int = 1
    utility: str | None = "builtin"  # short answers: builtin, none or a file
    choices: str | None = "builtin"  # multiple choice: builtin, none or a file
    over_refusal: str | None = "builtin"  # over-refusal probes: builtin, none or a file
    adapter: Path | None = None  # a LoRA adapter applied to `model` (PEFT)
    label: str | None = None  # the model's name in the report (default: model)
    # the edit file to evaluate on `baseline` in memory (one model load; `model` is then only
    # the report's name), and the folder caching the baseline's measurements between runs
    edit: Path | None = None
    base_cache: Path | None = None
    shared: Any = None  # with edit: a models.SharedModel holding the baseline (swe align)


def solved_edit_file(workspace: Path) -> Path:
    """The edit file of the workspace's last finished solve (checked against its record)."""
    from swe_cli.stages.apply import solved_edit
    from swe_cli.workspace import Workspace

    return solved_edit(Workspace(workspace))[0]


def edit_hash(edit_file: Path | None) -> str | None:
    """The sha256 of an edit file's edit (the hash a checkpoint written from it records)."""
    from swe_cli.edit import edit_sha256, load_edit

    return None if edit_file is None else edit_sha256(load_edit(edit_file, framework="np"))


def base_eval_cache() -> Path:
    """Where the base model's eval measurements are cached between runs."""
    from swe_cli.stages.base_cache import default_cache_dir

    return default_cache_dir()


def eval_inputs(request: EvalRequest, sets: dict[str, Any], judge: Any, refusal_judge: Any) -> Any:
    """The request's sets, judges and settings as stages/evaluate.py takes them."""
    from swe_cli.stages.evaluate import EvalInputs

    return EvalInputs(
        harmful=sets["harmful"],
        harmless=sets["harmless"],
        general=sets["general"],
        utility=sets["utility"],
        langs=request.langs,
        split=request.split,
        judge=judge,
        refusal_judge=refusal_judge,
        max_new_tokens=request.max_new_tokens,
        batch_size=request.batch_size,
        device=request.device,
        dtype=request.dtype,
        revision=request.revision,
    )


def load_eval_sets(request: EvalRequest) -> dict[str, Any]:
    from swe_cli.prompts import load_prompt_set

    langs = request.langs
    split = {"heldout_fraction": request.heldout_fraction, "max_prompts": request.max_prompts}
    sets: dict[str, Any] = {"harmful": load_prompt_set(request.harmful, "harmful", langs, **split)}
    sets["harmless"] = (
        load_prompt_set(request.harmless, "harmless", langs, **split) if request.harmless else None
    )
    sets["general"] = (
        load_prompt_set(
            request.general,
            "general",
            langs_in(request.general, langs),
            heldout_fraction=request.heldout_fraction,
            require_parallel=False,
        )
        if request.general
        else None
    )
    from swe_cli.accuracy import load_utility_sets

    sets["utility"] = load_utility_sets(
        langs,
        short_answers=request.utility,
        choices=request.choices,
        probes=request.over_refusal,
        max_items=request.max_prompts,
    )
    return sets


def evaluate(request: EvalRequest, ui: Ui = SILENT) -> Any:
    with writing(request.workspace, request.output):
        return _evaluate(request, ui)


def _evaluate(request: EvalRequest, ui: Ui) -> Any:
    if request.edit is not None and request.baseline is None:
        raise SweError("an edit evaluated in memory needs its base model as the baseline")
    if request.adapter is not None:
        check_adapter_base(request.adapter, request.model, request.revision)
    from swe_cli.edit import load_edit
    from swe_cli.hub import edited_model_hash
    from swe_cli.judges import GuardJudge, PatternJudge
    from swe_cli.report import rich_table
    from swe_cli.report_files import public_names, write_report, write_report_folder
    from swe_cli.stages.evaluate import run_eval, run_eval_edit
    from swe_cli.timing import Steps
    from swe_cli.workspace import Workspace

    check_dtype(request.dtype)
    check_device(request.device)
    steps = Steps()
    with steps.timed("prepare"):
        sets = load_eval_sets(request)
        refusal_judge = PatternJudge.from_files(request.patterns)
        judge = (
            refusal_judge
            if request.judge == "pattern"
            else GuardJudge.load(request.judge, device=request.device, dtype=request.dtype)
        )
    inputs = eval_inputs(request, sets, judge, refusal_judge)
    with ui.progress() as update:
        if request.edit is not None:
            report = run_eval_edit(
                str(request.baseline),
                load_edit(request.edit),
                inputs,
                progress=update,
                label=request.label or request.model,
                cache=request.base_cache,
                shared=request.shared,
                steps=steps,
            )
        else:
            report = run_eval(
                request.model,
                inputs,
                baseline=request.baseline,
                progress=update,
                backend=request.backend,
                tensor_parallel_size=request.tensor_parallel_size,
                adapter=request.adapter,
                label=request.label,
            )
    space = None if request.workspace is None else Workspace(request.workspace)
    # align writes its report into the workspace's eval folder: written once, not twice
    into_workspace = (
        space is not None
        and request.output is not None
        and (Path(request.output).resolve() == space.eval_dir.resolve())
    )
    with steps.timed("report"):
        written: dict[str, Path] = {}
        if request.output is not None and not into_workspace:
            written = write_report(report, request.output)
        if space is not None:
            # the workspace's copy feeds the model card: models named without local paths
            kept = write_report_folder(public_names(report), space.eval_dir)
            written = kept if into_workspace else written
    if request.output is not None:
        names = ", ".join(sorted(p.name for p in written.values()))
        ui.info(f"report written to {request.output} ({names})")
    if space is not None and space.exists():
        space.record_stage(
            "eval",
            {
                "model": request.model,
                "adapter": None if request.adapter is None else str(request.adapter),
                "baseline": request.baseline,
                "split": request.split,
                "judge": request.judge,
            },
            {
                "report": str(space.eval_dir / "report.json"),
                "mean": report.to_dict()["model"]["mean"],
                # where the time went: prepare, report and, in memory, load, base, kl, edited
                "seconds": steps.rounded(),
                "cached": list(steps.cached),
                # the edit this eval measured: a card shows the table only beside it
                "edit_sha256": edit_hash(request.edit)
                if request.edit is not None
                else edited_model_hash(
                    request.adapter if request.adapter is not None else Path(request.model)
                ),
            },
        )
    if not ui.quiet:
        ui.show(rich_table(report))
    return report
