"""The solve stage: turn workspace activations and safety-neuron masks into solver inputs, call
the closed-form solver of the chosen method (solve.py) and write the edit artifact and its
diagnostics (WS/edit/). Methods are pluggable by name in METHODS."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from swe_cli import __version__
from swe_cli.architectures import adapter_for
from swe_cli.checkpoint import fingerprint, locate, read_row_bytes, read_rows, rows_sha256
from swe_cli.edit import Edit, TensorEdit, edit_sha256, save_edit
from swe_cli.errors import SolveError, WorkspaceError
from swe_cli.settings import PAPER_RANK, SolveConfig
from swe_cli.stages.localize import load_selected
from swe_cli.stages.probe import load_acts
from swe_cli.workspace import Workspace, atomic_write_text, load_tensors


@dataclass(frozen=True)
class LayerData:
    """Row-paired last-position activations of one layer, all target languages stacked."""

    x_low: Any  # [N_h, d] MLP inputs of LRL harmful prompts
    x_hrl: Any  # [N_h, d] the same prompts in the HRL
    a_low: Any  # [N_h, f] neuron activations of LRL harmful prompts
    r_low: Any  # [N_h, d] residual stream after the layer (LRL)
    r_hrl: Any  # [N_h, d] residual stream after the layer (HRL)
    x_safe: Any  # [N_s, d] harmless MLP inputs (all languages)
    a_safe: Any  # [N_s, f] harmless neuron activations (all languages)


def layer_data(
    workspace: Workspace,
    layer: int,
    hrl: str,
    langs: Sequence[str],
    ids: Collection[str] | None = None,
) -> LayerData:
    """ids: keep only these prompt ids, harmful and harmless (None keeps every probed prompt)."""
    import torch

    hrl_acts, hrl_ids = load_acts(workspace, layer, "harmful", hrl)
    position = {
        prompt_id: index
        for index, prompt_id in enumerate(hrl_ids)
        if ids is None or prompt_id in ids
    }
    low: dict[str, list[Any]] = {"x": [], "a": [], "r": [], "x_hrl": [], "r_hrl": []}
    for lang in langs:
        acts, lang_ids = load_acts(workspace, layer, "harmful", lang)
        keep = [index for index, prompt_id in enumerate(lang_ids) if prompt_id in position]
        paired = [position[lang_ids[index]] for index in keep]
        if not keep:
            raise SolveError(
                f"no harmful prompt of '{lang}' has an HRL translation", hint="check the prompt ids"
            )
        for key in ("x", "a", "r"):
            low[key].append(acts[key][keep, -1, :])
        low["x_hrl"].append(hrl_acts["x"][paired, -1, :])
        low["r_hrl"].append(hrl_acts["r"][paired, -1, :])
    safe_x, safe_a = [], []
    for lang in [hrl, *langs]:
        acts, safe_ids = load_acts(workspace, layer, "harmless", lang)
        kept = [
            index for index, prompt_id in enumerate(safe_ids) if ids is None or prompt_id in ids
        ]
        safe_x.append(acts["x"][kept, -1, :])
        safe_a.append(acts["a"][kept, -1, :])
    return LayerData(
        x_low=torch.cat(low["x"]),
        x_hrl=torch.cat(low["x_hrl"]),
        a_low=torch.cat(low["a"]),
        r_low=torch.cat(low["r"]),
        r_hrl=torch.cat(low["r_hrl"]),
        x_safe=torch.cat(safe_x),
        a_safe=torch.cat(safe_a),
    )


@dataclass(frozen=True)
class Context:
    workspace: Workspace
    model_dir: Path
    hrl: str
    langs: list[str]
    probed_layers: list[int]
    intermediate_size: int
    model_type: str


MethodResult = tuple[list[TensorEdit], dict[int, dict[str, Any]]]


def paper_solution(data: LayerData, W_S: Any, config: SolveConfig) -> Any:
    """The paper's closed form (soft gamma penalty, or the hard null-space variant) for one
    projection's W_S = G[S,:]^T; shared by solve and tune."""
    from swe_cli.methods.linalg import solve_paper, solve_paper_hard

    rank = config.rank or PAPER_RANK
    if config.hard:
        return solve_paper_hard(
            data.x_low,
            data.x_hrl,
            data.x_safe,
            W_S,
            rank=rank,
            lam=config.lam,
            threshold=config.threshold,
            device=config.device,
        )
    return solve_paper(
        data.x_low,
        data.x_hrl,
        data.x_safe,
        W_S,
        rank=rank,
        gamma=config.gamma,
        lam=config.lam,
        device=config.device,
    )


def solve_paper_method(context: Context, config: SolveConfig) -> MethodResult:
    """Paper Algorithm 1 on the gate (and optionally up) rows of the HRL safety neurons."""
    import torch

    adapter = adapter_for(context.model_type)
    layers = list(config.layers) if config.layers else [default_paper_layer(context)]
    edits: list[TensorEdit] = []
    report: dict[int, dict[str, Any]] = {}
    for layer in layers:
        neurons = load_selected(context.workspace, layer, context.hrl)
        if len(neurons) == 0:
            raise SolveError(
                f"layer {layer} has no HRL safety neurons at the current thresholds",
                hint="lower --tau-mag/--tau-stat in `swe localize` or choose another layer",
            )
        data = layer_data(context.workspace, layer, context.hrl, context.langs)
        report[layer] = {"neurons": len(neurons)}
        for projection in config.projections:
            name, offset = adapter.tensor(layer, projection, context.intermediate_size)  # type: ignore[arg-type]
            rows = (neurons + offset).tolist()
            weights, dtype, sha = read_rows(context.model_dir, name, rows)
            W_S = weights.T  # d x m, paper notation
            solution = paper_solution(data, W_S, config)
            edits.append(
                TensorEdit(
                    name=name,
                    rows=torch.tensor(rows, dtype=torch.int64),
                    delta=solution.delta.T.contiguous(),
                    base_sha256=sha,
                    shape=_shape_of(context, name),
                    dtype=dtype,
                )
            )
            report[layer][projection] = solution.diagnostics
    return edits, report


def solve_residual_method(context: Context, config: SolveConfig) -> MethodResult:
    """Multi-layer down_proj edit towards the HRL residual stream (DESIGN.md method `residual`).

    The target h_HRL - h_LRL after the last edited layer is spread over the edited layers in
    order (MEMIT): each layer takes its share of what the earlier layers' predicted outputs left."""
    import torch

    adapter = adapter_for(context.model_type)
    layers = sorted(config.layers) if config.layers else default_residual_layers(context)
    last = layer_data(context.workspace, layers[-1], context.hrl, context.langs)
    remaining = (last.r_hrl - last.r_low).T.to(torch.float64)  # d x n
    edits: list[TensorEdit] = []
    report: dict[int, dict[str, Any]] = {}
    for position, layer in enumerate(layers):
        data = (
            last
            if layer == layers[-1]
            else layer_data(context.workspace, layer, context.hrl, context.langs)
        )
        C0 = load_moment(context.workspace, layer)
        K, Kn = data.a_low.T, data.a_safe.T
        columns = None
        if config.sparse:
            columns = load_selected(context.workspace, layer, context.hrl)
            if len(columns) == 0:
                raise SolveError(
                    f"layer {layer} has no HRL safety neurons", hint="lower the localize thresholds"
                )
            K, Kn, C0 = K[columns], Kn[columns], C0[columns][:, columns]
        solution, remaining = residual_step(K, Kn, C0, remaining, len(layers) - position, config)
        name, _ = adapter.tensor(layer, "down", context.intermediate_size)
        entry = locate(context.model_dir, name)  # every row: hash the bytes, no float copy
        shape, dtype = entry.shape, entry.dtype
        rows = list(range(shape[0]))
        sha = rows_sha256(read_row_bytes(entry, rows))
        edits.append(
            TensorEdit(
                name=name,
                rows=torch.tensor(rows, dtype=torch.int64),
                delta=solution.delta.contiguous(),
                base_sha256=sha,
                shape=shape,
                dtype=dtype,
                cols=None if columns is None else columns.to(torch.int64),
            )
        )
        report[layer] = {"neurons": K.shape[0], "down": solution.diagnostics}
    return edits, report


def residual_step(
    K: Any, Kn: Any, C0: Any, remaining: Any, layers_left: int, config: SolveConfig
) -> tuple[Any, Any]:
    """One MEMIT spreading step: this layer solves for remaining / layers_left (its share) and
    returns its solution and the target its predicted output dW K leaves to the later layers."""
    import torch

    from swe_cli.methods.linalg import solve_residual

    solution = solve_residual(
        K,
        remaining / layers_left,
        C0=C0,
        Kn=Kn,
        alpha=config.alpha,
        beta=config.beta,
        lam=config.lam,
        hard=config.hard,
        threshold=config.threshold,
        rank=config.rank,
        device=config.device,
    )
    remaining = remaining - solution.delta.to(torch.float64) @ K.to(torch.float64)
    return solution, remaining


METHODS: dict[str, Callable[[Context, SolveConfig], MethodResult]] = {
    "paper": solve_paper_method,
    "residual": solve_residual_method,
}


def _shape_of(context: Context, name: str) -> tuple[int, ...]:
    from swe_cli.checkpoint import locate

    return locate(context.model_dir, name).shape


def load_moment(workspace: Workspace, layer: int) -> Any:
    """Mean second moment of the neuron activations over all streamed positions."""
    path = workspace.stats_path(layer)
    if not path.exists():
        raise WorkspaceError(
            f"no activation moments for layer {layer} in {workspace.root}",
            hint=f"re-run `swe probe` with --stats-layers including {layer}",
        )
    tensors, _ = load_tensors(path)
    return tensors["aa"] / float(tensors["count"].item())


def default_paper_layer(context: Context) -> int:
    """The probed layer with the most HRL safety neurons (the paper edits one layer)."""
    sizes = context.workspace.require_stage("localize")["outputs"]["layers"]
    return max(
        context.probed_layers, key=lambda layer: (sizes[layer]["sizes"][context.hrl], -layer)
    )


def default_residual_layers(context: Context) -> list[int]:
    """Every probed layer that has moments, except the first (prototype: layers 1-3 of 4)."""
    with_moments = [
        layer for layer in context.probed_layers if context.workspace.stats_path(layer).exists()
    ]
    if not with_moments:
        raise WorkspaceError(
            "no probed layer has activation moments", hint="re-run `swe probe` with --stats-layers"
        )
    return with_moments[1:] if len(with_moments) > 1 else with_moments


def run_solve(workspace: Workspace, config: SolveConfig) -> dict[str, Any]:
    """Compute the edit with the chosen method; write WS/edit/edit.safetensors and edit.yaml."""
    if config.method not in METHODS:
        raise SolveError(
            f"unknown method '{config.method}'", hint="choose one of: " + ", ".join(METHODS)
        )
    probe = workspace.require_stage("probe")
    workspace.require_stage("localize")
    manifest = workspace.load()
    model = manifest["model"]
    if fingerprint(Path(model["path"])) != model["fingerprint"]:  # the rows are read from there
        raise WorkspaceError(
            f"the model at {model['path']} is not the one workspace {workspace.root} was probed "
            f"with ('{model['id']}')",
            hint="restore that model there, or probe this model into another -w/--workspace",
        )
    context = Context(
        workspace=workspace,
        model_dir=Path(model["path"]),
        hrl=manifest["hrl"],
        langs=list(manifest["langs"]),
        probed_layers=list(probe["params"]["layers"]),
        intermediate_size=int(model["intermediate_size"]),
        model_type=str(model["model_type"]),
    )
    missing = [layer for layer in config.layers or [] if layer not in context.probed_layers]
    if missing:
        raise SolveError(
            f"layer(s) {missing} were not probed", hint="re-run `swe probe` with these --layers"
        )
    tensor_edits, report = METHODS[config.method](context, config)
    params = config.plain()
    edit = Edit(
        tuple(tensor_edits),
        {
            "base_model": str(model["id"]),
            "base_revision": str(model.get("commit") or model.get("revision") or ""),
            "base_fingerprint": str(model["fingerprint"]),
            "method": config.method,
            "langs": ",".join(context.langs),
            "hrl": context.hrl,
            "tool_version": __version__,
            "params": yaml.safe_dump(params, sort_keys=True),
        },
    )
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
