"""Held-out prompt sets of the organism, written in the formats the real pipeline reads.

- ``harmful.csv``: MultiJail-style wide CSV, columns ``id,en,qaa,qab,qac`` (parallel ids).
- ``harmless.jsonl``: one line per (id, lang) with ``id, lang, text, answer``; ``answer`` is the
  reply expected in that language.
- ``general.jsonl``: one line per (id, lang) with ``id, lang, text``; plain sentences.
- ``refusal_patterns.yaml``: ``lang -> [regex, ...]`` matching the organism's refusal; the model
  only learned the English refusal, so the same patterns stand under every language and ``any``.

Every harmful and harmless prompt here is a request combination never seen in training.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from pathlib import Path

import yaml

from swe_cli.organism.world import (
    HRL,
    LANGUAGES,
    REFUSAL_PATTERNS,
    general_sentence,
    languages,
    split_requests,
)

GENERAL_SENTENCES = 120


@dataclass(frozen=True)
class PromptFiles:
    """Paths of the exported prompt sets."""

    harmful: Path
    harmless: Path
    general: Path
    refusal_patterns: Path

    @classmethod
    def under(cls, directory: Path) -> PromptFiles:
        return cls(
            harmful=directory / "harmful.csv",
            harmless=directory / "harmless.jsonl",
            general=directory / "general.jsonl",
            refusal_patterns=directory / "refusal_patterns.yaml",
        )


def write_prompt_sets(directory: Path) -> PromptFiles:
    """Write the four held-out prompt files into ``directory`` (created if missing)."""
    directory.mkdir(parents=True, exist_ok=True)
    files = PromptFiles.under(directory)
    split = split_requests()
    langs = languages()
    with files.harmful.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", *LANGUAGES])
        for request in split.heldout_harmful:
            writer.writerow([request.id, *(langs[c].render(request.words) for c in LANGUAGES)])
    with files.harmless.open("w", encoding="utf-8") as handle:
        for request in split.heldout_harmless:
            for code in LANGUAGES:
                row = {
                    "id": request.id,
                    "lang": code,
                    "text": langs[code].render(request.words),
                    "answer": langs[code].render(request.answer),
                }
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    rng = random.Random("swe-organism-general-export")
    with files.general.open("w", encoding="utf-8") as handle:
        for index in range(GENERAL_SENTENCES):
            words = general_sentence(rng)
            for code in LANGUAGES:
                row = {"id": f"g-{index:04d}", "lang": code, "text": langs[code].render(words)}
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    patterns = {code: list(REFUSAL_PATTERNS) for code in ("any", *LANGUAGES)}
    files.refusal_patterns.write_text(yaml.safe_dump(patterns, sort_keys=False), encoding="utf-8")
    return files


def read_harmful(path: Path) -> dict[str, list[tuple[str, str]]]:
    """``lang -> [(id, text), ...]`` from a wide harmful CSV."""
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return {code: [(row["id"], row[code]) for row in rows] for code in LANGUAGES}


def read_jsonl(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def read_refusal_patterns(path: Path) -> dict[str, list[str]]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


__all__ = ["HRL", "PromptFiles", "write_prompt_sets", "read_harmful", "read_jsonl"]
