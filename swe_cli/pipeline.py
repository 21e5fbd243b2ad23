"""The stage calls behind every command: each takes a typed request or settings, runs one stage
and returns its summary; `swe align`/`swe demo` chain them (swe_cli/align.py). The command line
builds a request and calls one function here. Terminal output goes through a `Ui` the caller
passes."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swe_cli.errors import PromptError, SweError
from swe_cli.gate import GateLimits
from swe_cli.settings import (
    LocalizeSettings,
    ProbeConfig,
    ProbeSettings,
    SelectSettings,
    SolveConfig,
    check_dtype,
    check_langs,
)

Progress = Callable[[str, int, int], None]


@contextmanager
def _silent_progress() -> Iterator[Progress]:
    yield lambda label, done, total: None


@dataclass(frozen=True)
class Ui:
    """How the pipeline talks to the terminal; the default is silent (library use, tests)."""

    info: Callable[[str], None] = lambda message: None
    show: Callable[[Any], None] = lambda renderable: None  # rich tables
    progress: Callable[[], Any] = _silent_progress
    quiet: bool = True


SILENT = Ui()


@contextmanager
def writing(
    workspace: Path | None = None, output: Path | None = None, create: bool = False
) -> Iterator[None]:
    """Hold the locks of the workspace and the output a stage writes (swe_cli/io/lock.py): a
    second writer of either exits with the holder's PID instead of mixing its files in."""
    from swe_cli.io.lock import lock_output, lock_workspace

    with contextlib.ExitStack() as stack:
        if workspace is not None:
            stack.enter_context(lock_workspace(Path(workspace), create=create))
        if output is not None:
            stack.enter_context(lock_output(Path(output)))
        yield


def check_device(device: str) -> str:
    """A device torch can use here, checked before anything is read or written."""
    if device in ("cpu", "auto", ""):
        return device
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise SweError(
            f"unknown --device '{device}'", hint="use cpu, cuda, cuda:N or mps"
        ) from None
    usable = True
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        usable = count > (parsed.index or 0)
    elif parsed.type == "mps":
        usable = torch.backends.mps.is_available()
    if not usable:
        raise SweError(
            f"--device {device} asked for, but torch sees no such device here",
            hint="use --device cpu, or install a torch build for this accelerator",
        )
    return device


def check_run(langs: list[str], hrl: str, device: str, dtype: str) -> None:
    """Every run-wide option of probe/align, before a prompt is read or a folder created."""
    check_langs(langs, hrl)
    check_dtype(dtype)
    check_device(device)


def check_method(name: str) -> None:
    """A clear error, before any work, unless the edit method is registered (or auto)."""
    from swe_cli.methods import check_method_name

    check_method_name(name)


def check_output(output: Path, protected: list[tuple[str, Path]], force: bool) -> None:
    """An output folder apply may write: outside every protected folder, and an existing one
    only with force (and only a model or edit folder)."""
    from swe_cli.stages.output import check_output as check

    check(output, protected, force)


# -- probe ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProbeRequest:
    model: str
    workspace: Path
    langs: list[str]
    harmful: str
    harmless: str
    general: str | None = None
    hrl: str = "en"
    settings: ProbeSettings = field(default_factory=ProbeSettings)
    device: str = "cpu"
    dtype: str = "auto"
    device_map: str | None = None
    revision: str | None = None
    resolved: Any = None  # a ResolvedModel when the caller has resolved the model already
    patterns: list[Path] = field(default_factory=list)  # extra refusal patterns (HRL check)


BUILTIN_BORDERLINE = "borderline.jsonl"


def borderline_source(setting: str, langs: list[str], ui: Ui = SILENT) -> str | None:
    """The borderline file to probe with the harmless prompts: none, a file, or builtin (swe's
    set, when it has every language of the run; else a note and none)."""
    if setting in ("", "none"):
        return None
    if setting != "builtin":
        return setting
    from importlib import resources

    path = resources.files("swe_cli") / "data" / BUILTIN_BORDERLINE
    if not path.is_file():
        return None
    try:
        present = langs_in(str(path), langs)
    except SweError:
        present = []
    missing = [lang for lang in langs if lang not in present]
    if missing:
        ui.info(
            f"[yellow]note:[/yellow] the built-in borderline requests are not in "
            f"{', '.join(missing)}: probing without them"
        )
        return None
    return str(path)


def probe(request: ProbeRequest, ui: Ui = SILENT) -> dict[str, Any]:
    from swe_cli.io.checkpoint import resolve_model
    from swe_cli.prompts import load_prompt_set, merge_sets
    from swe_cli.stages.probe import LOW_HRL_REFUSAL, run_probe
    from swe_cli.workspace import Workspace

    langs, hrl, settings = request.langs, request.hrl, request.settings
    check_run(langs, hrl, request.device, request.dtype)
    all_langs = [hrl, *[lang for lang in langs if lang != hrl]]
    split = {"heldout_fraction": settings.heldout_fraction, "max_prompts": settings.max_prompts}
    harmful_set = load_prompt_set(request.harmful, "harmful", all_langs, **split)
    harmless_set = load_prompt_set(request.harmless, "harmless", all_langs, **split)
    borderline = borderline_source(settings.borderline, all_langs, ui)
    if borderline is not None:
        harmless_set = merge_sets(
            harmless_set, load_prompt_set(borderline, "borderline", all_langs, **split)
        )
    unused = unused_harmless(harmless_set.unused_langs, harmful_set.unused_langs)
    if unused:
        ui.info(f"[yellow]note:[/yellow] {unused}")
    general_set = None
    if request.general:
        general_set = load_prompt_set(
            request.general,
            "general",
            langs_in(request.general, all_langs),
            heldout_fraction=settings.heldout_fraction,
            require_parallel=False,
        )
    resolved = request.resolved or resolve_model(request.model, request.revision)
    config = ProbeConfig.model_validate(
        {
            **settings.model_dump(),
            "langs": tuple(langs),
            "hrl": hrl,
            "device": request.device,
            "dtype": request.dtype,
            "device_map": request.device_map,
            "patterns": tuple(request.patterns),
        }
    )
    with writing(request.workspace, create=True), ui.progress() as update:
        result = run_probe(
            Workspace(request.workspace),
            resolved,
            harmful_set,
            harmless_set,
            general_set,
            config,
            update,
        )
    ui.info(
        f"[green]probed[/green] {len(result.layers)} layers, {result.shards_written} shards written, "
        f"{result.shards_skipped} reused; moments for layers {result.stats_layers}"
    )
    if result.hrl_refusal is not None and result.hrl_refusal < LOW_HRL_REFUSAL:
        ui.info(
            f"[yellow]warning:[/yellow] the model refused {result.hrl_refusal:.0%} of the {hrl} "
            f"harmful prompts checked: below {LOW_HRL_REFUSAL:.0%}, there is little {hrl} refusal "
            "for an edit to copy (check --hrl, or the model's safety training)"
        )
    return {
        "workspace": str(request.workspace),
        "model": request.model,
        "layers": result.layers,
        "stats_layers": result.stats_layers,
        "shards_written": result.shards_written,
        "shards_skipped": result.shards_skipped,
        "counts": result.counts,
        "hrl_refusal": result.hrl_refusal,
        "unused_harmless_langs": list(harmless_set.unused_langs),
    }


def unused_harmless(harmless_only: tuple[str, ...], harmful_other: tuple[str, ...]) -> str:
    """Say which harmless languages the run leaves out and why ('' when none): probe reads the
    HRL and the target languages only, and a target needs harmful prompts too."""
    if not harmless_only:
        return ""
    lacking = [lang for lang in harmless_only if lang not in harmful_other]
    parts = []
    if lacking:
        parts.append(
            f"harmless prompts in {', '.join(lacking)} are not used: the harmful set has no "
            f"prompts in {'that language' if len(lacking) == 1 else 'those languages'}, so "
            f"{'it' if len(lacking) == 1 else 'they'} cannot be a target"
        )
    other = [lang for lang in harmless_only if lang in harmful_other]
    if other:
        parts.append(
            f"harmless prompts in {', '.join(other)} are not used: not in --langs "
            "(add them to edit those languages too)"
        )
    return "; ".join(parts)


def langs_in(source: str, wanted: list[str]) -> list[str]:
    """General text may cover only some languages: keep the requested ones it has."""
    from swe_cli.prompts import load_prompt_set

    present = []
    for lang in wanted:
        try:
            load_prompt_set(source, "general", [lang], require_parallel=False, max_prompts=1)
            present.append(lang)
        except PromptError:
            continue
    if not present:
        raise SweError(
            f"{source}: general text has none of the languages {wanted}",
            hint="check its lang column",
        )
    return present


# -- localize / tune / solve ----------------------------------------------------------------------
def localize(workspace: Path, settings: LocalizeSettings, ui: Ui = SILENT) -> dict[str, Any]:
    from swe_cli.report import localize_table
    from swe_cli.stages.localize import run_localize
    from swe_cli.workspace import Workspace

    with writing(workspace):
        summary = run_localize(Workspace(workspace), settings)
    if not ui.quiet:
        ui.show(localize_table(summary))
    return summary


def tune(workspace: Path, base: SolveConfig, confirm: int = 0, ui: Ui = SILENT) -> SolveConfig:
    """The tuned solve configuration; with confirm > 0, the `confirm` best candidates are also
    checked by generation on validation prompts and the confirmed choice wins."""
    from swe_cli.stages.tune import candidates_table, confirmed_choice
    from swe_cli.stages.tune import confirm as confirm_candidates
    from swe_cli.stages.tune import tune as run_tune
    from swe_cli.workspace import Workspace

    check_method(base.method)
    space = Workspace(workspace)
    with writing(workspace):
        result = run_tune(space, base)
    if not ui.quiet:
        ui.show(candidates_table(result))
    if confirm <= 0:
        return result.best
    with writing(workspace):
        rows = confirm_candidates(space, result, top=confirm, device=base.device)
    chosen = confirmed_choice(rows)
    ui.info(f"--confirm: {len(rows) - 1} candidates checked by generation on validation prompts")
    return chosen


def select(
    workspace: Path,
    base: SolveConfig,
    settings: SelectSettings,
    limits: GateLimits,
    *,
    dtype: str = "auto",
    patterns: list[Path] | None = None,
    ui: Ui = SILENT,
) -> SolveConfig:
    """The candidate `swe select` measures best on validation prompts (see stages/select.py)."""
    from swe_cli.stages.select import run_select, selection_table
    from swe_cli.workspace import Workspace

    space = Workspace(workspace)
    with writing(workspace):
        result = run_select(
            space, base, settings, limits, dtype=dtype, patterns=patterns or [], progress=ui.info
        )
    if not ui.quiet:
        manifest = space.manifest()
        ui.show(selection_table(result, manifest.hrl, list(manifest.langs)))
    return result.chosen


def moment_layers(
    model_dir: Path, settings: SelectSettings, config: SolveConfig, selecting: bool
) -> tuple[int, ...] | None:
    """The layers whose moments the probe must stream: the pinned method's, or with selection
    every candidate's (the candidates are parsed here, before any work)."""
    from swe_cli.architectures import model_shape
    from swe_cli.io.checkpoint import load_config
    from swe_cli.methods import get_method
    from swe_cli.stages.select import candidate_configs
    from swe_cli.stages.select import moment_layers as candidate_moment_layers

    if not selecting:
        return get_method(config.method).moment_layers(config)
    num_layers = model_shape(load_config(model_dir)).num_layers
    configs = candidate_configs(settings, config, num_layers)
    return candidate_moment_layers(configs) or None


def selection_summary(workspace: Path, chosen: SolveConfig) -> dict[str, str]:
    """The chosen candidate as a spec, and where select's table of every candidate is."""
    from swe_cli.stages.select import SELECT_FILE, describe

    return {"chosen": describe(chosen), "table": str(workspace / "edit" / SELECT_FILE)}


def default_solve(
    workspace: Path, overrides: dict[str, Any], device: str = "cpu"
) -> tuple[SolveConfig, str]:
    """What `swe solve` runs without --method, and why: the edit `swe select` chose in this
    workspace, else the solve settings of the built-in recipe for the workspace's model (the
    same recipe `swe align` picks); options given on the command line override either."""
    from swe_cli.recipe import select_recipe
    from swe_cli.stages.select import selected_config
    from swe_cli.workspace import Workspace

    space = Workspace(workspace)
    manifest = space.manifest()
    record = manifest.stage("select")
    if record is not None and record.done:
        config, reason = selected_config(space, device), "chosen by swe select"
    else:
        model = manifest.model
        recipe = select_recipe(model.model_type, model.num_layers, model.hidden_size)
        config, reason = recipe.solve.resolve(device), f"from recipe {recipe.name}"
    if overrides:
        config = SolveConfig.model_validate({**config.model_dump(), **overrides})
        reason += "; " + ", ".join(f"{key} given" for key in overrides)
    return config, reason


def solve(
    workspace: Path, config: SolveConfig, ui: Ui = SILENT, reason: str | None = None
) -> dict[str, Any]:
    """Solve the edit with config; with a reason, say which method runs and why."""
    from swe_cli.report import solve_table
    from swe_cli.stages.solve import run_solve
    from swe_cli.workspace import Workspace

    check_method(config.method)
    with writing(workspace):
        summary = run_solve(Workspace(workspace), config)
    if reason:
        ui.info(f"method [bold]{summary['method']}[/bold] ({reason})")
        summary = {**summary, "method_reason": reason}
    if not ui.quiet:
        ui.show(solve_table(summary))
    return summary


# -- apply / push / verify ------------------------------------------------------------------------
@dataclass(frozen=True)
class ApplyRequest:
    output: Path
    workspace: Path | None = None
    edit: str | None = None
    base: str | None = None
    edit_only: bool = False
    device: str = "auto"
    link: bool = False
    force: bool = False
    sync: bool = False
    revision: str | None = None
    as_lora: bool = False
    max_lora_rank: int = 64


def apply(request: ApplyRequest, ui: Ui = SILENT) -> dict[str, Any]:
    with writing(request.workspace if request.edit is None else None, request.output):
        return _apply(request, ui)


def _apply(request: ApplyRequest, ui: Ui) -> dict[str, Any]:
    from swe_cli.io.checkpoint import resolve_model
    from swe_cli.stages.apply import apply_edit_artifact, apply_workspace, export_edit
    from swe_cli.workspace import Workspace

    if request.as_lora:
        return apply_lora(request, ui)
    options = {"device": request.device, "link": request.link, "force": request.force}
    if request.edit is not None:
        if request.base is None:
            raise SweError(
                "--edit needs --base MODEL", hint="pass the base model the edit was computed on"
            )
        with ui.progress() as update:
            result = apply_edit_artifact(
                request.edit,
                resolve_model(request.base, request.revision),
                request.output,
                progress=update,
                sync=request.sync,
                **options,
            )
    elif request.workspace is None:
        raise SweError("nothing to apply", hint="pass -w WORKSPACE, or --edit EDIT --base MODEL")
    elif request.edit_only:
        path = export_edit(Workspace(request.workspace), request.output, force=request.force)
        ui.info(f"[green]edit written[/green] to {path}")
        return {"output": str(path), "edit_only": True}
    else:
        with ui.progress() as update:
            result = apply_workspace(
                Workspace(request.workspace),
                request.output,
                progress=update,
                sync=request.sync,
                **options,
            )
    for warning in result.warnings:
        ui.info(f"[yellow]warning:[/yellow] {warning}")
    ui.info(
        f"[green]wrote[/green] {result.output}: {result.rows_edited} rows in {result.tensors_edited} tensors patched, "
        f"{len(result.copied)} files copied, {len(result.linked)} linked, rows verified ({result.seconds:.1f} s)"
    )
    return result.summary()


def apply_lora(request: ApplyRequest, ui: Ui = SILENT) -> dict[str, Any]:
    """`swe apply --as-lora`: the workspace's (or a saved) edit as a PEFT LoRA adapter."""
    from swe_cli.io.checkpoint import resolve_model
    from swe_cli.stages.export import export_artifact_lora, export_workspace_lora
    from swe_cli.workspace import Workspace

    if request.edit_only:
        raise SweError("--as-lora and --edit-only exclude each other", hint="choose one")
    options = {"max_rank": request.max_lora_rank, "force": request.force}
    if request.edit is not None:
        if request.base is None:
            raise SweError(
                "--edit needs --base MODEL", hint="pass the base model the edit was computed on"
            )
        base = resolve_model(request.base, request.revision)
        result = export_artifact_lora(request.edit, base, request.output, **options)
    elif request.workspace is None:
        raise SweError("nothing to apply", hint="pass -w WORKSPACE, or --edit EDIT --base MODEL")
    else:
        result = export_workspace_lora(Workspace(request.workspace), request.output, **options)
    ui.info(
        f"[green]wrote[/green] LoRA adapter {result.output}: rank {result.rank}, "
        f"{len(result.modules)} modules, {result.adapter_bytes / 1024:.1f} KiB, max reconstruction "
        f"error {result.max_reconstruction_error:.2g} ({result.seconds:.1f} s)"
    )
    return result.summary()


def push(folder: Path, repo: str, private: bool, revision: str | None, ui: Ui = SILENT) -> dict:
    from swe_cli.hub import push_to_hub

    url = push_to_hub(
        folder, repo, private=private, revision=revision, token=os.environ.get("HF_TOKEN")
    )
    ui.info(f"[green]uploaded[/green] {folder} to {url}")
    return {"output": str(folder), "pushed_to": url}


def verify(
    output: Path,
    base: str,
    workspace: Path | None,
    revision: str | None,
    ui: Ui = SILENT,
    problem: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    from swe_cli.edit import workspace_edit
    from swe_cli.io.checkpoint import resolve_model
    from swe_cli.stages.export import is_adapter
    from swe_cli.stages.verify import verify_checkpoint
    from swe_cli.workspace import Workspace

    edit = workspace_edit(Workspace(workspace)) if workspace is not None else None
    if is_adapter(output):
        return verify_lora(output, resolve_model(base, revision).path, edit, ui, problem)
    with ui.progress() as update:
        report = verify_checkpoint(
            output, resolve_model(base, revision).path, edit, progress=update
        )
    if report.ok:
        ui.info(
            f"[green]verified[/green] {output}: {report.tensors_identical} tensors byte-identical, "
            f"{report.tensors_edited} edited ({report.rows_checked} rows exact)"
        )
    else:
        for item in report.problems:
            problem(f"mismatch: {item}")
    return report.summary()


def verify_lora(
    output: Path,
    base_dir: Path,
    edit: Any,
    ui: Ui = SILENT,
    problem: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """`swe verify` on an adapter folder: against the base and the edit (`edit`, else the one
    the adapter carries); no edit to compare with is a failure."""
    from swe_cli.stages.verify import verify_adapter

    report = verify_adapter(output, base_dir, edit)
    if report.ok:
        against = "the edit" if edit is not None else "the edit it carries"
        error = report.max_reconstruction_error
        ui.info(
            f"[green]verified[/green] LoRA adapter {output}: {report.modules_checked} modules, "
            f"rank {report.rank}, against the base and {against}"
            + (f"; max reconstruction error {error:.2g}" if error is not None else "")
        )
    else:
        for item in report.problems:
            problem(f"mismatch: {item}")
    return report.summary()


def check_adapter_base(adapter: Path, model: str, revision: str | None) -> None:
    """`swe eval --adapter`: the adapter must pass `swe verify` against MODEL (rows it changes,
    config, factors), or the measurement would be of something else."""
    from swe_cli.errors import LoraError
    from swe_cli.io.checkpoint import resolve_model
    from swe_cli.stages.export import is_adapter
    from swe_cli.stages.verify import verify_adapter

    if not is_adapter(Path(adapter)):
        return  # loading it says what is wrong
    report = verify_adapter(Path(adapter), resolve_model(model, revision).path)
    if not report.ok:
        more = f" (and {len(report.problems) - 1} more)" if len(report.problems) > 1 else ""
        raise LoraError(
            f"adapter {adapter} does not verify against {model}: {report.problems[0]}{more}",
            hint=f"`swe verify {adapter} --base {model}` lists every problem; evaluate it on the "
            "base it was exported from",
        )


# -- eval -----------------------------------------------------------------------------------------
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


def _eval_edit_in_memory(
    request: EvalRequest, sets: dict[str, Any], judge: Any, refusal_judge: Any, progress: Any
) -> Any:
    from swe_cli.edit import load_edit
    from swe_cli.stages.evaluate import run_eval_edit

    if request.baseline is None or request.edit is None:
        raise SweError("an edit evaluated in memory needs its base model as the baseline")
    return run_eval_edit(
        request.baseline,
        load_edit(request.edit),
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
        progress=progress,
        label=request.label or request.model,
        cache=request.base_cache,
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
    if request.adapter is not None:
        check_adapter_base(request.adapter, request.model, request.revision)
    from swe_cli.hub import edited_model_hash
    from swe_cli.judges import GuardJudge, PatternJudge
    from swe_cli.report import rich_table
    from swe_cli.report_files import public_names, write_report, write_report_folder
    from swe_cli.stages.evaluate import run_eval
    from swe_cli.workspace import Workspace

    check_dtype(request.dtype)
    check_device(request.device)
    sets = load_eval_sets(request)
    refusal_judge = PatternJudge.from_files(request.patterns)
    judge = (
        refusal_judge
        if request.judge == "pattern"
        else GuardJudge.load(request.judge, device=request.device, dtype=request.dtype)
    )
    with ui.progress() as update:
        if request.edit is not None:
            report = _eval_edit_in_memory(request, sets, judge, refusal_judge, update)
        else:
            report = run_eval(
                request.model,
                baseline=request.baseline,
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
                progress=update,
                backend=request.backend,
                tensor_parallel_size=request.tensor_parallel_size,
                adapter=request.adapter,
                label=request.label,
            )
    if request.output is not None:
        written = write_report(report, request.output)
        names = ", ".join(sorted(p.name for p in written.values()))
        ui.info(f"report written to {request.output} ({names})")
    if request.workspace is not None:
        space = Workspace(request.workspace)
        # the workspace's copy feeds the model card: models named without local paths
        write_report_folder(public_names(report), space.eval_dir)
        if space.exists():
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
