"""The artifact commands (apply, verify, eval): write an edited checkpoint or an edit artifact,
check one against its base, and measure a model. Each builds one typed request and calls one
pipeline function; heavy libraries are imported by the pipeline, so `--help` stays fast."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from swe_cli.cli import options as o
from swe_cli.cli.app import ARTIFACTS, Command, app, emit, problem, ui
from swe_cli.settings import split_list


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
    from swe_cli.pipeline_artifacts import ApplyRequest, push
    from swe_cli.pipeline_artifacts import apply as run

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
    from swe_cli.pipeline_artifacts import verify as run

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
    from swe_cli.pipeline_eval import EvalRequest, evaluate

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
