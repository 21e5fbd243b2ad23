"""The pipeline-stage commands (probe, localize, select, solve, tune). Each one parses its options,
builds one typed request (settings models of swe_cli/settings.py, requests of
swe_cli/pipeline.py) and calls one pipeline function; no stage logic lives here. Heavy libraries
are imported by the pipeline, so `--help` stays fast."""

from __future__ import annotations

from typing import Annotated

import typer

from swe_cli.cli import options as o
from swe_cli.cli.app import STAGES, Command, app, emit, option_given, ui
from swe_cli.gate import GateLimits
from swe_cli.settings import (
    LocalizeSettings,
    ProbeSettings,
    SelectSettings,
    SolveSettings,
    split_list,
)

GATE = GateLimits()


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
        if name != "method" and option_given(context, name)
    }
    config, reason = default_solve(workspace, given, device)  # type: ignore[arg-type]
    emit(run(workspace, config, ui(), reason))  # type: ignore[arg-type]


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
    and measured on the rest (refusal, KL, harmless and borderline refusals) against the shipping
    gate's limits; `swe solve --method auto` then solves the choice. When every candidate breaks
    a limit, the best is recorded with a warning that solve, apply and align repeat.
    """
    from swe_cli.pipeline import select as run
    from swe_cli.pipeline import selection_summary

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
    emit({**selection_summary(workspace, chosen), "chosen": chosen.plain()})  # type: ignore[arg-type]


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
