"""The base model's eval, kept between runs: its answers (harmful, harmless, over-refusal probes,
short answers), multiple-choice picks and perplexities, before judging; and likewise its short
answers to `swe select`'s validation prompts. The base does not change between two gated runs
(or two selections), so the second measures only the edited model (or the candidates).

One JSON file per key under <cache>/base-eval/: the key covers the model (its fingerprint and
the files that shape its answers: tokenizer, chat template, generation config), every prompt and
item measured, the generation settings and swe's version. A damaged file is ignored and
rewritten, never trusted in part. The KL divergence's base logits are not kept (a vocabulary of
logits per token is hundreds of MB on a real model): they cost one forward pass, no generation."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from swe_cli import __version__
from swe_cli.io.files import atomic_write_text

FORMAT = 1
# files besides the weights that change what a model answers
MODEL_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)


def default_cache_dir() -> Path:
    return Path(os.environ.get("SWE_CACHE", Path.home() / ".cache" / "swe")) / "base-eval"


def model_key(model_dir: Path) -> str:
    """The checkpoint's fingerprint and the sha256 of the files besides the weights."""
    from swe_cli.io.checkpoint import fingerprint

    digest = hashlib.sha256(fingerprint(model_dir).encode())
    for name in MODEL_FILES:
        path = model_dir / name
        if path.is_file():
            digest.update(f"{name}\n".encode())
            digest.update(hashlib.sha256(path.read_bytes()).hexdigest().encode())
    return digest.hexdigest()


def cache_key(model: str, plan: Sequence[Any], settings: dict[str, Any]) -> str:
    """sha256 of the model key, every measured prompt and item (language, id, text) in order,
    the generation settings and swe's version."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"model": model, "swe": __version__, "format": FORMAT}).encode())
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for language in plan:
        digest.update(json.dumps(_plan_items(language), ensure_ascii=False).encode())
    return digest.hexdigest()


def prompts_key(model: str, prompts: Mapping[str, Any], settings: dict[str, Any]) -> str:
    """cache_key for measurements that are not an eval plan (`swe select`'s validation cells):
    sha256 of the model key, the prompts as given (nested by name and language, in order), the
    generation settings and swe's version."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"model": model, "swe": __version__, "format": FORMAT}).encode())
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    digest.update(json.dumps(prompts, ensure_ascii=False, sort_keys=True).encode())
    return digest.hexdigest()


def _plan_items(language: Any) -> dict[str, Any]:
    def prompts(items: Sequence[Any]) -> list[list[str]]:
        return [[p.id, p.text] for p in items]

    return {
        "lang": language.lang,
        "harmful": prompts(language.harmful),
        "harmless": prompts(language.harmless),
        "general": prompts(language.general),
        "probes": prompts(language.probes),
        "short_answers": [[i.id, i.question] for i in language.short_answers],
        "choices": [repr(item) for item in language.choices],
    }


def load(directory: Path, key: str) -> dict[str, Any] | None:
    """The cached measurements of this key, or None."""
    path = directory / f"{key}.json"
    if not path.is_file():
        return None
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(document, dict) or document.get("key") != key:
        return None
    measured = document.get("measured")
    return measured if isinstance(measured, dict) else None


def store(directory: Path, key: str, measured: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{key}.json"
    text = json.dumps({"key": key, "swe": __version__, "measured": measured}, ensure_ascii=False)
    atomic_write_text(path, text)
    return path
