"""The artifact calls behind `swe apply`, `swe verify` and `--push-to-hub`: an edited checkpoint,
an edit artifact or a LoRA adapter written from a typed request, checked against its base, or
uploaded. Terminal output goes through the caller's `Ui` (swe_cli/pipeline.py)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swe_cli.errors import SweError
from swe_cli.pipeline import SILENT, Ui, writing


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

    if request.edit is None and request.workspace is not None:
        from swe_cli.stages.select import solved_warning

        warning = solved_warning(Workspace(request.workspace))
        if warning:  # said before anything is written
            ui.info(f"[yellow]warning:[/yellow] select: {warning}")
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
