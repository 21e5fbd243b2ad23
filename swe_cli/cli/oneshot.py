"""The one-shot commands (align, demo): the whole pipeline as one typed request, passed to
align.py. Heavy libraries are imported below, so `--help` stays fast."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from swe_cli.cli import options as o
from swe_cli.cli.app import ONE_SHOT, Command, app, emit, ui
from swe_cli.gate import GateLimits
from swe_cli.settings import split_list

GATE = GateLimits()


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
    from swe_cli.pipeline_artifacts import push

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
