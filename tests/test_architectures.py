"""Architecture adapter tests: every supported family resolves, unknown ones fail with the list,
phi3's fused gate_up rows are split where the model splits them, and every adapter name exists in a
tiny real checkpoint (and module tree) of its family."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from swe_cli.architectures import (
    ADAPTERS,
    Adapter,
    adapter_for,
    model_shape,
    supported_model_types,
)
from swe_cli.errors import UnsupportedArchitecture
from swe_cli.io.checkpoint import load_config, read_rows, tensor_index

EXPECTED_TYPES = [
    "gemma",
    "gemma2",
    "gemma3",
    "gemma3_text",
    "llama",
    "mistral",
    "phi3",
    "qwen2",
    "qwen3",
]
TINY_FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "gemma2", "phi3"]


def test_supported_model_types_are_sorted_and_complete() -> None:
    assert supported_model_types() == EXPECTED_TYPES


@pytest.mark.parametrize("model_type", EXPECTED_TYPES)
def test_every_supported_family_resolves(model_type: str) -> None:
    adapter = adapter_for(model_type)
    assert isinstance(adapter, Adapter)
    assert adapter is ADAPTERS[model_type]
    gate, _ = adapter.tensor(5, "gate", 100)
    down, offset = adapter.tensor(5, "down", 100)
    assert gate.endswith(".weight") and ".5." in gate
    assert down.endswith("5.mlp.down_proj.weight") and offset == 0
    assert adapter.down_module(5).endswith("5.mlp.down_proj")


def test_unknown_model_type_lists_supported_types() -> None:
    with pytest.raises(UnsupportedArchitecture) as caught:
        adapter_for("gpt2")
    assert "gpt2" in caught.value.message
    for model_type in EXPECTED_TYPES:
        assert model_type in caught.value.hint
    with pytest.raises(UnsupportedArchitecture, match="mamba"):
        model_shape({"model_type": "mamba", "num_hidden_layers": 2})


def test_model_shape_reads_text_config_and_reports_missing_keys() -> None:
    shape = model_shape(
        {
            "model_type": "gemma3",
            "text_config": {"num_hidden_layers": 4, "hidden_size": 16, "intermediate_size": 40},
        }
    )
    assert (shape.model_type, shape.num_layers, shape.hidden_size, shape.intermediate_size) == (
        "gemma3",
        4,
        16,
        40,
    )
    with pytest.raises(UnsupportedArchitecture, match="intermediate_size"):
        model_shape({"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 8})


def test_names_of_gated_families() -> None:
    llama = adapter_for("llama")
    assert llama.tensor(3, "gate", 48) == ("model.layers.3.mlp.gate_proj.weight", 0)
    assert llama.tensor(3, "up", 48) == ("model.layers.3.mlp.up_proj.weight", 0)
    assert llama.mlp_module(3) == "model.layers.3.mlp"
    assert llama.layer_module(3) == "model.layers.3"
    gemma3 = adapter_for("gemma3")
    assert gemma3.tensor(1, "gate", 48) == (
        "language_model.model.layers.1.mlp.gate_proj.weight",
        0,
    )
    assert gemma3.mlp_module(1) == "model.language_model.layers.1.mlp"


def test_phi3_gate_and_up_rows_share_the_fused_tensor() -> None:
    phi3 = adapter_for("phi3")
    assert phi3.tensor(2, "gate", 48) == ("model.layers.2.mlp.gate_up_proj.weight", 0)
    assert phi3.tensor(2, "up", 48) == ("model.layers.2.mlp.gate_up_proj.weight", 48)
    assert phi3.tensor(2, "down", 48) == ("model.layers.2.mlp.down_proj.weight", 0)


@torch.no_grad()
def test_phi3_offsets_match_the_model_computation(tiny_checkpoint: Callable[[str], Path]) -> None:
    """Rows read at the adapter's gate/up offsets reproduce the loaded Phi3MLP exactly."""
    from transformers import AutoModelForCausalLM

    model_dir = tiny_checkpoint("phi3")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    adapter = adapter_for("phi3")
    f = model.config.intermediate_size
    rows = list(range(f))
    gate_name, gate_offset = adapter.tensor(1, "gate", f)
    up_name, up_offset = adapter.tensor(1, "up", f)
    G, _, _ = read_rows(model_dir, gate_name, [gate_offset + row for row in rows])
    U, _, _ = read_rows(model_dir, up_name, [up_offset + row for row in rows])
    down, _, _ = read_rows(model_dir, adapter.tensor(1, "down", f)[0], list(range(32)))
    x = torch.randn(5, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    expected = model.get_submodule(adapter.mlp_module(1))(x)
    manual = (torch.nn.functional.silu(x @ G.T) * (x @ U.T)) @ down.T
    torch.testing.assert_close(manual, expected, atol=1e-6, rtol=1e-5)
    swapped = (torch.nn.functional.silu(x @ U.T) * (x @ G.T)) @ down.T
    assert not torch.allclose(swapped, expected, atol=1e-4)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_adapter_names_exist_in_tiny_checkpoint(
    family: str, tiny_checkpoint: Callable[[str], Path]
) -> None:
    model_dir = tiny_checkpoint(family)
    config = load_config(model_dir)
    assert config["model_type"] == family
    shape = model_shape(config)
    adapter = adapter_for(family)
    entries = tensor_index(model_dir)
    assert len({entry.file for entry in entries.values()}) > 1  # sharded: names cross files
    f, d = shape.intermediate_size, shape.hidden_size
    for layer in range(shape.num_layers):
        gate, gate_offset = adapter.tensor(layer, "gate", f)
        up, up_offset = adapter.tensor(layer, "up", f)
        down, _ = adapter.tensor(layer, "down", f)
        assert entries[down].shape == (d, f)
        if family == "phi3":
            assert gate == up and entries[gate].shape == (2 * f, d)
            assert (gate_offset, up_offset) == (0, f)
        else:
            assert entries[gate].shape == entries[up].shape == (f, d)
            assert gate_offset == up_offset == 0


@pytest.mark.parametrize("family", ["mistral", "qwen3"])
def test_adapter_modules_exist_in_loaded_model(
    family: str, tiny_checkpoint: Callable[[str], Path]
) -> None:
    """The probe hooks these module paths (llama, qwen2, gemma2, phi3 are probed in test_probe)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint(family), dtype=torch.float32)
    adapter = adapter_for(family)
    for layer in range(model.config.num_hidden_layers):
        mlp = model.get_submodule(adapter.mlp_module(layer))
        down = model.get_submodule(adapter.down_module(layer))
        assert down is mlp.down_proj
        assert model.get_submodule(adapter.layer_module(layer)).mlp is mlp
        for name in (adapter.gate, adapter.up):
            projection = model.get_submodule(f"{adapter.layer_module(layer)}.{name}")
            shape = (model.config.intermediate_size, model.config.hidden_size)
            assert projection.weight.shape == shape
