"""What a model produces on the eval's prompts, before any judging: the prompts per language
(`plan_languages`), the answers generated to the harmful, harmless, over-refusal and
short-answer prompts (swe_cli/models.py), the multiple-choice scores (swe_cli/accuracy.py), the
perplexity of general text, and the next-token KL between base and edited model per language.
stages/evaluate.py judges these and assembles the report."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from swe_cli.accuracy import SHORT_ANSWER_TOKENS, Choice, ShortAnswer, UtilitySets, score_choices
from swe_cli.errors import EvalError, PromptError
from swe_cli.measure import logits_of, next_token_kl
from swe_cli.models import encode_texts, generate, length_batches, pad_rows
from swe_cli.prompts import FIT, HELDOUT, Prompt, PromptSet

# progress(task description, completed, total): called after every batch of every task.
Progress = Callable[[str, int, int], None]


SPLITS = (HELDOUT, FIT, "all")


def perplexity(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    batch_size: int = 16,
    max_length: int = 1024,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[float, int]:
    """(perplexity, number of predicted tokens) over raw texts, tokens pooled."""
    import torch

    encoded = [row[:max_length] for row in encode_texts(tokenizer, texts, special_tokens=True)]
    encoded = [row for row in encoded if len(row) >= 2]
    if not encoded:
        raise EvalError("general texts are too short to measure perplexity", hint="--general")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    total_nll, total_tokens, done = 0.0, 0, 0
    for batch in length_batches([len(row) for row in encoded], batch_size):
        input_ids, attention_mask = pad_rows([encoded[i] for i in batch], pad_id, left=False)
        logits = logits_of(model, input_ids, attention_mask)[:, :-1]
        targets = input_ids[:, 1:].to(logits.device)
        # the loss straight from the logits: no second vocabulary-sized tensor of log-probs
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
        ).view(targets.shape)
        del logits
        mask = attention_mask[:, 1:].to(nll.device).float()
        total_nll += float((nll * mask).sum())
        total_tokens += int(mask.sum())
        done += len(batch)
        if on_batch is not None:
            on_batch(done)
    if not math.isfinite(total_nll):  # exp(nan) is nan, and nan breaks no limit
        raise EvalError(
            f"the perplexity on the general text is not finite (mean log-loss {total_nll})",
            hint="the weights hold nan/inf values: check the edit or adapter (`swe verify`)",
        )
    return math.exp(total_nll / total_tokens), total_tokens


@dataclass(frozen=True)
class LanguagePlan:
    """The prompts of one language used by the evaluation."""

    lang: str
    harmful: tuple[Prompt, ...]
    harmless: tuple[Prompt, ...]
    general: tuple[Prompt, ...]
    probes: tuple[Prompt, ...] = ()
    short_answers: tuple[ShortAnswer, ...] = ()
    choices: tuple[Choice, ...] = ()


def _select(prompt_set: PromptSet | None, lang: str, split: str | None) -> tuple[Prompt, ...]:
    if prompt_set is None or lang not in prompt_set.langs():
        return ()
    return tuple(prompt_set.select(lang, split))


def plan_languages(
    harmful: PromptSet,
    harmless: PromptSet | None,
    general: PromptSet | None,
    langs: Sequence[str],
    split: str,
    utility: UtilitySets | None = None,
) -> list[LanguagePlan]:
    """The prompts per language; every language needs harmful prompts in the split, while
    harmless/general/utility sets may lack a language (its metrics are then null in the
    report). Utility items and probes are never used to fit an edit: all of them are used."""
    if split not in SPLITS:
        raise EvalError(f"unknown split '{split}'", hint=f"use one of {', '.join(SPLITS)}")
    if not langs:
        raise EvalError("no languages to evaluate", hint="pass --langs, e.g. en,bn,sw")
    chosen = None if split == "all" else split
    plan = []
    for lang in dict.fromkeys(langs):
        try:
            harmful_prompts = tuple(harmful.select(lang, chosen))
        except PromptError as error:
            raise EvalError(error.message, hint=error.hint) from None
        if not harmful_prompts:
            raise EvalError(
                f"prompt set '{harmful.name}' has no {split} prompts in '{lang}'",
                hint="use more prompts, another --split, or drop the language",
            )
        sets = utility or UtilitySets()
        plan.append(
            LanguagePlan(
                lang,
                harmful_prompts,
                _select(harmless, lang, chosen),
                _select(general, lang, chosen),
                tuple(p for p in sets.probes if p.lang == lang),
                tuple(item for item in sets.short_answers if item.lang == lang),
                tuple(item for item in sets.choices if item.lang == lang),
            )
        )
    return plan


@dataclass
class Measured:
    """What one model produced before judging."""

    harmful: dict[str, list[str]]
    harmless: dict[str, list[str]]
    perplexity: dict[str, tuple[float, int]]
    probes: dict[str, list[str]] = field(default_factory=dict)
    short_answers: dict[str, list[str]] = field(default_factory=dict)
    choices: dict[str, list[bool]] = field(default_factory=dict)


def measure_model(
    role: str,
    model: Any,
    tokenizer: Any,
    plan: Sequence[LanguagePlan],
    *,
    max_new_tokens: int,
    batch_size: int,
    progress: Progress | None,
    generator: Callable[[Sequence[str], int], list[str]] | None = None,
) -> Measured:
    """The model's answers, choices and perplexities over the plan."""
    measured = Measured({}, {}, {})
    short_tokens = min(max_new_tokens, SHORT_ANSWER_TOKENS)
    # every prompt of every language and set is answered in one call per generation bound, so
    # batches are filled across sets (and sorted by length across them), not one set at a time
    requests: dict[int, list[tuple[str, str, list[str]]]] = {}
    for language in plan:
        lang = language.lang
        for kind, texts, tokens in (
            ("harmful", [p.text for p in language.harmful], max_new_tokens),
            ("harmless", [p.text for p in language.harmless], max_new_tokens),
            ("probes", [p.text for p in language.probes], max_new_tokens),
            ("short_answers", [i.question for i in language.short_answers], short_tokens),
        ):
            if texts:
                requests.setdefault(tokens, []).append((kind, lang, texts))
    for tokens, wanted in requests.items():
        texts = [text for _, _, group in wanted for text in group]
        if generator is not None:
            answers = generator(texts, tokens)
        else:
            answers = generate(
                model,
                tokenizer,
                texts,
                max_new_tokens=tokens,
                batch_size=batch_size,
                on_batch=progress_reporter(progress, f"{role}: answers", len(texts)),
            )
        start = 0
        for kind, lang, group in wanted:
            getattr(measured, kind)[lang] = answers[start : start + len(group)]
            start += len(group)
    for language in plan:
        lang = language.lang
        if language.choices:
            measured.choices[lang] = score_choices(
                model,
                tokenizer,
                language.choices,
                batch_size=batch_size,
                on_batch=progress_reporter(
                    progress, f"{role}: choices {lang}", len(language.choices)
                ),
            )
        if language.general:
            measured.perplexity[lang] = perplexity(
                model,
                tokenizer,
                [p.text for p in language.general],
                batch_size=batch_size,
                on_batch=progress_reporter(
                    progress, f"{role}: perplexity {lang}", len(language.general)
                ),
            )
    return measured


def progress_reporter(
    progress: Progress | None, task: str, total: int
) -> Callable[[int], None] | None:
    if progress is None:
        return None
    progress(task, 0, total)
    return lambda done: progress(task, done, total)


def kl_per_language(
    base: Any,
    edited: Any,
    tokenizer: Any,
    plan: Sequence[LanguagePlan],
    *,
    batch_size: int,
    progress: Progress | None,
) -> dict[str, float]:
    return {
        language.lang: next_token_kl(
            base,
            edited,
            tokenizer,
            [p.text for p in language.harmless],
            batch_size=batch_size,
            on_batch=progress_reporter(progress, f"KL {language.lang}", len(language.harmless)),
        )
        for language in plan
        if language.harmless
    }
