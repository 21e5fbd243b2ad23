"""The localize stage: safety-neuron scores per layer and language (paper Appendix B) and the
selected sets. All scores are stored, so choosing other thresholds needs no re-probe."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from swe_cli.settings import LocalizeConfig
from swe_cli.workspace import Workspace, load_acts, save_tensors


@dataclass(frozen=True)
class NeuronScores:
    """Scores of every neuron of one layer for one language."""

    delta: Any  # mean_harm(a) - mean_safe(a)
    z: Any  # (delta - mean over neurons) / std over neurons
    cohen_d: Any  # delta / pooled std


def neuron_scores(harmful: Any, harmless: Any) -> NeuronScores:
    """harmful [n_h, f], harmless [n_s, f] neuron activations at the last prompt position."""
    import torch

    harmful = harmful.to(torch.float64)
    harmless = harmless.to(torch.float64)
    delta = harmful.mean(0) - harmless.mean(0)
    z = (delta - delta.mean()) / delta.std().clamp_min(1e-12)
    n_h, n_s = harmful.shape[0], harmless.shape[0]
    var_h = harmful.var(0, unbiased=True) if n_h > 1 else torch.zeros_like(delta)
    var_s = harmless.var(0, unbiased=True) if n_s > 1 else torch.zeros_like(delta)
    pooled = (((n_h - 1) * var_h + (n_s - 1) * var_s) / max(n_h + n_s - 2, 1)).sqrt()
    cohen_d = delta / pooled.clamp_min(1e-12)
    return NeuronScores(delta.float(), z.float(), cohen_d.float())


def select_neurons(scores: NeuronScores, config: LocalizeConfig) -> Any:
    """S = S_mag union S_stat; harm > safe direction only (both tests are one-sided)."""
    import torch

    mask = (scores.z > config.tau_mag) | (scores.cohen_d > config.tau_stat)
    return torch.nonzero(mask & (scores.delta > 0)).flatten().to(torch.int64)


def jaccard(first: Sequence[int], second: Sequence[int]) -> float:
    a, b = set(first), set(second)
    return len(a & b) / len(a | b) if a | b else 1.0


def jaccard_matrix(selected: dict[str, list[int]]) -> dict[str, dict[str, float]]:
    return {a: {b: round(jaccard(selected[a], selected[b]), 4) for b in selected} for a in selected}


def run_localize(workspace: Workspace, config: LocalizeConfig) -> dict[str, Any]:
    """Score and select per layer and language; write masks/neurons.safetensors; return a summary
    with per-layer set sizes and the Jaccard overlap between languages."""
    workspace.require_stage("probe")
    manifest = workspace.manifest()
    hrl = manifest.hrl
    langs = [hrl, *manifest.langs]
    tensors: dict[str, Any] = {}
    summary: dict[str, Any] = {"hrl": hrl, "layers": {}}
    for layer in manifest.probed_layers:
        selected: dict[str, list[int]] = {}
        for lang in langs:
            harmful, _ = load_acts(workspace, layer, "harmful", lang)
            harmless, _ = load_acts(workspace, layer, "harmless", lang)
            scores = neuron_scores(harmful["a"][:, -1, :], harmless["a"][:, -1, :])
            chosen = select_neurons(scores, config)
            selected[lang] = chosen.tolist()
            prefix = f"L{layer}/{lang}"
            tensors[f"{prefix}/delta"] = scores.delta
            tensors[f"{prefix}/z"] = scores.z
            tensors[f"{prefix}/cohen_d"] = scores.cohen_d
            tensors[f"{prefix}/selected"] = chosen
        summary["layers"][layer] = {
            "sizes": {lang: len(indices) for lang, indices in selected.items()},
            "jaccard": jaccard_matrix(selected),
        }
    metadata = {"tau_mag": str(config.tau_mag), "tau_stat": str(config.tau_stat), "hrl": hrl}
    workspace.begin_stage("localize")
    save_tensors(workspace.masks_path, tensors, metadata)
    outputs = {
        "masks": str(workspace.masks_path.relative_to(workspace.root)),
        "layers": summary["layers"],
    }
    workspace.record_stage(
        "localize", {"tau_mag": config.tau_mag, "tau_stat": config.tau_stat}, outputs
    )
    workspace.invalidate_after("localize")
    return summary
