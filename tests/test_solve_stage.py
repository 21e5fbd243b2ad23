"""Solve-stage tests: probe -> localize -> solve on a tiny llama workspace writes an edit artifact
whose rows, deltas and base hashes are checked against the checkpoint read independently with
safetensors, and diagnostics recomputed from the workspace activations; applied in memory, the edit
moves the LRL harmful representations towards the HRL ones (paper: gate pre-activations; residual:
the residual stream after the last edited layer)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import LANGS, TARGETS
from safetensors import safe_open

from swe_cli.errors import SolveError, WorkspaceError
from swe_cli.settings import LocalizeConfig, SolveConfig
from swe_cli.stages.localize import run_localize
from swe_cli.stages.solve import run_solve
from swe_cli.workspace import Workspace, load_acts, load_tensors

HIDDEN, INTERMEDIATE = 32, 48


@pytest.fixture(scope="module")
def localized_workspace(probed_workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("localized") / "ws"
    shutil.copytree(probed_workspace, root)
    run_localize(Workspace(root), LocalizeConfig())
    return root


@pytest.fixture()
def workspace(localized_workspace: Path, tmp_path: Path) -> Workspace:
    shutil.copytree(localized_workspace, tmp_path / "ws")
    return Workspace(tmp_path / "ws")


def read_edit(workspace: Workspace) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The edit file read with safetensors alone."""
    with safe_open(str(workspace.edit_dir / "edit.safetensors"), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}, handle.metadata()  # noqa: SIM118


def checkpoint_tensor(model_dir: Path, name: str) -> torch.Tensor:
    weight_map = json.loads((model_dir / "model.safetensors.index.json").read_text())["weight_map"]
    with safe_open(str(model_dir / weight_map[name]), framework="pt") as handle:
        return handle.get_tensor(name)


def rows_sha256(weight: torch.Tensor, rows: list[int]) -> str:
    return hashlib.sha256(weight[rows].contiguous().numpy().tobytes()).hexdigest()


def paired_inputs(
    workspace: Workspace, layer: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """X_low (targets stacked), X_en (row-paired by id) and X_safe (all languages)."""
    english, english_ids = load_acts(workspace, layer, "harmful", "en")
    lows, ens = [], []
    for lang in TARGETS:
        acts, ids = load_acts(workspace, layer, "harmful", lang)
        assert ids == english_ids  # parallel sets: the pairing is the identity here
        lows.append(acts["x"][:, -1])
        ens.append(english["x"][:, -1])
    safe = torch.cat(
        [load_acts(workspace, layer, "harmless", lang)[0]["x"][:, -1] for lang in LANGS]
    )
    return torch.cat(lows).double(), torch.cat(ens).double(), safe.double()


def selected(workspace: Workspace, layer: int) -> list[int]:
    return load_tensors(workspace.masks_path)[0][f"L{layer}/en/selected"].tolist()


def edit_yaml(workspace: Workspace) -> dict[str, Any]:
    return yaml.safe_load((workspace.edit_dir / "edit.yaml").read_text())


def load_model(model_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


PAPER_VARIANTS = {
    "soft": SolveConfig(),
    "hard": SolveConfig(hard=True),
    "gate+up": SolveConfig(projections=("gate", "up"), rank=4),
}


@pytest.mark.parametrize("variant", list(PAPER_VARIANTS))
@torch.no_grad()
def test_paper_edit_artifact_and_effect(
    variant: str, workspace: Workspace, tiny_llama: Path
) -> None:
    config = PAPER_VARIANTS[variant]
    summary = run_solve(workspace, config)
    sizes = {layer: len(selected(workspace, layer)) for layer in range(3)}
    layer = max(sizes, key=lambda item: (sizes[item], -item))  # default: most HRL neurons
    assert sizes[layer] > 0
    neurons = selected(workspace, layer)
    tensors, metadata = read_edit(workspace)
    assert metadata["format"] == "swe-edit/1"
    assert metadata["method"] == "paper"
    assert metadata["base_fingerprint"] == workspace.model()["fingerprint"]
    assert metadata["langs"] == ",".join(TARGETS) and metadata["hrl"] == "en"
    layout = json.loads(metadata["tensors"])
    names = {
        "gate": f"model.layers.{layer}.mlp.gate_proj.weight",
        "up": f"model.layers.{layer}.mlp.up_proj.weight",
    }
    expected_names = sorted(names[projection] for projection in config.projections)
    assert sorted(layout) == expected_names == sorted(summary["tensors"])
    assert summary["rows"] == len(neurons) * len(config.projections)

    X_low, X_en, X_safe = paired_inputs(workspace, layer)
    report = edit_yaml(workspace)
    assert report["method"] == "paper" and report["edit_sha256"] == summary["edit_sha256"]
    diagnostics = report["layers"][layer]
    assert diagnostics["neurons"] == len(neurons)
    model = load_model(tiny_llama)
    mlp = model.model.layers[layer].mlp
    for projection in config.projections:
        name = names[projection]
        rows, delta = tensors[f"{name}::rows"], tensors[f"{name}::delta"]
        assert rows.dtype == torch.int64 and rows.tolist() == neurons
        assert delta.dtype == torch.float32 and delta.shape == (len(neurons), HIDDEN)
        assert f"{name}::cols" not in tensors
        weight = checkpoint_tensor(tiny_llama, name)
        assert layout[name] == {
            "base_sha256": rows_sha256(weight, neurons),
            "dtype": "F32",
            "shape": [INTERMEDIATE, HIDDEN],
        }
        # diagnostics recomputed from the workspace activations (paper notation, rows = samples)
        W_S, dW = weight[neurons].T.double(), delta.T.double()
        D = X_en @ W_S - X_low @ W_S
        residual = (X_low @ dW - D).norm() / D.norm()
        values = diagnostics[projection]
        assert values["relative_residual"] == pytest.approx(residual.item(), abs=1e-4)
        leak = (X_safe @ dW).norm() / (X_safe @ W_S).norm()
        assert values["utility_leak"] == pytest.approx(leak.item(), abs=1e-4)
        assert values["rank"] == torch.linalg.matrix_rank(delta).item()
        assert values["rank"] <= (config.rank or 32)
        assert values["condition_number"] >= 1.0
        assert values["n_harmful"] == X_low.shape[0] and values["n_safe"] == X_safe.shape[0]
        # applied in memory: the edited module's pre-activations of the LRL keys move towards
        # the HRL ones (||X_low (W_S + dW) - X_en W_S|| < ||X_low W_S - X_en W_S||)
        module = getattr(mlp, f"{projection}_proj")
        module.weight[rows] += delta
        edited = module(X_low.float())[:, neurons].double()
        before = (X_low @ W_S - X_en @ W_S).norm()
        after = (edited - X_en @ W_S).norm()
        assert after < before
        assert (after / before).item() == pytest.approx(residual.item(), rel=1e-3)
        if variant == "hard":
            assert values["nullspace_dim"] > 0


RESIDUAL_VARIANTS = {
    "soft": SolveConfig(method="residual"),
    "sparse": SolveConfig(method="residual", sparse=True),
    "hard": SolveConfig(method="residual", hard=True),
}


def _record_r(model: Any, tokenizer: Any, layer: int, texts: list[str]) -> torch.Tensor:
    from swe_cli.architectures import adapter_for
    from swe_cli.stages.probe import ProbeConfig, Recorder, chat_text, forward_last_positions

    recorder = Recorder(model, adapter_for("llama"), [layer])
    try:
        chats = [chat_text(tokenizer, text) for text in texts]
        values = forward_last_positions(model, tokenizer, recorder, chats, ProbeConfig(langs=()))
    finally:
        recorder.close()
    return values[(layer, "r")][:, -1]


def _fit_texts(workspace: Workspace, lang: str) -> list[str]:
    lines = (workspace.prompts_dir / "harmful.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    fit = [r for r in records if r["lang"] == lang and r["split"] == "fit"]
    return [r["text"] for r in sorted(fit, key=lambda r: int(r["id"]))]


@pytest.mark.parametrize("variant", list(RESIDUAL_VARIANTS))
@torch.no_grad()
def test_residual_edit_artifact_and_effect(
    variant: str, workspace: Workspace, tiny_llama: Path
) -> None:
    from swe_cli.models import load_model as load_probe_model

    config = RESIDUAL_VARIANTS[variant]
    summary = run_solve(workspace, config)
    layers = [1, 2]  # default: every probed layer with moments but the first
    names = [f"model.layers.{layer}.mlp.down_proj.weight" for layer in layers]
    assert summary["tensors"] == names
    tensors, metadata = read_edit(workspace)
    assert metadata["method"] == "residual"
    layout = json.loads(metadata["tensors"])
    report = edit_yaml(workspace)
    model, tokenizer = load_probe_model(tiny_llama, "cpu", "float32")
    for layer, name in zip(layers, names, strict=True):
        rows, delta = tensors[f"{name}::rows"], tensors[f"{name}::delta"]
        assert rows.dtype == torch.int64 and rows.tolist() == list(range(HIDDEN))
        weight = checkpoint_tensor(tiny_llama, name)
        assert layout[name]["base_sha256"] == rows_sha256(weight, list(range(HIDDEN)))
        assert layout[name]["shape"] == [HIDDEN, INTERMEDIATE]
        columns = list(range(INTERMEDIATE))
        if config.sparse:
            columns = selected(workspace, layer)
            assert tensors[f"{name}::cols"].tolist() == columns
            assert tensors[f"{name}::cols"].dtype == torch.int64
        else:
            assert f"{name}::cols" not in tensors
        assert delta.dtype == torch.float32 and delta.shape == (HIDDEN, len(columns))
        values = report["layers"][layer]["down"]
        assert report["layers"][layer]["neurons"] == len(columns)
        assert values["rank"] == torch.linalg.matrix_rank(delta).item()
        assert 0.0 < values["relative_residual"] < 1.0
        assert values["harmless_key_leak"] >= 0.0 and values["condition_number"] >= 1.0
        if config.hard:
            assert values["nullspace_dim"] > 0
        full = torch.zeros(HIDDEN, INTERMEDIATE)
        full[:, columns] = delta
        model.get_submodule(f"model.layers.{layer}.mlp.down_proj").weight += full

    # applied in memory: the residual stream after the last edited layer of the LRL harmful
    # prompts moves towards that of their HRL translations (recorded by probe on the base model)
    last = layers[-1]
    english, _ = load_acts(workspace, last, "harmful", "en")
    for lang in TARGETS:
        base, _ = load_acts(workspace, last, "harmful", lang)
        edited = _record_r(model, tokenizer, last, _fit_texts(workspace, lang))
        target = english["r"][:, -1]
        before = (base["r"][:, -1] - target).norm()
        after = (edited - target).norm()
        assert after < before, (lang, after, before)


def test_solve_reports_stage_and_invalidates_apply(workspace: Workspace) -> None:
    workspace.record_stage("apply", {}, {})
    summary = run_solve(workspace, SolveConfig())
    record = workspace.require_stage("solve")
    assert record.outputs["edit"] == "edit/edit.safetensors"
    assert record.outputs["edit_sha256"] == summary["edit_sha256"]
    assert record.params["method"] == "paper" and record.params["projections"] == ["gate"]
    assert workspace.load()["stages"]["apply"]["status"] == "stale"


def test_solve_errors(workspace: Workspace, tmp_path: Path) -> None:
    with pytest.raises(SolveError) as caught:
        run_solve(workspace, SolveConfig(method="magic"))
    assert "magic" in caught.value.message and "paper" in caught.value.hint
    assert "residual" in caught.value.hint
    with pytest.raises(SolveError, match=r"\[7\] were not probed"):
        run_solve(workspace, SolveConfig(layers=(7,)))
    with pytest.raises(WorkspaceError, match="not a workspace"):
        run_solve(Workspace(tmp_path / "empty"), SolveConfig())
    run_localize(workspace, LocalizeConfig(tau_mag=100.0, tau_stat=100.0))
    with pytest.raises(SolveError) as caught:
        run_solve(workspace, SolveConfig(layers=(1,)))
    assert "no HRL safety neurons" in caught.value.message and "--tau" in caught.value.hint
    assert not (workspace.edit_dir / "edit.safetensors").exists()


def test_solve_before_localize_fails(probed_workspace: Path, tmp_path: Path) -> None:
    shutil.copytree(probed_workspace, tmp_path / "ws")
    with pytest.raises(WorkspaceError, match="'localize' has not finished"):
        run_solve(Workspace(tmp_path / "ws"), SolveConfig())


def test_solve_refuses_a_replaced_base_model(
    workspace: Workspace, tiny_checkpoint: Any, tmp_path: Path
) -> None:
    """The rows are read from the model folder the workspace remembers: if another model now
    lives there, the edit would be computed against the wrong base."""
    replaced = tmp_path / "model"
    shutil.copytree(tiny_checkpoint("qwen2"), replaced)  # same tensor names and shapes
    manifest = workspace.load()
    manifest["model"]["path"] = str(replaced)
    workspace.save(manifest)
    with pytest.raises(WorkspaceError) as caught:
        run_solve(workspace, SolveConfig())
    assert str(replaced) in caught.value.message
    assert not (workspace.edit_dir / "edit.safetensors").exists()
