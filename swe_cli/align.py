"""`swe align` and `swe demo`: the whole pipeline as one typed request, probe -> localize
(-> select) -> solve -> apply (-> eval and the shipping gate), in one resumable workspace. This
module owns the default workspace, the recipe choice and the model card's gate note; the stage
calls it makes are those of swe_cli/pipeline.py, pipeline_artifacts.py and pipeline_eval.py."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from swe_cli.errors import Interrupted, SweError
from swe_cli.gate import GateDecision, GateLimits
from swe_cli.gate import check as check_gate
from swe_cli.models import SharedModel
from swe_cli.pipeline import (
    SILENT,
    ProbeRequest,
    Ui,
    check_method,
    check_output,
    check_run,
    localize,
    moment_layers,
    probe,
    select,
    selection_summary,
    selection_warning,
    solve,
    writing,
)
from swe_cli.pipeline_artifacts import ApplyRequest, apply
from swe_cli.pipeline_eval import EvalRequest, evaluate
from swe_cli.settings import Recipe, parse_layers


def default_workspace(model: str, langs: list[str]) -> Path:
    """A cache folder keyed by model and languages, so a re-run resumes."""
    cache = Path(os.environ.get("SWE_CACHE", Path.home() / ".cache" / "swe"))
    name = Path(model).name or model
    slug = "".join(ch if ch.isalnum() or ch in "-." else "-" for ch in name)[:60]
    key = hashlib.sha256(
        f"{Path(model).resolve() if Path(model).exists() else model}|{','.join(langs)}".encode()
    ).hexdigest()[:10]
    return cache / "workspaces" / f"{slug}-{'-'.join(langs)}-{key}"


def builtin_data(name: str) -> str:
    from importlib import resources

    return str(resources.files("swe_cli") / "data" / name)


def pick_recipe(
    model_dir: Path, recipe_file: Path | None, overrides: dict[str, Any], ui: Ui = SILENT
) -> Recipe:
    from swe_cli.architectures import model_shape
    from swe_cli.io.checkpoint import load_config
    from swe_cli.recipe import apply_overrides, load_recipe, select_recipe

    shape = model_shape(load_config(model_dir))
    if recipe_file is not None:
        recipe = load_recipe(recipe_file)
        reason = f"from {recipe_file}"
    else:
        recipe = select_recipe(shape.model_type, shape.num_layers, shape.hidden_size)
        reason = f"picked for model_type={shape.model_type}, {shape.num_layers} layers, hidden {shape.hidden_size}"
    recipe = apply_overrides(recipe, overrides)
    check_method(recipe.solve.method)
    validated = " — " + recipe.validated if recipe.validated else ""
    ui.info(f"recipe [bold]{recipe.name}[/bold] ({reason}){validated}")
    return recipe


@dataclass(frozen=True)
class AlignRequest:
    model: str
    langs: list[str]
    output: Path
    workspace: Path | None = None
    harmful: str = "DAMO-NLP-SG/MultiJail"
    harmless: str | None = None  # None: the built-in set
    general: str | None = None  # None: the built-in set
    hrl: str = "en"
    recipe: Path | None = None  # None: picked from the model's config
    sets: list[str] = field(default_factory=list)  # --set section.field=value
    method: str | None = None
    tune: bool = False  # choose among candidates by refusal even when the recipe pins a method
    run_eval: bool = False
    gate: bool = True  # with run_eval: refuse to write OUT when the edit makes things worse
    limits: GateLimits = field(default_factory=GateLimits)
    patterns: list[Path] = field(default_factory=list)
    device: str = "cpu"
    dtype: str = "auto"
    device_map: str | None = None
    revision: str | None = None
    link: bool = False
    force: bool = False
    dry_run: bool = False
    utility: str | None = "builtin"  # eval's short answers, multiple choice, over-refusal probes
    choices: str | None = "builtin"
    over_refusal: str | None = "builtin"
    push_to_hub: str | None = None  # the CLI pushes after align; --dry-run lists the files


def align(request: AlignRequest, ui: Ui = SILENT) -> dict[str, Any]:
    from swe_cli.io.checkpoint import resolve_model
    from swe_cli.io.files import check_overlap
    from swe_cli.recipe import parse_set_options

    check_run(request.langs, request.hrl, request.device, request.dtype)
    if request.output.exists() and not request.force and not request.dry_run:
        raise SweError(
            f"output {request.output} already exists",
            hint="choose another -o or pass --force to replace it",
        )
    overrides = parse_set_options(request.sets)
    if request.method:
        overrides["solve.method"] = request.method
    resolved = resolve_model(request.model, request.revision)  # once per run
    workspace = request.workspace or default_workspace(request.model, request.langs)
    protected = [("base model folder", resolved.path), ("workspace", workspace)]
    if request.dry_run:
        check_overlap(request.output, protected)
    else:
        check_output(request.output, protected, request.force)
    check_chat_template(resolved.path)
    recipe = pick_recipe(resolved.path, request.recipe, overrides, ui)
    harmless = request.harmless or builtin_data("harmless.jsonl")
    general = request.general if request.general is not None else builtin_data("general.jsonl")
    solve_config = recipe.solve.resolve(request.device)
    selecting = request.tune or solve_config.method == "auto"
    # every candidate is read before any work: a typo fails now, not after the probe
    moments = moment_layers(resolved.path, recipe.select, solve_config, selecting)
    streamed = parse_layers(recipe.probe.stats_layers)
    unstreamed = sorted(set(moments or ()) - set(streamed or ())) if streamed is not None else []
    if unstreamed:
        raise SweError(
            f"probe.stats_layers streams moments for layers {list(streamed or ())} only, but the "
            f"edit{'s' if selecting else ''} to solve need{'' if selecting else 's'} layers "
            f"{unstreamed}",
            hint="add them to probe.stats_layers (--set probe.stats_layers=...) or leave it unset",
        )
    stages = ["probe", "localize", *(["select"] if selecting else []), "solve", "apply"]
    plan = {
        "model": request.model,
        "langs": request.langs,
        "hrl": request.hrl,
        "workspace": str(workspace),
        "output": str(request.output),
        "recipe": recipe.to_dict(),
        "harmful": request.harmful,
        "harmless": harmless,
        "general": general,
        "stages": [*stages, *(["eval"] if request.run_eval else [])],
    }
    if request.dry_run:
        ui.info(f"plan: {' -> '.join(plan['stages'])} in {workspace}, output {request.output}")
        if request.push_to_hub:
            from swe_cli.hub import planned_upload

            plan["upload"] = planned_upload(resolved.path)
            ui.info(
                f"--push-to-hub {request.push_to_hub} would upload {len(plan['upload'])} files: "
                + ", ".join(plan["upload"])
            )
        return {"dry_run": True, **plan}
    # one writer per workspace and per output at a time (released by the kernel on exit)
    with writing(workspace, request.output, create=True):
        ui.info(f"workspace {workspace}")
        timings: dict[str, float] = {}

        @contextmanager
        def timed(stage: str) -> Iterator[None]:
            start = time.perf_counter()
            yield
            timings[stage] = time.perf_counter() - start

        probe_settings = recipe.probe
        if moments and parse_layers(probe_settings.stats_layers) is None:
            # stream moments only where the method needs them
            probe_settings = probe_settings.updated(stats_layers=",".join(map(str, moments)))
        # the base is read from disk once: probe, select and the in-memory eval share it
        shared = SharedModel(
            resolved.path, request.device, request.dtype, device_map=request.device_map
        )
        steps: dict[str, dict[str, Any]] = {}
        with timed("probe"):
            probed = probe(
                ProbeRequest(
                    model=request.model,
                    workspace=workspace,
                    langs=request.langs,
                    harmful=request.harmful,
                    harmless=harmless,
                    general=general,
                    hrl=request.hrl,
                    settings=probe_settings,
                    device=request.device,
                    dtype=request.dtype,
                    device_map=request.device_map,
                    revision=request.revision,
                    resolved=resolved,
                    patterns=request.patterns,
                    shared=shared,
                ),
                ui,
            )
        steps["probe"] = {"seconds": probed["seconds"]}
        with timed("localize"):
            localize(workspace, recipe.localize, ui)
        if selecting:
            with timed("select"), shared.serving():
                solve_config = select(
                    workspace,
                    solve_config,
                    recipe.select,
                    request.limits,
                    dtype=request.dtype,
                    patterns=request.patterns,
                    ui=ui,
                ).updated(device=solve_config.device)
            stop_before_eval(request, workspace, solve_config)
        with timed("solve"):
            solved = solve(workspace, solve_config, ui, warn=False)  # select has just said it
        if request.run_eval:
            summary = _evaluate_then_ship(
                request, workspace, recipe, probe_settings, plan, ui, timed, shared
            )
            summary["solve"] = solved
            steps["eval"] = eval_steps(workspace)
        else:
            with timed("apply"):
                applied = apply(
                    ApplyRequest(
                        output=request.output,
                        workspace=workspace,
                        link=request.link,
                        force=request.force,
                        revision=request.revision,
                    ),
                    ui,
                )
            summary = {**plan, "solve": solved, "apply": applied}
        if selecting:
            summary["select"] = selection_summary(workspace, solve_config)
        shared.release()
        summary["seconds"] = {stage: round(value, 2) for stage, value in timings.items()}
        summary["steps"] = steps
        summary["model_loads"] = shared.loads
        if not ui.quiet:
            from swe_cli.report import timings_table

            ui.show(timings_table(timings, request.output, steps))
        return summary


def eval_steps(workspace: Path) -> dict[str, Any]:
    """The in-memory eval's step seconds and cached steps, as its workspace record has them."""
    from swe_cli.workspace import Workspace

    record = Workspace(workspace).manifest().stage("eval")
    outputs = record.outputs if record is not None else {}
    return {"seconds": outputs.get("seconds") or {}, "cached": outputs.get("cached") or []}


def _evaluate_then_ship(
    request: AlignRequest,
    workspace: Path,
    recipe: Recipe,
    probe_settings: Any,
    plan: dict[str, Any],
    ui: Ui,
    timed: Any,
    shared: Any = None,
) -> dict[str, Any]:
    """Eval, the shipping gate, then OUT. The edit is evaluated on the base loaded once and
    patched in memory, with the base's measurements cached between runs; OUT is written only
    when the gate passes (or is overridden). A model whose parameters do not carry the
    checkpoint's tensor names is evaluated the old way: the edited model written beside OUT
    first, loaded beside the base, and moved into place once the gate has passed."""
    from swe_cli.io.files import move_into_place
    from swe_cli.measure import EditNotInMemory
    from swe_cli.pipeline_eval import base_eval_cache, edit_hash, solved_edit_file

    written = fresh_candidate(request.output)
    eval_request = EvalRequest(
        model=str(request.output),
        label=request.output.name,
        baseline=request.model,
        langs=[request.hrl, *request.langs],
        harmful=request.harmful,
        harmless=plan["harmless"],
        general=plan["general"],
        heldout_fraction=probe_settings.heldout_fraction,
        max_prompts=probe_settings.max_prompts,
        judge=recipe.eval.judge,
        patterns=request.patterns,
        max_new_tokens=recipe.eval.max_new_tokens,
        batch_size=recipe.eval.batch_size,
        device=request.device,
        dtype=request.dtype,
        revision=request.revision,
        output=workspace / "eval",
        workspace=workspace,
        utility=request.utility,
        choices=request.choices,
        over_refusal=request.over_refusal,
        edit=solved_edit_file(workspace),
        base_cache=base_eval_cache(),
        # eval loads without a device map: a model spread by one is not handed over
        shared=shared if request.device_map is None else None,
    )
    applied: dict[str, Any] | None = None

    def write_candidate() -> dict[str, Any]:
        with timed("apply"):
            return apply(
                ApplyRequest(
                    output=written,
                    workspace=workspace,
                    link=request.link,
                    force=True,
                    revision=request.revision,
                ),
                ui,
            )

    with timed("eval"):
        try:
            report = evaluate(eval_request, ui)
        except EditNotInMemory as error:
            ui.info(f"edit not applicable in memory ({error.message}): evaluating it on disk")
            if shared is not None:
                shared.release()  # the on-disk eval loads the base and the edited model itself
            applied = write_candidate()
            report = evaluate(replace(eval_request, model=str(written), edit=None, shared=None), ui)
    summary: dict[str, Any] = {**plan, "eval": report.to_dict()}
    decision = check_gate(report, request.hrl, request.langs, request.limits)
    summary["gate"] = {**decision.to_dict(), "enforced": request.gate}
    note = gate_note(decision, request.gate)
    record_gate(workspace, edit_hash(eval_request.edit), decision, request.gate, note)
    if not decision.passed and request.gate:
        shutil.rmtree(written, ignore_errors=True)
        raise SweError(
            f"shipping gate: {'; '.join(decision.reasons)}; {request.output} not written",
            hint=f"the edit and eval report stay in {workspace}; --no-gate ships it anyway",
        )
    if not decision.passed:
        ui.info(
            "[yellow]warning:[/yellow] shipping gate overridden by --no-gate: "
            + "; ".join(decision.reasons)
        )
    if applied is None:
        applied = write_candidate()
    refresh_card(written, workspace, note)
    move_into_place(written, request.output, replace=request.force)
    summary["apply"] = {**applied, "output": str(request.output)}
    return summary


def stop_before_eval(request: AlignRequest, workspace: Path, chosen: Any) -> None:
    """A gated `--eval` run stops before eval when select's choice already broke the gate's
    limits on the validation prompts (the gate's refusal, sooner); --no-gate goes on."""
    warning = selection_warning(workspace, chosen)
    if warning and request.run_eval and request.gate:
        raise SweError(
            f"shipping gate: select: {warning}; eval not run, {request.output} not written",
            hint=f"see {workspace / 'edit' / 'select.yaml'}; try other select.candidates, or "
            "--no-gate to evaluate and ship it anyway",
        )


def check_chat_template(model_dir: Path) -> None:
    """align formats every prompt as a chat turn: a model without a chat template (a base model,
    or a folder missing its tokenizer files) is refused before any work."""
    config = Path(model_dir) / "tokenizer_config.json"
    if (Path(model_dir) / "chat_template.jinja").is_file() or (
        Path(model_dir) / "chat_template.json"
    ).is_file():
        return
    try:
        if json.loads(config.read_text(encoding="utf-8")).get("chat_template"):
            return
    except (OSError, ValueError, AttributeError):
        pass
    raise SweError(
        f"{model_dir} has no chat template: swe aligns chat (instruct) models",
        hint="use the model's instruct version, or add its chat template to tokenizer_config.json",
    )


def candidate_folder(output: Path) -> Path:
    """Where align writes the edited model while eval and the gate decide: a hidden sibling of
    OUT (same filesystem, so moving it into place is a rename), named with this process's PID."""
    return output.parent / f".{output.name}.swe-candidate-{os.getpid()}"


def fresh_candidate(output: Path) -> Path:
    """This run's candidate folder, after removing those that killed runs left behind (the
    caller holds OUT's lock, so no other live run owns one)."""
    for stale in output.parent.glob(f".{output.name}.swe-candidate*"):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
    return candidate_folder(output)


def gate_note(decision: GateDecision, enforced: bool) -> str:
    if decision.passed:
        return "Shipping gate: passed (" + decision.limits.describe() + ")."
    state = "shipped anyway with `--no-gate`" if not enforced else "rejected"
    return f"Shipping gate: **failed**, {state}: " + "; ".join(decision.reasons) + "."


def record_gate(
    workspace: Path, edit_sha256: str | None, decision: GateDecision, enforced: bool, note: str
) -> None:
    """The gate's decision in the workspace, bound to the edit it judged (its sha256): a later
    `swe apply` of the same edit carries it into the card."""
    from swe_cli.workspace import Workspace

    Workspace(workspace).record_stage(
        "gate",
        {"limits": decision.to_dict()["limits"], "enforced": enforced},
        {
            "passed": decision.passed,
            "reasons": list(decision.reasons),
            "note": note,
            "edit_sha256": edit_sha256,
        },
    )


def refresh_card(output: Path, workspace: Path, gate: str | None = None) -> None:
    """Rewrite OUT/README.md with the eval table (and the gate's decision) once eval has run."""
    from swe_cli.card import ModelCard
    from swe_cli.hub import CARD_FILE, EVAL_CHART, PROVENANCE_FILE
    from swe_cli.io.files import atomic_write_text
    from swe_cli.report import CHART_NAME
    from swe_cli.workspace import Workspace

    space = Workspace(workspace)
    provenance = json.loads((output / PROVENANCE_FILE).read_text(encoding="utf-8"))
    report = space.eval_report(str((provenance.get("edit") or {}).get("sha256")))
    card = ModelCard.for_provenance(provenance, space.base_dir(), report)
    chart = space.eval_dir / CHART_NAME
    if card.eval_report and chart.is_file():  # the chart of the same eval as the table
        shutil.copyfile(chart, output / EVAL_CHART)
    card = replace(
        card, gate_note=gate, chart=EVAL_CHART if (output / EVAL_CHART).is_file() else None
    )
    atomic_write_text(output / CARD_FILE, card.render(provenance))


@dataclass(frozen=True)
class DemoRequest:
    output: Path = Path("swe-demo")
    seed: int = 0
    method: str | None = None
    sets: list[str] = field(default_factory=list)
    force: bool = False


DEMO_FILE = "swe-demo.json"  # marks a demo folder and the settings it was made with


def demo(request: DemoRequest, ui: Ui = SILENT) -> dict[str, Any]:
    """Build (or reuse) the organism and align it for its LRLs with eval, into one folder. An
    interrupted demo resumes when run again with the same folder and settings."""
    from swe_cli.io.files import atomic_write_text
    from swe_cli.organism import cached_organism
    from swe_cli.organism.utility_sets import write_utility_sets

    output = request.output
    settings = {"seed": request.seed, "method": request.method, "sets": list(request.sets)}
    resuming = _check_demo_folder(output, settings, request.force)
    ui.info("model organism: building or reusing the cached one (minutes the first time)")
    try:
        with ui.progress() as report:
            organism = cached_organism(request.seed, report=report)
    except KeyboardInterrupt:
        raise Interrupted(
            "the unfinished organism build is discarded (nothing else was written); "
            f"re-run `swe demo -o {output}` to start it again"
        ) from None
    ui.info(f"organism at {organism.path}: HRL {organism.hrl}, LRLs {', '.join(organism.lrls)}")
    if resuming:
        ui.info(f"resuming the interrupted demo in {output}")
    elif output.exists():
        shutil.rmtree(output)  # --force
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output / DEMO_FILE, json.dumps(settings, sort_keys=True) + "\n")
    try:
        # the built-in 10-language sets mean nothing to the toy: its own short answers and choices
        utility, choices = write_utility_sets(output / "utility")
        return align(
            AlignRequest(
                model=str(organism.model_dir),
                langs=list(organism.lrls),
                output=output / "aligned",
                workspace=output / "workspace",
                harmful=str(organism.harmful),
                harmless=str(organism.harmless),
                general=str(organism.general),
                hrl=organism.hrl,
                sets=request.sets,
                method=request.method,
                run_eval=True,
                patterns=[organism.refusal_patterns],
                dtype="float32",
                utility=str(utility),
                choices=str(choices),
                over_refusal="none",
            ),
            ui,
        )
    except KeyboardInterrupt:
        raise Interrupted(
            f"the organism and the finished steps in {output / 'workspace'} are kept; "
            f"re-run `swe demo -o {output}` with the same settings to resume"
        ) from None


def _check_demo_folder(output: Path, settings: dict[str, Any], force: bool) -> bool:
    """Whether output holds an interrupted demo of the same settings (resume it); a new or
    --force folder is False; anything else is refused before work starts."""
    if not output.exists() or force:
        return False
    marker = output / DEMO_FILE
    try:
        recorded = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise SweError(
            f"{output} exists and is not a swe demo folder",
            hint="choose another -o, or pass --force to replace it",
        ) from None
    if recorded != settings:
        given = ", ".join(f"{k} {v}" for k, v in sorted(recorded.items()) if v not in (None, []))
        raise SweError(
            f"demo folder {output} was made with other settings ({given or 'the defaults'})",
            hint="re-run with those settings to resume it, choose another -o, or pass --force",
        )
    if (output / "aligned").exists():
        raise SweError(
            f"the demo in {output} is complete (aligned model in {output / 'aligned'})",
            hint="choose another -o, or pass --force to run it again",
        )
    return True
