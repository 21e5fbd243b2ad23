"""The stage calls behind every command: each takes a typed request or settings, runs one stage
and returns its summary; `swe align`/`swe demo` chain them (swe_cli/align.py). The command line
builds a request and calls one function here or in pipeline_artifacts.py (apply, verify, push)
and pipeline_eval.py (eval). Terminal output goes through a `Ui` the caller passes."""

from __future__ import annotations

import contextlib
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
    shared: Any = None  # a models.SharedModel: the run's one load of the model (swe align)


BUILTIN_BORDERLINE = "borderline.jsonl"


def borderline_source(setting: str, langs: list[str], ui: Ui = SILENT) -> str | None:
    """The borderline file to probe with the harmless prompts: none, a file, builtin (swe's set,
    when it has every language of the run; else a note and none) or auto, the default (builtin
    when it has every language, else none without a note)."""
    if setting in ("", "none"):
        return None
    if setting not in ("builtin", "auto"):
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
        if setting == "auto":
            return None
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
    borderline_set = None
    if borderline is not None:
        borderline_set = load_prompt_set(borderline, "borderline", all_langs, **split)
        try:
            harmless_set = merge_sets(harmless_set, borderline_set)
        except PromptError as error:  # the borderline set is probed by default: say how to drop it
            raise PromptError(
                error.message, f"{error.hint}, or probe without them: --borderline none"
            ) from None
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
            shared=request.shared,
        )
        _keep_borderline(Workspace(request.workspace), borderline_set)
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
        "seconds": result.steps.rounded(),
    }


def _keep_borderline(workspace: Any, borderline: Any) -> None:
    """WS/prompts/borderline.jsonl: which of the probed harmless ids are borderline requests
    (select measures them apart); removed when this probe has none."""
    path = workspace.prompts_dir / "borderline.jsonl"
    if borderline is None:
        path.unlink(missing_ok=True)
    else:
        borderline.to_jsonl(path)


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
    """The candidate `swe select` measures best on validation prompts (see stages/select.py);
    the unedited model's answers are cached with the base's eval."""
    from swe_cli.stages.base_cache import default_cache_dir
    from swe_cli.stages.select import run_select, selection_table
    from swe_cli.workspace import Workspace

    space = Workspace(workspace)
    with writing(workspace):
        result = run_select(
            space,
            base,
            settings,
            limits,
            dtype=dtype,
            patterns=patterns or [],
            progress=ui.info,
            cache=default_cache_dir(),
        )
    if not ui.quiet:
        manifest = space.manifest()
        ui.show(selection_table(result, manifest.hrl, list(manifest.langs)))
    for line in result.notes:
        ui.info(f"[yellow]note:[/yellow] {line}")
    if result.warning:
        ui.info(f"[yellow]warning:[/yellow] select: {result.warning}")
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


def selection_warning(workspace: Path, config: SolveConfig) -> str | None:
    """select's recorded warning when config is its choice (see stages/select.py)."""
    from swe_cli.stages.select import selection_warning as recorded
    from swe_cli.workspace import Workspace

    return recorded(Workspace(workspace), config)


def selection_summary(workspace: Path, chosen: SolveConfig) -> dict[str, Any]:
    """The chosen candidate as a spec, where select's table of every candidate is, its warning
    (None: the choice is within the gate's limits), n per validation cell and the smallest
    change each gated rate can show."""
    import yaml

    from swe_cli.stages.select import SELECT_FILE, describe

    table = workspace / "edit" / SELECT_FILE
    document = yaml.safe_load(table.read_text(encoding="utf-8")) if table.is_file() else {}
    return {
        "chosen": describe(chosen),
        "table": str(table),
        **{key: document.get(key) for key in ("warning", "prompts", "smallest_change", "notes")},
    }


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
    workspace: Path,
    config: SolveConfig,
    ui: Ui = SILENT,
    reason: str | None = None,
    warn: bool = True,
) -> dict[str, Any]:
    """Solve the edit with config; with a reason, say which method runs and why; with warn,
    repeat select's warning first when config is its choice and broke the gate's limits."""
    from swe_cli.report import solve_table
    from swe_cli.stages.select import selection_warning
    from swe_cli.stages.solve import run_solve
    from swe_cli.workspace import Workspace

    check_method(config.method)
    warning = selection_warning(Workspace(workspace), config) if warn else None
    if warning:
        ui.info(f"[yellow]warning:[/yellow] select: {warning}")
    with writing(workspace):
        summary = run_solve(Workspace(workspace), config)
    if reason:
        ui.info(f"method [bold]{summary['method']}[/bold] ({reason})")
        summary = {**summary, "method_reason": reason}
    if not ui.quiet:
        ui.show(solve_table(summary))
    return summary
