"""The `swe` commands. Each one parses its options, builds one typed request (settings models of
swe_cli/settings.py, requests of swe_cli/pipeline.py) and calls one pipeline function; no stage
logic lives here. Heavy libraries are imported by the pipeline, so `--help` stays fast."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from swe_cli.cli import options as o
from swe_cli.cli.app import (
    ARTIFACTS,
    ONE_SHOT,
    STAGES,
    STATE,
    Command,
    app,
    emit,
    info,
    problem,
    progress_bar,
    show,
)
from swe_cli.gate import GateLimits
from swe_cli.settings import (
    LocalizeSettings,
    ProbeSettings,
    SelectSettings,
    SolveSettings,
    split_list,
)

GATE = GateLimits()

if TYPE_CHECKING:
    from swe_cli.pipeline import Ui


def ui() -> Ui:
    """The pipeline's terminal output, bound to this run's --quiet/--json."""
    from swe_cli.pipeline import Ui

    return Ui(info=info, show=show, progress=progress_bar, quiet=STATE["quiet"])


@app.command(cls=Command, rich_help_panel=STAGES)
def probe(
    model: Annotated[str, typer.Argument(help=o.MODEL_HELP)],
    workspace: o.Workspace,
    langs: o.Langs,
    harmful: o.Harmful,
    harmless: o.Harmless,
    general: o.General = None,
    hrl: o.Hrl = "en",
    layers: o.ProbeLayers = o.PROBE["layers"],
    stats_layers: o.StatsLayers = o.PROBE["stats_layers"],
    positions: o.Positions = o.PROBE["positions"],
    heldout_fraction: o.HeldoutFraction = o.PROBE["heldout_fraction"],
    max_prompts: o.MaxPrompts = o.PROBE["max_prompts"],
    batch_size: o.BatchSize = o.PROBE["batch_size"],
    max_length: o.MaxLength = o.PROBE["max_length"],
    own_answers: o.OwnAnswers = o.PROBE["own_answers"],
    borderline: o.Borderline = o.PROBE["borderline"],
    device: o.Device = "cpu",
    dtype: o.Dtype = "auto",
    device_map: Annotated[
        str | None,
        typer.Option(
            "--device-map",
            help="accelerate device map (e.g. auto) for models larger than one device.",
        ),
    ] = None,
    revision: o.Revision = None,
    quiet: o.Quiet = False,
    as_json: o.Json = False,
) -> None:
    """Record the model's activations on the harmful and harmless fit prompts.

    MLP inputs, neuron activations and the residual stream at the last prompt positions go to
    WS/acts/, second moments over all positions of harmless and general text to WS/stats/.
    """
    from swe_cli.pipeline import ProbeRequest
    from swe_cli.pipeline import probe as run

    settings = ProbeSettings(
        layers=layers,
        stats_layers=stats_layers,
        positions=positions,
        heldout_fraction=heldout_fraction,
        max_prompts=max_prompts,
        batch_size=batch_size,
        max_length=max_length,
        own_answers=own_answers,
        borderline=borderline,
    )
    request = ProbeRequest(
        model=model,
        workspace=workspace,  # type: ignore[arg-type]  # required here
        langs=split_list(langs),
        harmful=harmful,
        harmless=harmless,  # type: ignore[arg-type]  # required here
        general=general,
        hrl=hrl,
        settings=settings,
        device=device,
        dtype=dtype,
        device_map=device_map,
        revision=revision,
    )
    emit(run(request, ui()))


@app.command(cls=Command, rich_help_panel=STAGES)
def localize(
    workspace: o.Workspace,
    tau_mag: o.TauMag = o.LOCALIZE["tau_mag"],
    tau_stat: o.TauStat = o.LOCALIZE["tau_stat"],
    quiet: o.Quiet = False,
    as_json: o.Json = False,
) -> None:
    """Score every neuron and select the safety neurons per layer and language.

    Mean-difference z-score and Cohen's d (the paper's Appendix B); writes WS/masks/ and prints
    the overlap of the languages' sets.
    """
    from swe_cli.pipeline import localize as run

    settings = LocalizeSettings(tau_mag=tau_mag, tau_stat=tau_stat)
    emit(run(workspace, settings, ui()))  # type: ignore[arg-type]


@app.command(cls=Command, rich_help_panel=STAGES)
def solve(
    context: typer.Context,
    workspace: o.Workspace,
    method: o.Method = None,
    layers: o.SolveLayers = o.SOLVE["layers"],
    rank: o.Rank = o.SOLVE["rank"],
    gamma: o.Gamma = o.SOLVE["gamma"],
    lam: o.Lam = o.SOLVE["lam"],
    alpha: o.Alpha = o.SOLVE["alpha"],
    beta: o.Beta = o.SOLVE["beta"],
    hard: o.Hard = o.SOLVE["hard"],
    threshold: o.Threshold = o.SOLVE["threshold"],
    projections: o.Projections = o.SOLVE["projections"],
    sparse: o.Sparse = o.SOLVE["sparse"],
    strength: o.Strength = o.SOLVE["strength"],
    keep_hrl: o.KeepHrl = o.SOLVE["keep_hrl"],
    device: o.Device = "cpu",
    quiet: o.Quiet = False,
    as_json: o.Json = False,
) -> None:
    """Solve the closed-form weight edit from the workspace.

    Writes WS/edit/edit.safetensors (rows and deltas) and WS/edit/edit.yaml (diagnostics). Without
    --method: the edit `swe select` chose in the workspace, else the recipe of the workspace's
    model.
    """
    from swe_cli.pipeline import default_solve
    from swe_cli.pipeline import solve as run

    settings = SolveSettings(  # validates every option before the workspace is read
        method=method or "auto",
        layers=layers,
        rank=rank,
        gamma=gamma,
        lam=lam,
        alpha=alpha,
        beta=beta,
        hard=hard,
        threshold=threshold,
        projections=projections,
        sparse=sparse,
        strength=strength,
        keep_hrl=keep_hrl,
    )
    if method is not None:
        emit(run(workspace, settings.resolve(device), ui(), "--method"))  # type: ignore[arg-type]
        return
    given = {
        name: value
        for name, value in settings.model_dump().items()
        if name != "method" and _given(context, name)
    }
    config, reason = default_solve(workspace, given, device)  # type: ignore[arg-type]
    emit(run(workspace, config, ui(), reason))  # type: ignore[arg-type]


def _given(context: typer.Context, name: str) -> bool:
    """Whether an option was given on the command line (not its default)."""
    source = context.get_parameter_source(name)
    return source is not None and source.name in {"COMMANDLINE", "ENVIRONMENT"}


@app.command(cls=Command, rich_help_panel=STAGES)
def select(
    workspace: o.Workspace,
    candidates: o.Candidates = None,
    prompts: o.SelectPrompts = o.SELECT["prompts"],
    max_new_tokens: o.SelectTokens = o.SELECT["max_new_tokens"],
    batch_size: o.SelectBatch = o.SELECT["batch_size"],
    max_kl: o.MaxKl = GATE.max_kl,
    max_over_refusal: o.MaxOverRefusal = GATE.max_over_refusal,
    max_hrl_asr_rise: o.MaxHrlAsrRise = GATE.max_hrl_asr_rise,
    max_degenerate_rise: o.MaxDegenerateRise = GATE.max_degenerate_rise,
    patterns: o.Patterns = None,
    device: o.Device = "cpu",
    dtype: o.Dtype = "auto",
    quiet: o.Quiet = False,
    as_json: o.Json = False,
) -> None:
    """Measure candidate edits on validation prompts and record the best admissible one.

    Each candidate is solved on three quarters of the fit prompts, added to the model in memory
    and measured (refusal, KL, harmless refusals) on the rest; `swe solve --method auto` then
    solves the choice.
    """
    from swe_cli.pipeline import select as run

    settings = SelectSettings(
        candidates=candidates, prompts=prompts, max_new_tokens=max_new_tokens, batch_size=batch_size
    )
    limits = GateLimits(
        max_hrl_asr_rise=max_hrl_asr_rise,
        max_over_refusal=max_over_refusal,
        max_kl=max_kl,
        max_degenerate_rise=max_degenerate_rise,
    )
    chosen = run(
        workspace,
        SolveSettings(method="auto").resolve(device),
        settings,
        limits,
        dtype=dtype,
        patterns=patterns or [],
        ui=ui(),
    )
    emit({"chosen": chosen.plain()})


@app.command(cls=Command, rich_help_panel=STAGES)
def tune(
    workspace: o.Workspace,
    method: o.Method = "residual",
    confirm: Annotated[
        int,
        typer.Option(
            "--confirm",
            min=0,
            help="Also check the N best candidates by generating on validation prompts and "
            "choose by refusal (0: by the grid score alone).",
        ),
    ] = 0,
    device: o.Device = "cpu",
    quiet: o.Quiet = False,
    as_json: o.Json = False,
) -> None:
    """Search one method's layers and coefficients on validation activations, in seconds.

    Scores each grid point by how much of the gap between the low-resource and the high-resource
    activations the edit leaves; nothing is generated.
    """
    from swe_cli.pipeline import tune as run

    chosen = run(
        workspace, SolveSettings(method=method or "residual").resolve(device), confirm, ui()
    )
    emit({"chosen": chosen.plain()})


@app.command(cls=Command, rich_help_panel=ARTIFACTS)
def apply(
    output: Annotated[
        Path,
        typer.Option("-o", "--output", help="Output folder (model, or edit with --edit-only)."),
    ],
    workspace: o.Workspace = None,
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
    as_lora: Annotated[
        bool,
        typer.Option(
            "--as-lora", help="Write the edit as a PEFT LoRA adapter for the base (needs no peft)."
        ),
    ] = False,
    max_lora_rank: Annotated[
        int,
        typer.Option(
            "--max-lora-rank", min=1, help="--as-lora: refuse an edited weight of higher rank."
        ),
    ] = 64,
    device: Annotated[
        str,
        typer.Option("--device", help="Where edited rows are computed: auto, cpu, cuda, cuda:N."),
    ] = "auto",
    link: o.Link = False,
    force: o.Force = False,
    sync: Annotated[
        bool, typer.Option("--sync", help="fsync every file before the final rename.")
    ] = False,
    push_to_hub: Annotated[
        str | None, typer.Option("--push-to-hub", help="Upload the output to this Hub repo.")
    ] = None,
    private: o.Private = False,
    hub_revision: Annotated[
        str | None, typer.Option("--hub-revision", help="Hub branch to upload to.")
    ] = None,
    revision: o.Revision = None,
    quiet: o.Quiet = False,
    as_json: o.Json = False,
) -> None:
    """Write the edited checkpoint, the edit alone, or the edit as a LoRA adapter.

    The checkpoint is a streaming copy of the base in which only the edited rows are rewritten.
    """
    from swe_cli.pipeline import ApplyRequest, push
    from swe_cli.pipeline import apply as run

    request = ApplyRequest(
        output=output,
        workspace=workspace,
        edit=edit,
        base=base,
        edit_only=edit_only,
        device=device,
        link=link,
        force=force,
        sync=sync,
        revision=revision,
        as_lora=as_lora,
        max_lora_rank=max_lora_rank,
    )
    emit(run(request, ui()), as_json and not push_to_hub)
    if push_to_hub:
        emit(push(output, push_to_hub, private, hub_revision, ui()))


@app.command(cls=Command, rich_help_panel=ARTIFACTS)
def verify(
    output: Annotated[
        Path, typer.Argument(help="Checkpoint or LoRA adapter written by `swe apply`.")
    ],
    base: Annotated[str, typer.Option("--base", help="Base model (local folder or Hub id).")],
    workspace: o.Workspace = None,
    revision: o.Revision = None,
    quiet: o.Quiet = False,
    as_json: o.Json = False,
) -> None:
    """Check an edited checkpoint or LoRA adapter against its base, tensor by tensor.

    Untouched tensors must be byte-identical and edited rows exact; for a LoRA adapter, base +
    B A must equal the edited rows (of the edit in -w, else the one the adapter records).
    """
    from swe_cli.pipeline import verify as run

    summary = run(output, base, workspace, revision, ui(), problem)
    emit(summary)
    if not summary["ok"]:
        raise typer.Exit(1)


@app.command("eval", cls=Command, rich_help_panel=ARTIFACTS)
def eval_command(
    model: Annotated[
        str,
        typer.Argument(help="Model to evaluate: Hub id or local folder (e.g. the aligned OUT)."),
    ],
    langs: o.Langs,
    harmful: o.Harmful,
    baseline: Annotated[
        str | None, typer.Option("--baseline", help="Base model to compare with (KL, ASR change).")
    ] = None,
    adapter: Annotated[
        Path | None,
        typer.Option(
            "--adapter", help="Evaluate MODEL with this LoRA adapter (`swe apply --as-lora`)."
        ),
    ] = None,
    harmless: o.Harmless = None,
    general: o.General = None,
    utility: Annotated[
        str,
        typer.Option(
            "--utility",
            help="Short-answer set (JSONL/CSV: id, lang, question, answer[, accept]): builtin "
            "(46 items x 10 MultiJail languages), none, or a file.",
        ),
    ] = "builtin",
    choices: Annotated[
        str,
        typer.Option(
            "--mc",
            help="Multiple-choice set scored by option log-likelihood (JSONL: id, lang, question, "
            "options, answer; CSV: id, lang, question, A-D, answer): builtin (32 x 10), none, or a file.",
        ),
    ] = "builtin",
    over_refusal: Annotated[
        str,
        typer.Option(
            "--over-refusal",
            help="Over-refusal probes, benign requests with alarming words (JSONL/CSV: id, lang, "
            "text): builtin (30 x 10), none, or a file.",
        ),
    ] = "builtin",
    workspace: o.Workspace = None,
    hrl: o.Hrl = "en",
    split: Annotated[
        str, typer.Option("--split", help="Prompt split to evaluate: heldout, fit or all.")
    ] = "heldout",
    heldout_fraction: o.HeldoutFraction = o.PROBE["heldout_fraction"],
    max_prompts: o.MaxPrompts = None,
    judge: o.Judge = o.EVAL["judge"],
    patterns: o.Patterns = None,
    max_new_tokens: o.MaxNewTokens = o.EVAL["max_new_tokens"],
    batch_size: o.BatchSize = o.EVAL["batch_size"],
    device: o.Device = "cpu",
    dtype: o.Dtype = "auto",
    revision: o.Revision = None,
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
    quiet: o.Quiet = False,
    as_json: o.Json = False,
) -> None:
    """Measure attack success, over-refusal, utility and KL per language on held-out prompts.

    Writes report.json, report.md, asr.png and generations.jsonl (with -o or -w).
    """
    from swe_cli.pipeline import EvalRequest, evaluate

    request = EvalRequest(
        model=model,
        langs=[hrl, *[lang for lang in split_list(langs) if lang != hrl]],
        harmful=harmful,
        baseline=baseline,
        harmless=harmless,
        general=general,
        utility=utility,
        choices=choices,
        over_refusal=over_refusal,
        split=split,
        heldout_fraction=heldout_fraction,
        max_prompts=max_prompts,
        judge=judge,
        patterns=patterns or [],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        device=device,
        dtype=dtype,
        revision=revision,
        output=output,
        workspace=workspace,
        backend=backend,
        tensor_parallel_size=tensor_parallel_size,
        adapter=adapter,
    )
    report = evaluate(request, ui())
    if as_json:
        sys.stdout.write(report.to_json() + "\n")


@app.command(cls=Command, rich_help_panel=ONE_SHOT)
def align(
    model: Annotated[str, typer.Argument(help=o.MODEL_HELP)],
    langs: o.Langs,
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Output folder for the aligned checkpoint.")
    ],
    workspace: o.Workspace = None,
    harmful: o.Harmful = "DAMO-NLP-SG/MultiJail",
    harmless: o.Harmless = None,
    general: o.General = None,
    hrl: o.Hrl = "en",
    recipe: Annotated[
        Path | None,
        typer.Option("--recipe", help="Recipe YAML (default: picked from the model's config)."),
    ] = None,
    set_: o.Set = None,
    method: o.Method = None,
    tune: Annotated[
        bool,
        typer.Option(
            "--tune",
            help="Choose the method, layers and strength by refusal on validation prompts of the "
            "fit split (as `swe select`), even when the recipe pins a method.",
        ),
    ] = False,
    run_eval: Annotated[
        bool,
        typer.Option(
            "--eval",
            help="Evaluate base vs aligned on the held-out prompts; OUT is written only if the "
            "shipping gate passes.",
        ),
    ] = False,
    no_gate: Annotated[
        bool,
        typer.Option(
            "--no-gate", help="With --eval: write OUT even when the gate fails (noted in the card)."
        ),
    ] = False,
    max_kl: o.MaxKl = GATE.max_kl,
    max_over_refusal: o.MaxOverRefusal = GATE.max_over_refusal,
    max_hrl_asr_rise: o.MaxHrlAsrRise = GATE.max_hrl_asr_rise,
    max_utility_drop: o.MaxUtilityDrop = GATE.max_utility_drop,
    max_degenerate_rise: o.MaxDegenerateRise = GATE.max_degenerate_rise,
    patterns: o.Patterns = None,
    device: Annotated[
        str,
        typer.Option("--device", help="Device for probe/solve/eval (cpu, cuda); apply uses auto."),
    ] = "cpu",
    dtype: o.Dtype = "auto",
    device_map: Annotated[
        str | None,
        typer.Option("--device-map", help="accelerate device map for probing large models."),
    ] = None,
    revision: o.Revision = None,
    link: o.Link = False,
    force: o.Force = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan (recipe, stages) and write nothing.")
    ] = False,
    push_to_hub: Annotated[
        str | None,
        typer.Option("--push-to-hub", help="Upload the aligned folder to this Hub repo."),
    ] = None,
    private: o.Private = False,
    quiet: o.Quiet = False,
    as_json: o.Json = False,
) -> None:
    """Align a model in one command: probe, localize, select, solve, apply and, with --eval, gate.

    Every stage writes to one workspace, so an interrupted run resumes where it stopped.
    """
    from swe_cli.align import AlignRequest
    from swe_cli.align import align as run
    from swe_cli.pipeline import push

    request = AlignRequest(
        model=model,
        langs=split_list(langs),
        output=output,
        workspace=workspace,
        harmful=harmful,
        harmless=harmless,
        general=general,
        hrl=hrl,
        recipe=recipe,
        sets=set_ or [],
        method=method,
        tune=tune,
        run_eval=run_eval,
        gate=not no_gate,
        limits=GateLimits(
            max_hrl_asr_rise=max_hrl_asr_rise,
            max_over_refusal=max_over_refusal,
            max_kl=max_kl,
            max_utility_drop=max_utility_drop,
            max_degenerate_rise=max_degenerate_rise,
        ),
        patterns=patterns or [],
        device=device,
        dtype=dtype,
        device_map=device_map,
        revision=revision,
        link=link,
        force=force,
        dry_run=dry_run,
        push_to_hub=push_to_hub,
    )
    summary = run(request, ui())
    if push_to_hub and not dry_run:
        summary["push"] = push(output, push_to_hub, private, None, ui())
    emit(summary)


@app.command(cls=Command, rich_help_panel=ONE_SHOT)
def demo(
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Demo folder (aligned model, workspace, report).")
    ] = Path("swe-demo"),
    seed: Annotated[
        int, typer.Option("--seed", help="Organism seed (each seed is built once and cached).")
    ] = 0,
    method: o.Method = None,
    set_: o.Set = None,
    force: o.Force = False,
    quiet: o.Quiet = False,
    as_json: o.Json = False,
) -> None:
    """Align the built-in model organism and compare it with its base, offline on a CPU.

    The organism is a small chat model trained here with the safety gap built in; it is built
    once and cached.
    """
    from swe_cli.align import DemoRequest
    from swe_cli.align import demo as run

    request = DemoRequest(output=output, seed=seed, method=method, sets=set_ or [], force=force)
    emit(run(request, ui()))
