"""The `swe` command line: each command parses its options and calls one stage function.

Heavy libraries (torch, transformers) are imported inside commands so `--help` stays fast.
Every user-facing failure is a SweError, printed once as one red line plus a hint."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from swe_cli import __version__
from swe_cli.errors import SweError

app = typer.Typer(
    name="swe",
    help="Close the multilingual safety gap of open-weight LLMs with a sparse, closed-form weight edit.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)
out = Console()
STATE: dict[str, bool] = {"debug": False, "quiet": False}

# -- shared option types ------------------------------------------------------------------------
Workspace_ = Annotated[
    Path, typer.Option("-w", "--workspace", help="Workspace folder shared by the stages.")
]
Json_ = Annotated[bool, typer.Option("--json", help="Print a machine-readable summary on stdout.")]
Quiet_ = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or tables.")]
Device_ = Annotated[str, typer.Option("--device", help="torch device: cpu, cuda, cuda:1, mps.")]
Dtype_ = Annotated[
    str, typer.Option("--dtype", help="Model dtype: auto, bfloat16, float16, float32.")
]
BatchSize_ = Annotated[int, typer.Option("--batch-size", min=1, help="Prompts per forward pass.")]
Langs_ = Annotated[
    str, typer.Option("--langs", help="Comma-separated target (low-resource) languages.")
]
Hrl_ = Annotated[
    str, typer.Option("--hrl", help="High-resource language whose behaviour is the target.")
]
Revision_ = Annotated[
    str | None, typer.Option("--revision", help="Hub revision (branch, tag or commit).")
]


def split_list(value: str | None) -> list[str]:
    return [item.strip() for item in (value or "").split(",") if item.strip()]


def parse_layers(value: str | None) -> tuple[int, ...] | None:
    """'all' or empty -> None; '3' / '1,2,5' / '1-3' / '-1' -> layer numbers."""
    if value is None or value.strip().lower() in {"", "all"}:
        return None
    layers: list[int] = []
    try:
        for part in split_list(value):
            if "-" in part[1:]:
                start, end = part[0] + part[1:].split("-", 1)[0], part[1:].split("-", 1)[1]
                layers.extend(range(int(start), int(end) + 1))
            else:
                layers.append(int(part))
    except ValueError:
        raise SweError(
            f"cannot read layers '{value}'", hint="use e.g. 3, 1,2,5, 1-3 or all"
        ) from None
    return tuple(layers)


@contextmanager
def progress_bar(enabled: bool = True) -> Iterator[Callable[[str, int, int], None]]:
    """A rich progress display on stderr; yields a callback(label, done, total)."""
    if not enabled or STATE["quiet"]:
        yield lambda label, done, total: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    tasks: dict[str, Any] = {}
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
    ) as progress:

        def update(label: str, done: int, total: int) -> None:
            if label not in tasks:
                tasks[label] = progress.add_task(label, total=total)
            progress.update(tasks[label], completed=done, total=total)

        yield update


def emit(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")


def info(message: str) -> None:
    if not STATE["quiet"]:
        err.print(message)


@app.callback(invoke_without_command=True)
def root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    STATE["debug"] = debug
    if version:
        out.print(f"swe {__version__}")
        raise typer.Exit()


# -- probe ----------------------------------------------------------------------------------------
@app.command()
def probe(
    model: Annotated[str, typer.Argument(help="Hub model id or local model folder.")],
    workspace: Workspace_,
    langs: Langs_,
    harmful: Annotated[
        str,
        typer.Option(
            "--harmful", help="Harmful prompts: MultiJail CSV, CSV/JSONL, or Hub dataset."
        ),
    ],
    harmless: Annotated[
        str, typer.Option("--harmless", help="Harmless prompts (CSV/JSONL, optional answers).")
    ],
    general: Annotated[
        str | None, typer.Option("--general", help="General text (long JSONL/CSV) for the moments.")
    ] = None,
    hrl: Hrl_ = "en",
    layers: Annotated[
        str, typer.Option("--layers", help="Layers to record: all, 3, 1,2,5 or 1-3.")
    ] = "all",
    stats_layers: Annotated[
        str | None,
        typer.Option(
            "--stats-layers",
            help="Layers whose all-position moments are streamed (default: all recorded, if they fit in 2 GiB).",
        ),
    ] = None,
    positions: Annotated[
        int, typer.Option("--positions", min=1, help="Record the last N prompt positions.")
    ] = 1,
    heldout_fraction: Annotated[
        float, typer.Option("--heldout-fraction", help="Share of ids held out for eval.")
    ] = 0.5,
    max_prompts: Annotated[
        int | None, typer.Option("--max-prompts", help="Use at most N prompt ids per set.")
    ] = None,
    batch_size: BatchSize_ = 8,
    device: Device_ = "cpu",
    dtype: Dtype_ = "auto",
    device_map: Annotated[
        str | None,
        typer.Option(
            "--device-map",
            help="accelerate device map (e.g. auto) for models larger than one device.",
        ),
    ] = None,
    revision: Revision_ = None,
    quiet: Quiet_ = False,
    as_json: Json_ = False,
) -> None:
    """Record MLP activations of harmful/harmless prompts (fit split) into the workspace."""
    STATE["quiet"] = quiet or as_json
    summary = do_probe(
        model,
        workspace,
        split_list(langs),
        harmful,
        harmless,
        general,
        hrl,
        parse_layers(layers),
        parse_layers(stats_layers),
        positions,
        heldout_fraction,
        max_prompts,
        batch_size,
        device,
        dtype,
        device_map,
        revision,
    )
    emit(summary, as_json)


def do_probe(
    model: str,
    workspace: Path,
    langs: list[str],
    harmful: str,
    harmless: str,
    general: str | None,
    hrl: str,
    layers: tuple[int, ...] | None,
    stats_layers: tuple[int, ...] | None,
    positions: int,
    heldout_fraction: float,
    max_prompts: int | None,
    batch_size: int,
    device: str,
    dtype: str,
    device_map: str | None,
    revision: str | None,
) -> dict[str, Any]:
    from swe_cli.checkpoint import resolve_model
    from swe_cli.prompts import load_prompt_set
    from swe_cli.stages.probe import ProbeConfig, run_probe
    from swe_cli.workspace import Workspace

    if not langs:
        raise SweError("no target languages given", hint="pass --langs, e.g. --langs bn,sw,th")
    all_langs = [hrl, *[lang for lang in langs if lang != hrl]]
    harmful_set = load_prompt_set(
        harmful, "harmful", all_langs, heldout_fraction=heldout_fraction, max_prompts=max_prompts
    )
    harmless_set = load_prompt_set(
        harmless, "harmless", all_langs, heldout_fraction=heldout_fraction, max_prompts=max_prompts
    )
    general_set = None
    if general:
        general_set = load_prompt_set(
            general,
            "general",
            _langs_in(general, all_langs),
            heldout_fraction=heldout_fraction,
            require_parallel=False,
        )
    resolved = resolve_model(model, revision)
    config = ProbeConfig(
        langs=tuple(langs),
        hrl=hrl,
        layers=layers,
        stats_layers=stats_layers,
        positions=positions,
        batch_size=batch_size,
        device=device,
        dtype=dtype,
        device_map=device_map,
    )
    with progress_bar() as update:
        result = run_probe(
            Workspace(workspace), resolved, harmful_set, harmless_set, general_set, config, update
        )
    info(
        f"[green]probed[/green] {len(result.layers)} layers, {result.shards_written} shards written, "
        f"{result.shards_skipped} reused; moments for layers {result.stats_layers}"
    )
    return {
        "workspace": str(workspace),
        "model": model,
        "layers": result.layers,
        "stats_layers": result.stats_layers,
        "shards_written": result.shards_written,
        "shards_skipped": result.shards_skipped,
        "counts": result.counts,
    }


def _langs_in(source: str, wanted: list[str]) -> list[str]:
    """General text may cover only some languages: keep the requested ones it has."""
    from swe_cli.errors import PromptError
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


# -- localize -------------------------------------------------------------------------------------
@app.command()
def localize(
    workspace: Workspace_,
    tau_mag: Annotated[
        float, typer.Option("--tau-mag", help="z-score threshold of the mean difference.")
    ] = 2.0,
    tau_stat: Annotated[float, typer.Option("--tau-stat", help="Cohen's d threshold.")] = 1.0,
    quiet: Quiet_ = False,
    as_json: Json_ = False,
) -> None:
    """Score every neuron (paper Appendix B) and select the safety neurons per layer and language."""
    STATE["quiet"] = quiet or as_json
    emit(do_localize(workspace, tau_mag, tau_stat), as_json)


def do_localize(workspace: Path, tau_mag: float, tau_stat: float) -> dict[str, Any]:
    from swe_cli.stages.localize import LocalizeConfig, run_localize
    from swe_cli.workspace import Workspace

    summary = run_localize(Workspace(workspace), LocalizeConfig(tau_mag=tau_mag, tau_stat=tau_stat))
    if not STATE["quiet"]:
        show_localize(summary)
    return summary


def show_localize(summary: dict[str, Any]) -> None:
    from rich.table import Table

    layers = summary["layers"]
    langs = list(next(iter(layers.values()))["sizes"]) if layers else []
    table = Table(title="safety neurons per layer (|S|) and Jaccard overlap with the HRL")
    table.add_column("layer", justify="right")
    for lang in langs:
        table.add_column(f"|S| {lang}", justify="right")
    for lang in langs[1:]:
        table.add_column(f"J({langs[0]},{lang})", justify="right")
    for layer, values in layers.items():
        sizes = [str(values["sizes"][lang]) for lang in langs]
        overlaps = [f"{values['jaccard'][langs[0]][lang]:.2f}" for lang in langs[1:]]
        table.add_row(str(layer), *sizes, *overlaps)
    err.print(table)


# -- solve ----------------------------------------------------------------------------------------
@app.command()
def solve(
    workspace: Workspace_,
    method: Annotated[
        str,
        typer.Option(
            "--method",
            help="Solver: paper (gate rows, Alg. 1) or residual (down_proj, MEMIT-style).",
        ),
    ] = "paper",
    layers: Annotated[
        str | None, typer.Option("--layers", help="Layers to edit (default: method's choice).")
    ] = None,
    rank: Annotated[
        int | None,
        typer.Option(
            "--rank", help="Rank cap of the edit [default: 32 for paper, none for residual]."
        ),
    ] = None,
    gamma: Annotated[
        float, typer.Option("--gamma", help="paper: harmless penalty, relative (x N_h/N_s).")
    ] = 1.0,
    lam: Annotated[
        float, typer.Option("--lambda", help="Ridge term, relative (x trace(X^T X)/d).")
    ] = 0.1,
    alpha: Annotated[
        float,
        typer.Option("--alpha", help="residual: all-position preservation weight, relative (x n)."),
    ] = 1.0,
    beta: Annotated[
        float,
        typer.Option(
            "--beta", help="residual: harmless last-position key weight, relative (x n/n_s)."
        ),
    ] = 1.0,
    hard: Annotated[
        bool, typer.Option("--hard", help="Hard null-space projector instead of the soft penalty.")
    ] = False,
    threshold: Annotated[
        float, typer.Option("--threshold", help="Null-space eigenvalue threshold (relative).")
    ] = 1e-2,
    projections: Annotated[
        str, typer.Option("--projections", help="paper: rows to edit, gate and/or up.")
    ] = "gate",
    sparse: Annotated[
        bool, typer.Option("--sparse", help="residual: edit only the safety-neuron columns.")
    ] = False,
    device: Device_ = "cpu",
    quiet: Quiet_ = False,
    as_json: Json_ = False,
) -> None:
    """Compute the closed-form edit from the workspace and write WS/edit/."""
    STATE["quiet"] = quiet or as_json
    from swe_cli.settings import SolveSettings

    settings = SolveSettings(
        method=method,
        layers=layers,
        rank=rank or None,
        gamma=gamma,
        lam=lam,
        alpha=alpha,
        beta=beta,
        hard=hard,
        threshold=threshold,
        projections=projections,
        sparse=sparse,
    )
    config = solve_config_from(settings, device)
    emit(do_solve(workspace, config), as_json)


def do_solve(workspace: Path, config: Any) -> dict[str, Any]:
    from swe_cli.stages.solve import run_solve
    from swe_cli.workspace import Workspace

    bad = [p for p in config.projections if p not in {"gate", "up"}]
    if bad:
        raise SweError(f"unknown projection(s) {bad}", hint="use --projections gate or gate,up")
    summary = run_solve(Workspace(workspace), config)
    if not STATE["quiet"]:
        show_solve(summary)
    return summary


def show_solve(summary: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"edit ({summary['method']}): {summary['rows']} rows")
    for column in ("layer", "weight", "|S|", "rank", "residual", "leak", "cond(Q)"):
        table.add_column(column, justify="right")
    for layer, values in summary["layers"].items():
        for weight, diag in values.items():
            if not isinstance(diag, dict):
                continue
            leak = diag.get("utility_leak", diag.get("harmless_key_leak", float("nan")))
            table.add_row(
                str(layer),
                weight,
                str(values.get("neurons", "")),
                str(diag.get("rank")),
                f"{diag.get('relative_residual', float('nan')):.3f}",
                f"{leak:.3f}",
                f"{diag.get('condition_number', float('nan')):.2e}",
            )
    err.print(table)


# -- apply / verify -------------------------------------------------------------------------------
@app.command()
def apply(
    output: Annotated[
        Path,
        typer.Option("-o", "--output", help="Output folder (model, or edit with --edit-only)."),
    ],
    workspace: Annotated[
        Path | None, typer.Option("-w", "--workspace", help="Workspace whose edit is applied.")
    ] = None,
    edit: Annotated[
        str | None,
        typer.Option(
            "--edit", help="Apply a saved edit (folder, file or Hub repo) instead of a workspace."
        ),
    ] = None,
    base: Annotated[
        str | None, typer.Option("--base", help="Base model for --edit (local folder or Hub id).")
    ] = None,
    edit_only: Annotated[
        bool,
        typer.Option("--edit-only", help="Write only the edit artifact (kilobytes to megabytes)."),
    ] = False,
    device: Annotated[
        str,
        typer.Option("--device", help="Where edited rows are computed: auto, cpu, cuda, cuda:N."),
    ] = "auto",
    link: Annotated[
        bool, typer.Option("--link", help="Hard-link shards that hold no edited tensor.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing output folder.")
    ] = False,
    sync: Annotated[
        bool, typer.Option("--sync", help="fsync every file before the final rename.")
    ] = False,
    push_to_hub: Annotated[
        str | None, typer.Option("--push-to-hub", help="Upload the output to this Hub repo.")
    ] = None,
    private: Annotated[
        bool, typer.Option("--private", help="Create the Hub repo as private.")
    ] = False,
    hub_revision: Annotated[
        str | None, typer.Option("--hub-revision", help="Hub branch to upload to.")
    ] = None,
    revision: Revision_ = None,
    quiet: Quiet_ = False,
    as_json: Json_ = False,
) -> None:
    """Write the edited checkpoint (streaming copy, only edited rows rewritten) or the edit alone."""
    STATE["quiet"] = quiet or as_json
    emit(
        do_apply(output, workspace, edit, base, edit_only, device, link, force, sync, revision),
        as_json and not push_to_hub,
    )
    if push_to_hub:
        summary = do_push(output, push_to_hub, private, hub_revision)
        emit(summary, as_json)


def do_apply(
    output: Path,
    workspace: Path | None,
    edit: str | None,
    base: str | None,
    edit_only: bool,
    device: str,
    link: bool,
    force: bool,
    sync: bool,
    revision: str | None,
) -> dict[str, Any]:
    from swe_cli.checkpoint import resolve_model
    from swe_cli.patch import apply_edit_artifact, apply_workspace, export_edit
    from swe_cli.workspace import Workspace

    if edit is not None:
        if base is None:
            raise SweError(
                "--edit needs --base MODEL", hint="pass the base model the edit was computed on"
            )
        with progress_bar() as update:
            result = apply_edit_artifact(
                edit,
                resolve_model(base, revision),
                output,
                device=device,
                link=link,
                force=force,
                progress=update,
                sync=sync,
            )
    elif workspace is None:
        raise SweError("nothing to apply", hint="pass -w WORKSPACE, or --edit EDIT --base MODEL")
    elif edit_only:
        path = export_edit(Workspace(workspace), output, force=force)
        info(f"[green]edit written[/green] to {path}")
        return {"output": str(path), "edit_only": True}
    else:
        with progress_bar() as update:
            result = apply_workspace(
                Workspace(workspace),
                output,
                device=device,
                link=link,
                force=force,
                progress=update,
                sync=sync,
            )
    for warning in result.warnings:
        info(f"[yellow]warning:[/yellow] {warning}")
    info(
        f"[green]wrote[/green] {result.output}: {result.rows_edited} rows in {result.tensors_edited} tensors patched, "
        f"{len(result.copied)} files copied, {len(result.linked)} linked, rows verified ({result.seconds:.1f} s)"
    )
    return result.summary()


def do_push(folder: Path, repo: str, private: bool, revision: str | None) -> dict[str, Any]:
    import os

    from swe_cli.hub import push_to_hub

    url = push_to_hub(
        folder, repo, private=private, revision=revision, token=os.environ.get("HF_TOKEN")
    )
    info(f"[green]uploaded[/green] {folder} to {url}")
    return {"output": str(folder), "pushed_to": url}


@app.command()
def verify(
    output: Annotated[Path, typer.Argument(help="Checkpoint written by `swe apply`.")],
    base: Annotated[str, typer.Option("--base", help="Base model (local folder or Hub id).")],
    workspace: Annotated[
        Path | None, typer.Option("-w", "--workspace", help="Check against this workspace's edit.")
    ] = None,
    revision: Revision_ = None,
    quiet: Quiet_ = False,
    as_json: Json_ = False,
) -> None:
    """Check every tensor of OUT against the base: untouched bytes identical, edited rows exact."""
    STATE["quiet"] = quiet or as_json
    summary = do_verify(output, base, workspace, revision)
    emit(summary, as_json)
    if not summary["ok"]:
        raise typer.Exit(1)


def do_verify(
    output: Path, base: str, workspace: Path | None, revision: str | None
) -> dict[str, Any]:
    from swe_cli.checkpoint import resolve_model
    from swe_cli.patch import workspace_edit
    from swe_cli.verify import verify_checkpoint
    from swe_cli.workspace import Workspace

    edit = workspace_edit(Workspace(workspace)) if workspace is not None else None
    with progress_bar() as update:
        report = verify_checkpoint(
            output, resolve_model(base, revision).path, edit, progress=update
        )
    summary = report.summary()
    if report.ok:
        info(
            f"[green]verified[/green] {output}: {report.tensors_identical} tensors byte-identical, "
            f"{report.tensors_edited} edited ({report.rows_checked} rows exact)"
        )
    else:
        for problem in report.problems:
            err.print(f"mismatch: {problem}", style="bold red", highlight=False, markup=False)
    return summary


# -- eval -----------------------------------------------------------------------------------------
@app.command("eval")
def eval_command(
    model: Annotated[
        str,
        typer.Argument(help="Model to evaluate: Hub id or local folder (e.g. the aligned OUT)."),
    ],
    langs: Langs_,
    harmful: Annotated[
        str, typer.Option("--harmful", help="Harmful prompts (same source as probe).")
    ],
    baseline: Annotated[
        str | None, typer.Option("--baseline", help="Base model to compare with (KL, ASR change).")
    ] = None,
    harmless: Annotated[
        str | None,
        typer.Option("--harmless", help="Harmless prompts (over-refusal, accuracy, KL)."),
    ] = None,
    general: Annotated[
        str | None, typer.Option("--general", help="General text for perplexity.")
    ] = None,
    workspace: Annotated[
        Path | None, typer.Option("-w", "--workspace", help="Also write the report into WS/eval/.")
    ] = None,
    hrl: Hrl_ = "en",
    split: Annotated[
        str, typer.Option("--split", help="Prompt split to evaluate: heldout, fit or all.")
    ] = "heldout",
    heldout_fraction: Annotated[
        float, typer.Option("--heldout-fraction", help="Must match the probe's.")
    ] = 0.5,
    max_prompts: Annotated[
        int | None, typer.Option("--max-prompts", help="Use at most N prompt ids per set.")
    ] = None,
    judge: Annotated[
        str,
        typer.Option("--judge", help="pattern, or a guard model (Qwen3Guard-Gen, Llama Guard 3)."),
    ] = "pattern",
    patterns: Annotated[
        list[Path] | None,
        typer.Option("--patterns", help="Extra refusal patterns (YAML lang -> phrases)."),
    ] = None,
    max_new_tokens: Annotated[
        int, typer.Option("--max-new-tokens", min=1, help="Generation length bound.")
    ] = 64,
    batch_size: BatchSize_ = 16,
    device: Device_ = "cpu",
    dtype: Dtype_ = "auto",
    revision: Revision_ = None,
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", help="Report folder (report.json, report.md, asr.png)."),
    ] = None,
    backend: Annotated[
        str, typer.Option("--backend", help="Generation backend: hf (transformers) or vllm.")
    ] = "hf",
    tensor_parallel_size: Annotated[
        int,
        typer.Option("--tensor-parallel-size", min=1, help="GPUs per model for --backend vllm."),
    ] = 1,
    quiet: Quiet_ = False,
    as_json: Json_ = False,
) -> None:
    """Generate on held-out prompts per language and report ASR, over-refusal, accuracy, KL, perplexity."""
    STATE["quiet"] = quiet or as_json
    all_langs = [hrl, *[lang for lang in split_list(langs) if lang != hrl]]
    sets = load_eval_sets(harmful, harmless, general, all_langs, heldout_fraction, max_prompts)
    report = do_eval(
        model,
        baseline,
        sets,
        all_langs,
        split,
        judge,
        patterns or [],
        max_new_tokens,
        batch_size,
        device,
        dtype,
        revision,
        output,
        workspace,
        backend=backend,
        tensor_parallel_size=tensor_parallel_size,
    )
    if as_json:
        sys.stdout.write(report.to_json() + "\n")


def load_eval_sets(
    harmful: str,
    harmless: str | None,
    general: str | None,
    langs: list[str],
    heldout_fraction: float,
    max_prompts: int | None,
) -> dict[str, Any]:
    from swe_cli.prompts import load_prompt_set

    sets: dict[str, Any] = {
        "harmful": load_prompt_set(
            harmful, "harmful", langs, heldout_fraction=heldout_fraction, max_prompts=max_prompts
        )
    }
    sets["harmless"] = (
        load_prompt_set(
            harmless, "harmless", langs, heldout_fraction=heldout_fraction, max_prompts=max_prompts
        )
        if harmless
        else None
    )
    sets["general"] = (
        load_prompt_set(
            general,
            "general",
            _langs_in(general, langs),
            heldout_fraction=heldout_fraction,
            require_parallel=False,
        )
        if general
        else None
    )
    return sets


def do_eval(
    model: str,
    baseline: str | None,
    sets: dict[str, Any],
    langs: list[str],
    split: str,
    judge_name: str,
    patterns: list[Path],
    max_new_tokens: int,
    batch_size: int,
    device: str,
    dtype: str,
    revision: str | None,
    output: Path | None,
    workspace: Path | None,
    backend: str = "hf",
    tensor_parallel_size: int = 1,
) -> Any:
    from swe_cli.judges import GuardJudge, PatternJudge
    from swe_cli.report import rich_table, write_report
    from swe_cli.stages.evaluate import run_eval
    from swe_cli.workspace import Workspace

    refusal_judge = PatternJudge.from_files(patterns)
    judge = (
        refusal_judge
        if judge_name == "pattern"
        else GuardJudge.load(judge_name, device=device, dtype=dtype)
    )
    with progress_bar() as update:
        report = run_eval(
            model,
            baseline=baseline,
            harmful=sets["harmful"],
            harmless=sets["harmless"],
            general=sets["general"],
            langs=langs,
            split=split,
            judge=judge,
            refusal_judge=refusal_judge,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            device=device,
            dtype=dtype,
            revision=revision,
            progress=update,
            backend=backend,
            tensor_parallel_size=tensor_parallel_size,
        )
    if output is not None:
        written = write_report(report, output)
        info(f"report written to {output} ({', '.join(sorted(p.name for p in written.values()))})")
    if workspace is not None:
        space = Workspace(workspace)
        write_report(report, space.eval_dir)
        if space.exists():
            space.record_stage(
                "eval",
                {"model": model, "baseline": baseline, "split": split, "judge": judge_name},
                {
                    "report": str(space.eval_dir / "report.json"),
                    "mean": report.to_dict()["model"]["mean"],
                },
            )
    if not STATE["quiet"]:
        err.print(rich_table(report))
    return report


# -- align / demo ---------------------------------------------------------------------------------
def default_workspace(model: str, langs: list[str]) -> Path:
    """A cache folder keyed by model and languages, so a re-run resumes."""
    import hashlib
    import os

    cache = Path(os.environ.get("SWE_CACHE", Path.home() / ".cache" / "swe"))
    slug = "".join(ch if ch.isalnum() or ch in "-." else "-" for ch in Path(model).name or model)[
        :60
    ]
    key = hashlib.sha256(
        f"{Path(model).resolve() if Path(model).exists() else model}|{','.join(langs)}".encode()
    ).hexdigest()[:10]
    return cache / "workspaces" / f"{slug}-{'-'.join(langs)}-{key}"


def builtin_data(name: str) -> str:
    from importlib import resources

    return str(resources.files("swe_cli") / "data" / name)


def pick_recipe(model_dir: Path, recipe_file: Path | None, overrides: dict[str, Any]) -> Any:
    from swe_cli.architectures import model_shape
    from swe_cli.checkpoint import load_config
    from swe_cli.recipe import apply_overrides, load_recipe, select_recipe

    shape = model_shape(load_config(model_dir))
    if recipe_file is not None:
        recipe = load_recipe(recipe_file)
        reason = f"from {recipe_file}"
    else:
        recipe = select_recipe(shape.model_type, shape.num_layers, shape.hidden_size)
        reason = f"picked for model_type={shape.model_type}, {shape.num_layers} layers, hidden {shape.hidden_size}"
    recipe = apply_overrides(recipe, overrides)
    info(
        f"recipe [bold]{recipe.name}[/bold] ({reason}){' — ' + recipe.validated if recipe.validated else ''}"
    )
    return recipe


def solve_config_from(settings: Any, device: str) -> Any:
    """The solver configuration from recipe solve settings (layers and projections as text)."""
    from swe_cli.stages.solve import SolveConfig

    return SolveConfig(
        method=settings.method,
        layers=parse_layers(settings.layers),
        rank=settings.rank,
        gamma=settings.gamma,
        lam=settings.lam,
        alpha=settings.alpha,
        beta=settings.beta,
        hard=settings.hard,
        threshold=settings.threshold,
        projections=tuple(split_list(settings.projections)),
        sparse=settings.sparse,
        device="cpu" if device in ("auto", "") else device,
    )


@app.command()
def align(
    model: Annotated[str, typer.Argument(help="Hub model id or local model folder.")],
    langs: Langs_,
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Output folder for the aligned checkpoint.")
    ],
    workspace: Annotated[
        Path | None,
        typer.Option(
            "-w",
            "--workspace",
            help="Workspace [default: a cache folder keyed by model and languages].",
        ),
    ] = None,
    harmful: Annotated[
        str,
        typer.Option("--harmful", help="Harmful prompts (MultiJail CSV, CSV/JSONL, Hub dataset)."),
    ] = "DAMO-NLP-SG/MultiJail",
    harmless: Annotated[
        str | None,
        typer.Option("--harmless", help="Harmless prompts [default: built-in 10-language set]."),
    ] = None,
    general: Annotated[
        str | None,
        typer.Option("--general", help="General text for the moments [default: built-in]."),
    ] = None,
    hrl: Hrl_ = "en",
    recipe: Annotated[
        Path | None,
        typer.Option("--recipe", help="Recipe YAML [default: picked from the model's config]."),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set", help="Override a recipe field, e.g. --set solve.rank=16 (repeatable)."
        ),
    ] = None,
    method: Annotated[
        str | None, typer.Option("--method", help="Override solve.method (paper, residual).")
    ] = None,
    tune: Annotated[
        bool,
        typer.Option(
            "--tune",
            help="Choose layers and coefficients on a validation split of the fit prompts.",
        ),
    ] = False,
    run_eval: Annotated[
        bool, typer.Option("--eval", help="Evaluate base vs aligned on the held-out prompts.")
    ] = False,
    patterns: Annotated[
        list[Path] | None, typer.Option("--patterns", help="Extra refusal patterns for eval.")
    ] = None,
    device: Annotated[
        str,
        typer.Option("--device", help="Device for probe/solve/eval (cpu, cuda); apply uses auto."),
    ] = "cpu",
    dtype: Dtype_ = "auto",
    device_map: Annotated[
        str | None,
        typer.Option("--device-map", help="accelerate device map for probing large models."),
    ] = None,
    revision: Revision_ = None,
    link: Annotated[bool, typer.Option("--link", help="Hard-link unedited shards.")] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing output folder.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan (recipe, stages) and write nothing.")
    ] = False,
    push_to_hub: Annotated[
        str | None,
        typer.Option("--push-to-hub", help="Upload the aligned folder to this Hub repo."),
    ] = None,
    private: Annotated[
        bool, typer.Option("--private", help="Create the Hub repo as private.")
    ] = False,
    quiet: Quiet_ = False,
    as_json: Json_ = False,
) -> None:
    """probe -> localize -> solve -> apply (-> eval) in one workspace; resumable."""
    STATE["quiet"] = quiet or as_json
    summary = do_align(
        model,
        split_list(langs),
        output,
        workspace,
        harmful,
        harmless,
        general,
        hrl,
        recipe,
        set_ or [],
        method,
        tune,
        run_eval,
        patterns or [],
        device,
        dtype,
        device_map,
        revision,
        link,
        force,
        dry_run,
    )
    if push_to_hub and not dry_run:
        summary["push"] = do_push(output, push_to_hub, private, None)
    emit(summary, as_json)


def do_align(
    model: str,
    langs: list[str],
    output: Path,
    workspace: Path | None,
    harmful: str,
    harmless: str | None,
    general: str | None,
    hrl: str,
    recipe_file: Path | None,
    sets: list[str],
    method: str | None,
    tune: bool,
    run_eval: bool,
    patterns: list[Path],
    device: str,
    dtype: str,
    device_map: str | None,
    revision: str | None,
    link: bool,
    force: bool,
    dry_run: bool,
) -> dict[str, Any]:
    import time

    from swe_cli.checkpoint import resolve_model
    from swe_cli.recipe import parse_set_options

    if not langs:
        raise SweError("no target languages given", hint="pass --langs, e.g. --langs bn,sw,th")
    if output.exists() and not force and not dry_run:
        raise SweError(
            f"output {output} already exists",
            hint="choose another -o or pass --force to replace it",
        )
    overrides = parse_set_options(sets)
    if method:
        overrides["solve.method"] = method
    resolved = resolve_model(model, revision)
    recipe = pick_recipe(resolved.path, recipe_file, overrides)
    workspace = workspace or default_workspace(model, langs)
    harmless = harmless or builtin_data("harmless.jsonl")
    general = general if general is not None else builtin_data("general.jsonl")
    plan = {
        "model": model,
        "langs": langs,
        "hrl": hrl,
        "workspace": str(workspace),
        "output": str(output),
        "recipe": recipe.to_dict(),
        "harmful": harmful,
        "harmless": harmless,
        "general": general,
        "stages": [
            "probe",
            "localize",
            *(["tune"] if tune else []),
            "solve",
            "apply",
            *(["eval"] if run_eval else []),
        ],
    }
    if dry_run:
        info(f"plan: {' -> '.join(plan['stages'])} in {workspace}, output {output}")
        return {"dry_run": True, **plan}
    info(f"workspace {workspace}")
    timings: dict[str, float] = {}
    probe_settings, solve_config = recipe.probe, solve_config_from(recipe.solve, device)
    stats_layers = parse_layers(probe_settings.stats_layers)
    if stats_layers is None and solve_config.method == "residual" and solve_config.layers:
        stats_layers = solve_config.layers
    start = time.perf_counter()
    do_probe(
        model,
        workspace,
        langs,
        harmful,
        harmless,
        general,
        hrl,
        parse_layers(probe_settings.layers),
        stats_layers,
        probe_settings.positions,
        probe_settings.heldout_fraction,
        probe_settings.max_prompts,
        probe_settings.batch_size,
        device,
        dtype,
        device_map,
        revision,
    )
    timings["probe"] = time.perf_counter() - start
    start = time.perf_counter()
    do_localize(workspace, recipe.localize.tau_mag, recipe.localize.tau_stat)
    timings["localize"] = time.perf_counter() - start
    if tune:
        start = time.perf_counter()
        solve_config = do_tune(workspace, solve_config)
        timings["tune"] = time.perf_counter() - start
    start = time.perf_counter()
    solved = do_solve(workspace, solve_config)
    timings["solve"] = time.perf_counter() - start
    start = time.perf_counter()
    applied = do_apply(output, workspace, None, None, False, "auto", link, force, False, revision)
    timings["apply"] = time.perf_counter() - start
    summary: dict[str, Any] = {**plan, "solve": solved, "apply": applied}
    if run_eval:
        start = time.perf_counter()
        sets_ = load_eval_sets(
            harmful,
            harmless,
            general,
            [hrl, *langs],
            probe_settings.heldout_fraction,
            probe_settings.max_prompts,
        )
        report = do_eval(
            str(output),
            model,
            sets_,
            [hrl, *langs],
            "heldout",
            recipe.eval.judge,
            patterns,
            recipe.eval.max_new_tokens,
            recipe.eval.batch_size,
            device,
            dtype,
            revision,
            workspace / "eval",
            workspace,
        )
        refresh_card(output, workspace)
        summary["eval"] = report.to_dict()
        timings["eval"] = time.perf_counter() - start
    summary["seconds"] = {stage: round(value, 2) for stage, value in timings.items()}
    show_timings(timings, output)
    return summary


def do_tune(workspace: Path, base: Any) -> Any:
    from swe_cli.stages.tune import candidates_table, tune
    from swe_cli.workspace import Workspace

    result = tune(Workspace(workspace), base)
    if not STATE["quiet"]:
        err.print(candidates_table(result))
    return result.best


def refresh_card(output: Path, workspace: Path) -> None:
    """Rewrite OUT/README.md with the eval table once eval has run."""
    from swe_cli.hub import ModelCard
    from swe_cli.patch import CARD_FILE, PROVENANCE_FILE, eval_report, workspace_base
    from swe_cli.workspace import Workspace, atomic_write_text

    space = Workspace(workspace)
    provenance = json.loads((output / PROVENANCE_FILE).read_text(encoding="utf-8"))
    card = ModelCard.for_provenance(provenance, workspace_base(space.model()), eval_report(space))
    atomic_write_text(output / CARD_FILE, card.render(provenance))


def show_timings(timings: dict[str, float], output: Path) -> None:
    from rich.table import Table

    if STATE["quiet"]:
        return
    table = Table(title=f"swe align -> {output}")
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    for stage, seconds in timings.items():
        table.add_row(stage, f"{seconds:.1f}")
    table.add_row("total", f"{sum(timings.values()):.1f}")
    err.print(table)


@app.command()
def demo(
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Demo folder (aligned model, workspace, report).")
    ] = Path("swe-demo"),
    seed: Annotated[
        int, typer.Option("--seed", help="Organism seed (each seed is built once and cached).")
    ] = 0,
    method: Annotated[
        str | None, typer.Option("--method", help="Override the organism recipe's solve.method.")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a recipe field (repeatable).")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing demo folder.")
    ] = False,
    quiet: Quiet_ = False,
    as_json: Json_ = False,
) -> None:
    """Build (or reuse) the model organism, align it for its low-resource languages, and evaluate."""
    STATE["quiet"] = quiet or as_json
    emit(do_demo(output, seed, method, set_ or [], force), as_json)


def do_demo(
    output: Path, seed: int, method: str | None, sets: list[str], force: bool
) -> dict[str, Any]:
    import shutil

    from swe_cli.organism import cached_organism

    if output.exists() and not force:
        raise SweError(
            f"demo folder {output} already exists", hint="choose another -o or pass --force"
        )
    info("model organism: building or reusing the cached one (about 3 minutes the first time)")
    organism = cached_organism(seed)
    info(f"organism at {organism.path}: HRL {organism.hrl}, LRLs {', '.join(organism.lrls)}")
    if output.exists():
        shutil.rmtree(output)
    output.mkdir(parents=True)
    return do_align(
        str(organism.model_dir),
        list(organism.lrls),
        output / "aligned",
        output / "workspace",
        str(organism.harmful),
        str(organism.harmless),
        str(organism.general),
        organism.hrl,
        None,
        sets,
        method,
        False,
        True,
        [organism.refusal_patterns],
        "cpu",
        "float32",
        None,
        None,
        False,
        False,
        False,
    )


def main() -> None:
    """Console entry point: run the app, turning SweError into one red line and exit code 1."""
    try:
        code = app(standalone_mode=False)
    except SweError as error:
        if STATE["debug"]:
            raise
        err.print(
            f"[bold red]error:[/bold red] {escape(error.message)}", highlight=False, soft_wrap=True
        )
        if error.hint:
            err.print(
                f"[yellow]hint:[/yellow] {escape(error.hint)}", highlight=False, soft_wrap=True
            )
        sys.exit(1)
    except KeyboardInterrupt:
        err.print(
            "[bold red]interrupted[/bold red]: finished shards are kept; re-run the same command to resume"
        )
        sys.exit(130)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except typer.Abort:
        sys.exit(1)
    except Exception as error:  # noqa: BLE001 - click usage errors and the unexpected
        import click

        if isinstance(error, click.ClickException):
            error.show()
            sys.exit(error.exit_code)
        if STATE["debug"]:
            raise
        err.print(
            f"[bold red]error:[/bold red] unexpected {type(error).__name__}: {escape(str(error))}",
            highlight=False,
        )
        err.print(
            "[yellow]hint:[/yellow] re-run with --debug for the traceback and report it",
            highlight=False,
        )
        sys.exit(1)
    # standalone_mode=False returns the code of a typer.Exit instead of raising it
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
