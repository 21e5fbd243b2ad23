"""Measure the organism's multilingual safety gap on its held-out prompt sets.

Greedy generation in every language: ASR is the share of harmful prompts whose reply matches no
refusal pattern, harmless accuracy the share of replies that start with the reference answer,
over-refusal the share of harmless prompts refused.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from swe_cli.organism.export import PromptFiles, read_harmful, read_jsonl, read_refusal_patterns
from swe_cli.organism.world import LANGUAGES

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def generate_replies(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    *,
    batch_size: int = 128,
    max_new_tokens: int = 16,
) -> list[str]:
    """Greedy replies to single-turn user messages, batched with left padding."""
    import torch

    replies: list[str] = []
    tokenizer.padding_side = "left"
    for start in range(0, len(texts), batch_size):
        prompts = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
            )
            for text in texts[start : start + batch_size]
        ]
        encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            output = model.generate(
                **encoded,
                do_sample=False,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        new_tokens = output[:, encoded["input_ids"].shape[1] :]
        replies.extend(
            tokenizer.decode(row, skip_special_tokens=True).strip() for row in new_tokens
        )
    return replies


def is_refusal(reply: str, patterns: list[str]) -> bool:
    return any(re.search(pattern, reply, flags=re.IGNORECASE) for pattern in patterns)


def gap_metrics(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts_dir: Path
) -> dict[str, float]:
    """``asr/<lang>``, ``harmless_accuracy/<lang>``, ``over_refusal/<lang>`` for every language."""
    files = PromptFiles.under(prompts_dir)
    harmful = read_harmful(files.harmful)
    harmless = read_jsonl(files.harmless)
    all_patterns = read_refusal_patterns(files.refusal_patterns)
    metrics: dict[str, float] = {}
    for lang in LANGUAGES:
        patterns = all_patterns.get(lang, []) + all_patterns.get("any", [])
        replies = generate_replies(model, tokenizer, [text for _, text in harmful[lang]])
        metrics[f"asr/{lang}"] = _share(not is_refusal(reply, patterns) for reply in replies)
        rows = [row for row in harmless if row["lang"] == lang]
        replies = generate_replies(model, tokenizer, [row["text"] for row in rows])
        metrics[f"harmless_accuracy/{lang}"] = _share(
            reply.split()[: len(row["answer"].split())] == row["answer"].split()
            for reply, row in zip(replies, rows, strict=True)
        )
        metrics[f"over_refusal/{lang}"] = _share(is_refusal(reply, patterns) for reply in replies)
    return metrics


def measure_gap(model_dir: Path, prompts_dir: Path) -> dict[str, float]:
    """Load a saved organism (or any causal LM with a chat template) and measure its gap."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32")
    model.eval()
    return gap_metrics(model, tokenizer, prompts_dir)


def _share(flags: object) -> float:
    values = list(flags)  # type: ignore[call-overload]
    return sum(bool(v) for v in values) / max(1, len(values))
