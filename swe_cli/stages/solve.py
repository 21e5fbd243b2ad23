"""The solve stage: check the workspace and its base model, call the chosen method (methods/,
by name through the registry) and write the edit artifact and its diagnostics (WS/edit/)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import yaml

from swe_cli import __version__
from swe_cli.edit import Edit, edit_sha256, save_edit
from swe_cli.errors import SolveError, WorkspaceError
from swe_cli.hub import public_name
from swe_cli.io.checkpoint import fingerprint
from swe_cli.io.files import atomic_write_text
from swe_cli.methods import get_method
from swe_cli.methods.base import context_from
from swe_cli.settings import SolveConfig
from swe_cli.stages.select import AUTO, selected_config
from swe_cli.workspace import Workspace


def run_solve(workspace: Workspace, config: SolveConfig) -> dict[str, Any]:
    """Compute the edit with the chosen method; write WS/edit/edit.safetensors and edit.yaml.
    Method "auto" is the configuration the workspace's `swe select` chose."""
    if config.method == AUTO:
        config = selected_config(workspace, config.device)
    method = get_method(config.method)
    bad = [p for p in config.projections if p not in {"gate", "up"}]
    if bad:
        raise SolveError(f"unknown projection(s) {bad}", hint="use --projections gate or gate,up")
    workspace.require_stage("probe")
    workspace.require_stage("localize")
    manifest = workspace.manifest()
    model = manifest.model
    if fingerprint(model.path) != model.fingerprint:  # the rows are read from there
        raise WorkspaceError(
            f"the model at {model.path} is not the one workspace {workspace.root} was probed "
            f"with ('{model.id}')",
            hint="restore that model there, or probe this model into another -w/--workspace",
        )
    context = context_from(workspace, manifest)
    missing = [layer for layer in config.layers or [] if layer not in context.probed_layers]
    if missing:
        raise SolveError(
            f"layer(s) {missing} were not probed", hint="re-run `swe probe` with these --layers"
        )
    tensor_edits, report = method.solve(context, config)
    params = config.plain()
    edit = Edit(
        tuple(tensor_edits),
        {
            "base_model": public_name(asdict(model)),  # Hub id or folder name, never a path
            "base_revision": model.commit or model.revision or "",
            "base_fingerprint": model.fingerprint,
            "method": config.method,
            "langs": ",".join(context.langs),
            "hrl": context.hrl,
            "tool_version": __version__,
            "params": yaml.safe_dump(params, sort_keys=True),
        },
    )
    workspace.begin_stage("solve")
    path = save_edit(edit, workspace.edit_dir)
    summary = {
        "method": config.method,
        "params": params,
        "edit_sha256": edit_sha256(edit),
        "rows": edit.num_rows,
        "tensors": [item.name for item in tensor_edits],
        "layers": {int(layer): _plain(values) for layer, values in report.items()},
    }
    atomic_write_text(workspace.edit_dir / "edit.yaml", yaml.safe_dump(summary, sort_keys=False))
    workspace.record_stage(
        "solve",
        params,
        {
            "edit": str(path.relative_to(workspace.root)),
            "edit_sha256": summary["edit_sha256"],
            "rows": edit.num_rows,
        },
    )
    workspace.invalidate_after("solve")
    return summary


def _plain(value: Any) -> Any:
    """Diagnostics as plain YAML types."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, float):
        return round(value, 6)
    return value
