"""Per-family adapters: where the decoder layers live and what their MLP weights are called.

Adding a family is one table entry. Names are given twice because a checkpoint's tensor names and
the loaded module tree can differ (multimodal wrappers); for text-only families they coincide.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from swe_cli.errors import UnsupportedArchitecture

Projection = Literal["gate", "up", "down"]


@dataclass(frozen=True)
class Adapter:
    """How to find layer i's MLP in a module tree and in a checkpoint."""

    family: str
    layers_module: str = "model.layers"
    layers_tensor: str = "model.layers"
    mlp: str = "mlp"
    gate: str = "mlp.gate_proj"
    up: str = "mlp.up_proj"
    down: str = "mlp.down_proj"
    fused_gate_up: str | None = None  # phi3: gate rows are the first half, up rows the second

    def layer_module(self, layer: int) -> str:
        return f"{self.layers_module}.{layer}"

    def mlp_module(self, layer: int) -> str:
        return f"{self.layers_module}.{layer}.{self.mlp}"

    def down_module(self, layer: int) -> str:
        return f"{self.layers_module}.{layer}.{self.down}"

    def tensor(self, layer: int, projection: Projection, intermediate_size: int) -> tuple[str, int]:
        """Checkpoint tensor name and the row offset at which this projection's rows start."""
        prefix = f"{self.layers_tensor}.{layer}"
        if projection == "down":
            return f"{prefix}.{self.down}.weight", 0
        if self.fused_gate_up is not None:
            offset = 0 if projection == "gate" else intermediate_size
            return f"{prefix}.{self.fused_gate_up}.weight", offset
        name = self.gate if projection == "gate" else self.up
        return f"{prefix}.{name}.weight", 0


_GATED = Adapter(family="gated-mlp")

ADAPTERS: dict[str, Adapter] = {
    "llama": Adapter(family="llama"),
    "mistral": Adapter(family="mistral"),
    "qwen2": Adapter(family="qwen2"),
    "qwen3": Adapter(family="qwen3"),
    "gemma": Adapter(family="gemma"),
    "gemma2": Adapter(family="gemma2"),
    "gemma3_text": Adapter(family="gemma3"),
    "gemma3": Adapter(
        family="gemma3",
        layers_module="model.language_model.layers",
        layers_tensor="language_model.model.layers",
    ),
    "phi3": Adapter(family="phi3", gate="", up="", fused_gate_up="mlp.gate_up_proj"),
}


def supported_model_types() -> list[str]:
    return sorted(ADAPTERS)


def adapter_for(model_type: str) -> Adapter:
    """The adapter for a config's model_type; unknown families fail at once with the supported list."""
    try:
        return ADAPTERS[model_type]
    except KeyError:
        raise UnsupportedArchitecture(
            f"model_type '{model_type}' is not supported",
            hint="supported model types: " + ", ".join(supported_model_types()),
        ) from None


@dataclass(frozen=True)
class ModelShape:
    """The sizes the pipeline needs, read from a config.json dict."""

    model_type: str
    num_layers: int
    hidden_size: int
    intermediate_size: int


def model_shape(config: dict[str, Any]) -> ModelShape:
    """Read layer count and MLP sizes from a config dict (text_config for multimodal wrappers)."""
    model_type = str(config.get("model_type", ""))
    adapter_for(model_type)
    text = config.get("text_config") or config
    try:
        return ModelShape(
            model_type=model_type,
            num_layers=int(text["num_hidden_layers"]),
            hidden_size=int(text["hidden_size"]),
            intermediate_size=int(text["intermediate_size"]),
        )
    except KeyError as missing:
        raise UnsupportedArchitecture(
            f"config.json of a '{model_type}' model lacks {missing}",
            hint="the checkpoint's config is incomplete; re-download it",
        ) from None
