"""Tiny randomly initialised real architectures, saved as sharded safetensors checkpoints with a
word-level tokenizer and a chat template, so every stage runs on them as on a Hub model."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

# The shared data sets sit next to the checkout (../shared); SWE_SHARED_DIR points elsewhere.
SHARED_DIR = Path(
    os.environ.get("SWE_SHARED_DIR") or Path(__file__).resolve().parents[1].parent / "shared"
)
MULTIJAIL = SHARED_DIR / "data" / "multijail" / "MultiJail.csv"


def load_bench(name: str) -> ModuleType:
    """bench/NAME.py of this checkout as a module (bench/ is not a package)."""
    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


WORDS = (
    "how do i make a bomb poison weapon steal hack cake bread garden letter friend "
    "cómo hago una bomba veneno pastel pan jardín carta amigo "
    "vipi ninatengeneza bomu sumu keki mkate bustani barua rafiki please tell me about the"
).split()

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|> {{ message['content'] }} <|end|> "
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

_COMMON = dict(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    tie_word_embeddings=False,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)


def tiny_config(family: str) -> Any:
    """A transformers config of a real architecture, small enough for a unit test."""
    import transformers as tf

    if family == "llama":
        return tf.LlamaConfig(**_COMMON)
    if family == "mistral":
        return tf.MistralConfig(**_COMMON, sliding_window=None)
    if family == "qwen2":
        return tf.Qwen2Config(**_COMMON)
    if family == "qwen3":
        return tf.Qwen3Config(**_COMMON, head_dim=8)
    if family == "gemma2":
        return tf.Gemma2Config(**_COMMON, head_dim=8, query_pre_attn_scalar=8)
    if family == "phi3":
        return tf.Phi3Config(**_COMMON)
    raise ValueError(family)


def make_tokenizer(directory: Path) -> None:
    """A word-level tokenizer with role tokens and a chat template, saved in HF layout."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = [
        "<pad>",
        "<s>",
        "</s>",
        "<unk>",
        "<|user|>",
        "<|assistant|>",
        "<|system|>",
        "<|end|>",
    ]
    vocab = {token: index for index, token in enumerate(specials + sorted(set(WORDS)))}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        additional_special_tokens=["<|user|>", "<|assistant|>", "<|system|>", "<|end|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(directory)


def make_tiny_checkpoint(
    directory: Path,
    family: str = "llama",
    dtype: torch.dtype = torch.float32,
    max_shard_size: str | int | None = 20_000,
    seed: int = 0,
) -> Path:
    """Save a random model of `family` into `directory`; sharded unless max_shard_size is None."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(family)
    model = AutoModelForCausalLM.from_config(config).to(dtype)
    with torch.no_grad():  # random init leaves some norms at exactly 1/0; perturb so they matter
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    directory.mkdir(parents=True, exist_ok=True)
    kwargs = (
        {"max_shard_size": max_shard_size}
        if max_shard_size is not None
        else {"max_shard_size": "10GB"}
    )
    model.save_pretrained(directory, **kwargs)
    make_tokenizer(directory)
    return directory


def write_prompt_files(
    directory: Path, langs: tuple[str, ...] = ("en", "es", "sw"), count: int = 12
) -> dict[str, Path]:
    """Small parallel harmful/harmless sets in the generic formats (wide CSV, long JSONL)."""
    import csv
    import random

    rng = random.Random(0)
    directory.mkdir(parents=True, exist_ok=True)
    harmful_words = ["bomb", "poison", "weapon", "steal", "hack", "bomba", "veneno", "bomu", "sumu"]
    harmless_words = [
        "cake",
        "bread",
        "garden",
        "letter",
        "friend",
        "pastel",
        "pan",
        "keki",
        "mkate",
    ]
    harmful = directory / "harmful.csv"
    with harmful.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", *langs])
        for index in range(count):
            row = [" ".join(rng.choices(harmful_words + WORDS[:6], k=6)) for _ in langs]
            writer.writerow([str(index), *row])
    harmless = directory / "harmless.jsonl"
    with harmless.open("w", encoding="utf-8") as handle:
        for index in range(count):
            for lang in langs:
                text = " ".join(rng.choices(harmless_words + WORDS[:6], k=6))
                handle.write(
                    json.dumps({"id": str(index), "lang": lang, "text": text, "answer": "cake"})
                    + "\n"
                )
    return {"harmful": harmful, "harmless": harmless}


def localized_workspace(
    root: Path, langs: tuple[str, ...] = ("en", "es", "sw"), **probe: Any
) -> Path:
    """A tiny llama probed on every layer with 40 parallel prompts per language (langs[0] the
    HRL) and localized with low thresholds, so every layer of the random model has safety
    neurons. probe: extra ProbeConfig fields. Returns the workspace folder."""
    from swe_cli.io.checkpoint import resolve_model
    from swe_cli.prompts import load_prompt_set
    from swe_cli.settings import LocalizeConfig
    from swe_cli.stages.localize import run_localize
    from swe_cli.stages.probe import ProbeConfig, run_probe
    from swe_cli.workspace import Workspace

    model = make_tiny_checkpoint(root / "model", "llama")
    files = write_prompt_files(root / "prompts", langs, count=40)
    workspace = Workspace(root / "ws")
    run_probe(
        workspace,
        resolve_model(str(model)),
        load_prompt_set(files["harmful"], "harmful", list(langs)),
        load_prompt_set(files["harmless"], "harmless", list(langs)),
        None,
        ProbeConfig(langs=langs[1:], batch_size=16, **probe),
    )
    run_localize(workspace, LocalizeConfig(tau_mag=0.5, tau_stat=0.2))
    return workspace.root


def run_swe(*args: str) -> tuple[int, str]:
    """Run `swe ARGS` in-process through the console entry point: (exit code, stdout)."""
    import contextlib
    import io
    import sys

    import pytest

    from swe_cli.cli import main

    argv, buffer = sys.argv, io.StringIO()
    sys.argv = ["swe", *args]
    try:
        with contextlib.redirect_stdout(buffer), pytest.raises(SystemExit) as done:
            main()
    finally:
        sys.argv = argv
    return int(done.value.code or 0), buffer.getvalue()


def small_general(directory: Path, ids: int = 4) -> Path:
    """The first `ids` texts of each language of swe's built-in general text, as a file: the
    real-model pipeline tests stream moments over general text and measure perplexity on its
    held-out part, but need not pay for all of it."""
    from importlib import resources

    source = resources.files("swe_cli") / "data" / "general.jsonl"
    rows = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line]
    kept = sorted({row["id"] for row in rows})[:ids]
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "general.jsonl"
    path.write_text(
        "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows if row["id"] in kept),
        encoding="utf-8",
    )
    return path
