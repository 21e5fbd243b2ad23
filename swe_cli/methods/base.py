"""What every edit method shares: the Method protocol, the solve context, the workspace data a
method reads (row-paired last-position activations per layer, activation moments), and the
tuning types (candidates, the tune-fit/validation data). A method lives in one file of this
package and is registered by one line in methods/__init__.py (see docs/adding-a-method.md)."""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from swe_cli.edit import TensorEdit
from swe_cli.errors import SolveError
from swe_cli.measure import WeightChange
from swe_cli.settings import SolveConfig
from swe_cli.workspace import Manifest, Workspace, load_acts, load_selected

# (edited tensors, diagnostics per layer: {"neurons": m, <weight>: {...}})
MethodResult = tuple[list[TensorEdit], dict[int, dict[str, Any]]]
# tuning candidates grouped by the layers they edit (each layer's data is read once)
Plan = list[tuple[tuple[int, ...], list[SolveConfig]]]


@dataclass(frozen=True)
class Context:
    """What a method knows about the workspace and its base model."""

    workspace: Workspace
    model_dir: Path
    hrl: str
    langs: list[str]
    probed_layers: list[int]
    intermediate_size: int
    model_type: str
    hidden_size: int = 0


def context_from(workspace: Workspace, manifest: Manifest | None = None) -> Context:
    """The context of a probed and localized workspace (manifest read once by the caller)."""
    manifest = manifest if manifest is not None else workspace.manifest()
    model = manifest.model
    return Context(
        workspace=workspace,
        model_dir=model.path,
        hrl=manifest.hrl,
        langs=list(manifest.langs),
        probed_layers=manifest.probed_layers,
        intermediate_size=model.intermediate_size,
        model_type=model.model_type,
        hidden_size=model.hidden_size,
    )


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
    r_safe: Any = None  # [N_s, d] harmless residual stream after the layer (all languages)
    a_hrl: Any = None  # [N_h, f] neuron activations of the paired HRL harmful prompts
    n_safe_hrl: int = 0  # the first n_safe_hrl harmless rows are the HRL's
    low_langs: tuple[str, ...] = ()  # the language of each LRL harmful row
    safe_ids: tuple[str, ...] = ()  # the prompt id of each harmless row
    safe_langs: tuple[str, ...] = ()  # the language of each harmless row

    def harmless_pairs(self) -> tuple[list[int], list[int]]:
        """Rows of the LRL harmless prompts that have an HRL translation, and the rows of those
        translations (both index the harmless arrays)."""
        hrl_row = {self.safe_ids[row]: row for row in range(self.n_safe_hrl)}
        low = [
            row
            for row in range(self.n_safe_hrl, len(self.safe_ids))
            if self.safe_ids[row] in hrl_row
        ]
        return low, [hrl_row[self.safe_ids[row]] for row in low]


def layer_data(
    workspace: Workspace,
    layer: int,
    hrl: str,
    langs: Sequence[str],
    ids: Collection[str] | None = None,
    positions: int = 1,
) -> LayerData:
    """ids: keep only these prompt ids, harmful and harmless (None keeps every probed prompt).
    positions: rows for each of the last N recorded prompt positions (the chat template's closing
    tokens, the same tokens in every language, so position k of a prompt pairs with position k
    of its translation); harmless ids then read 'ID@k' so that pairs still match."""
    import torch

    hrl_acts, hrl_ids = load_acts(workspace, layer, "harmful", hrl)
    recorded = hrl_acts["x"].shape[1]
    if positions > recorded:
        raise SolveError(
            f"the edit uses the last {positions} prompt positions, the probe recorded {recorded}",
            hint=f"re-run `swe probe --positions {positions}` or lower the solve's positions",
        )

    def last(tensor: Any) -> Any:  # [n, recorded, dim] -> [n * positions, dim], prompt-major
        return tensor[:, -positions:, :].reshape(-1, tensor.shape[-1])

    def expand(names: Sequence[str]) -> list[str]:
        if positions == 1:
            return list(names)
        return [f"{name}@{k}" for name in names for k in range(positions)]

    position = {
        prompt_id: index
        for index, prompt_id in enumerate(hrl_ids)
        if ids is None or prompt_id in ids
    }
    low: dict[str, list[Any]] = {key: [] for key in ("x", "a", "r", "x_hrl", "r_hrl", "a_hrl")}
    low_langs: list[str] = []
    for lang in langs:
        acts, lang_ids = load_acts(workspace, layer, "harmful", lang)
        keep = [index for index, prompt_id in enumerate(lang_ids) if prompt_id in position]
        paired = [position[lang_ids[index]] for index in keep]
        if not keep:
            raise SolveError(
                f"no harmful prompt of '{lang}' has an HRL translation", hint="check the prompt ids"
            )
        for key in ("x", "a", "r"):
            low[key].append(last(acts[key][keep]))
            low[f"{key}_hrl"].append(last(hrl_acts[key][paired]))
        low_langs += [lang] * (len(keep) * positions)
    safe: dict[str, list[Any]] = {"x": [], "a": [], "r": []}
    safe_rows: list[tuple[str, str]] = []
    for lang in [hrl, *langs]:
        acts, safe_ids = load_acts(workspace, layer, "harmless", lang)
        kept = [
            index for index, prompt_id in enumerate(safe_ids) if ids is None or prompt_id in ids
        ]
        for key in safe:
            safe[key].append(last(acts[key][kept]))
        safe_rows += [(name, lang) for name in expand([safe_ids[index] for index in kept])]
    return LayerData(
        x_low=torch.cat(low["x"]),
        x_hrl=torch.cat(low["x_hrl"]),
        a_low=torch.cat(low["a"]),
        r_low=torch.cat(low["r"]),
        r_hrl=torch.cat(low["r_hrl"]),
        x_safe=torch.cat(safe["x"]),
        a_safe=torch.cat(safe["a"]),
        r_safe=torch.cat(safe["r"]),
        a_hrl=torch.cat(low["a_hrl"]),
        n_safe_hrl=len(safe["r"][0]),
        low_langs=tuple(low_langs),
        safe_ids=tuple(prompt_id for prompt_id, _ in safe_rows),
        safe_langs=tuple(lang for _, lang in safe_rows),
    )


# -- tuning ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Candidate:
    """One solved and scored grid point. Residuals and leaks are relative (0 is perfect)."""

    config: SolveConfig
    val_residual: float
    val_leak: float
    score: float  # val_residual + leak_weight * val_leak; inf when the solver failed
    fit_residual: float
    seconds: float
    preservation: float = math.nan  # residual: tr(dW C0 dW^T) / (target energy per key)


@dataclass
class TuneData:
    """What the tuner reads of the workspace, once per tune: each layer's tune-fit and validation
    rows (layer_data filtered by id), the HRL safety neurons, and whatever a method memoises."""

    context: Context
    fit: frozenset[str]
    validation: frozenset[str]
    _pairs: dict[tuple[int, int], tuple[LayerData, LayerData]] = field(default_factory=dict)
    _neurons: dict[int, Any] = field(default_factory=dict)
    _memo: dict[Any, Any] = field(default_factory=dict)

    def pair(self, layer: int, positions: int = 1) -> tuple[LayerData, LayerData]:
        key = (layer, positions)
        if key not in self._pairs:
            workspace, hrl, langs = self.context.workspace, self.context.hrl, self.context.langs
            self._pairs[key] = (
                layer_data(workspace, layer, hrl, langs, ids=self.fit, positions=positions),
                layer_data(workspace, layer, hrl, langs, ids=self.validation, positions=positions),
            )
        return self._pairs[key]

    def neurons(self, layer: int) -> Any:
        if layer not in self._neurons:
            self._neurons[layer] = load_selected(self.context.workspace, layer, self.context.hrl)
        return self._neurons[layer]

    def memo(self, key: Any, compute: Any) -> Any:
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]


class Method(Protocol):
    """An edit method. `solve` computes the edit from the workspace, on `default_layers` when
    the settings name none; `candidates` is its share of `swe select`'s default spread and
    `weight_changes` the in-memory edit select measures; the rest serves `swe tune`: a default
    grid of relative coefficients, the candidates it spans, and a score of each candidate on
    validation prompts (lower is better). Its name and description are its registry line."""

    name: str
    grid: dict[str, list[Any]]  # default tuning values per key
    grid_keys: tuple[str, ...]  # the settings a tuning grid may vary ("layers" first)
    extra_columns: tuple[str, ...]  # Candidate fields beyond the common ones in the tune table

    def solve(self, context: Context, config: SolveConfig) -> MethodResult: ...

    def default_layers(self, context: Context) -> tuple[int, ...]:
        """The layers edited when none are given (`swe solve`, a candidate without @layers)."""
        ...

    def candidates(self, num_layers: int) -> tuple[str, ...]:
        """This method's share of `swe select`'s default spread for a model of num_layers, as
        candidate specs ('name@layers key=value'); () for none."""
        ...

    def moment_layers(self, config: SolveConfig) -> tuple[int, ...] | None:
        """Layers whose all-position moments probe must stream for this configuration (None:
        the probe default)."""
        ...

    def plan(self, data: TuneData, base: SolveConfig, grid: dict[str, list[Any]]) -> Plan: ...

    def score(
        self,
        data: TuneData,
        layers: tuple[int, ...],
        configs: list[SolveConfig],
        leak_weight: float,
    ) -> list[Candidate]: ...

    def system_size(self, context: Context) -> int:
        """The order of the linear systems solved (to choose threads)."""
        ...

    def weight_changes(self, model: Any, data: TuneData, config: SolveConfig) -> list[WeightChange]:
        """The candidate's edit, fitted on the tune-fit ids, as in-memory weight blocks."""
        ...


# -- helpers shared by methods --------------------------------------------------------------------
def module_weight(model: Any, context: Context, layer: int, projection: str) -> tuple[Any, int]:
    """The loaded module's weight for a projection and the row offset of its rows."""
    from swe_cli.architectures import adapter_for

    adapter = adapter_for(context.model_type)
    if projection == "down":
        return model.get_submodule(adapter.down_module(layer)).weight, 0
    if adapter.fused_gate_up is not None:
        module = model.get_submodule(f"{adapter.layer_module(layer)}.{adapter.fused_gate_up}")
        return module.weight, 0 if projection == "gate" else context.intermediate_size
    name = adapter.gate if projection == "gate" else adapter.up
    return model.get_submodule(f"{adapter.layer_module(layer)}.{name}").weight, 0


def band(entry: Any, allowed: Sequence[int]) -> tuple[int, ...]:
    """A grid's layer entry (one layer or a list) checked against the usable layers."""
    layers = tuple(sorted({int(entry)} if isinstance(entry, int) else {int(x) for x in entry}))
    missing = [layer for layer in layers if layer not in allowed]
    if not layers or missing:
        raise SolveError(
            f"grid layers {list(layers) or entry!r}: {missing or 'empty'} not usable",
            hint=f"choose among the probed layers with the data this method needs: {list(allowed)}",
        )
    return layers


def unique(items: Iterable[Any]) -> list[Any]:
    return list(dict.fromkeys(items))


def failed(config: SolveConfig, seconds: float) -> Candidate:
    return Candidate(config, math.inf, math.inf, math.inf, math.inf, seconds)


def ratio(numerator: float, denominator: float) -> float:
    if denominator > 0:
        return float(numerator / denominator)
    return 0.0 if numerator == 0 else math.inf


def relative(residual: Any, reference: Any) -> float:
    import torch

    return ratio(
        torch.linalg.matrix_norm(residual).item(), torch.linalg.matrix_norm(reference).item()
    )


def mean(values: Iterable[float]) -> float:
    values = list(values)
    return float(sum(values) / len(values))


def shape_of(context: Context, name: str) -> tuple[int, ...]:
    from swe_cli.io.checkpoint import locate

    return locate(context.model_dir, name).shape
