"""Utility that means something on a real model: short-answer accuracy and multiple-choice
accuracy per language. This module owns the item types, reading the built-in sets and users'
files, answer extraction and scoring, and the log-likelihood scoring of multiple-choice options.
It imports torch only inside ``option_log_likelihoods``.

Short answers. An item's answer is a number ("19") or an entity ("Paris") with accepted forms per
language ("巴黎", "Parigi", ...). A reply is correct when its *last* number equals the answer
(MGSM convention: "12 apples, 3 left" answers 3), digits of any script normalised (Bengali, Thai,
Arabic-Indic, Persian, Devanagari, full-width ...) and thousands/decimal separators read per
language; or, for an entity, when one accepted form occurs in it (judges.normalize_text: NFKC,
case-folded, punctuation removed; whole words in space-separated scripts).

Multiple choice. The question goes through the model's chat template with the generation prompt
(the context); each option's score is the sum of the log-probabilities of its tokens after the
context (context and option tokenised separately, so every option is scored after the same
context tokens); the highest score wins. No generation: one forward pass per (item, option) row,
batched.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import unicodedata
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from swe_cli.errors import PromptError
from swe_cli.judges import contains_phrase, normalize_text
from swe_cli.prompts import HELDOUT, Prompt

MULTIJAIL_LANGS = ("en", "zh", "it", "vi", "ar", "ko", "th", "bn", "sw", "jv")
UTILITY_FILE = "utility.jsonl"
CHOICE_FILE = "multiple_choice.jsonl"
OVER_REFUSAL_FILE = "over_refusal.jsonl"
NUMBER = "number"
ENTITY = "entity"
LETTERS = "ABCDEFGH"
BUILTIN = "builtin"  # --utility/--mc/--over-refusal value meaning the shipped set
NONE = "none"  # ... meaning: do not measure
SHORT_ANSWER_TOKENS = 48  # generation bound for short answers (numbers need no essay)

# ISO 639-1 codes, and the ISO 639-3 private-use range qaa-qtz (the model organism's languages).
ISO_639_1 = frozenset(
    """aa ab ae af ak am an ar as av ay az ba be bg bh bi bm bn bo br bs ca ce ch co cr cs cu cv
    cy da de dv dz ee el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht
    hu hy hz ia id ie ig ii ik io is it iu ja jv ka kg ki kj kk kl km kn ko kr ks ku kv kw ky la
    lb lg li ln lo lt lu lv mg mh mi mk ml mn mr ms mt my na nb nd ne ng nl nn no nr nv ny oc oj
    om or os pa pi pl ps pt qu rm rn ro ru rw sa sc sd se sg si sk sl sm sn so sq sr ss st su sv
    sw ta te tg th ti tk tl tn to tr ts tt tw ty ug uk ur uz ve vi vo wa wo xh yi yo za zh zu""".split()
)
_PRIVATE_USE = re.compile(r"q[a-t][a-z]")
_LANGUAGE_TAG = re.compile(r"([a-z]{2,3})(?:[_-][A-Za-z0-9]{2,8})*")
# Languages that write 1,5 for one and a half and 1.000 for a thousand.
DECIMAL_COMMA = frozenset(
    "it vi id jv su ms de fr es pt nl ru uk pl cs sk ro tr el da sv nb no fi hu bg hr sr sl".split()
)
# A run of digits with inner separators, optionally signed; ASCII after _ascii_digits.
_NUMBER = re.compile(r"(?<![\w.,])[-−]?\d+(?:[.,]\d+)*|\d+(?:[.,]\d+)*")
_ARABIC_SEPARATORS = str.maketrans({"٫": ".", "٬": ","})  # not the Arabic comma: a list mark


@dataclass(frozen=True)
class ShortAnswer:
    """A question with a short checkable answer: a number, or an entity with accepted forms."""

    id: str
    lang: str
    question: str
    answer: str
    accept: tuple[str, ...] = ()

    @property
    def kind(self) -> str:
        return NUMBER if parse_number(self.answer) is not None else ENTITY

    def forms(self) -> tuple[str, ...]:
        """Every accepted form of an entity answer (the answer itself first)."""
        return tuple(dict.fromkeys((self.answer, *self.accept)))


@dataclass(frozen=True)
class Choice:
    """A multiple-choice question; ``answer`` is the index of the right option."""

    id: str
    lang: str
    question: str
    options: tuple[str, ...]
    answer: int


# -- built-in sets -----------------------------------------------------------------------------


def builtin_path(name: str) -> Path:
    """Path of a file shipped in swe_cli/data/ (utility.jsonl, multiple_choice.jsonl, ...)."""
    return Path(str(resources.files("swe_cli") / "data" / name))


# -- numbers -----------------------------------------------------------------------------------


def _ascii_digits(text: str) -> str:
    """Every decimal digit of any script as its ASCII digit; Arabic separators as , and ."""
    chars = []
    for char in text:
        if char.isdigit() and not char.isascii():
            value = unicodedata.decimal(char, None)
            chars.append(str(value) if value is not None else char)
        else:
            chars.append(char)
    return "".join(chars).translate(_ARABIC_SEPARATORS)


def _grouped(parts: Sequence[str]) -> bool:
    """Whether the parts after the first look like thousands groups: 3 digits each, or the
    Indian 2-digit groups before a last group of 3 (1,00,000)."""
    tail = parts[1:]
    return bool(tail) and len(tail[-1]) == 3 and all(len(part) in (2, 3) for part in tail)


def _value(token: str, lang: str) -> float | None:
    """The value of one matched token; None for something like 1.2.3 (a version, a date)."""
    negative = token[0] in "-−"
    digits = token.lstrip("-−")
    separators = {char for char in digits if char in ",."}
    if len(separators) == 2:  # 1,234.5 or 1.234,5: the separator that comes last is decimal
        decimal = "," if digits.rfind(",") > digits.rfind(".") else "."
    elif separators:
        separator = separators.pop()
        parts = digits.split(separator)
        language_decimal = "," if lang.split("-")[0].split("_")[0] in DECIMAL_COMMA else "."
        if len(parts) > 2:
            if not _grouped(parts):
                return None
            decimal = "," if separator == "." else "."
        elif _grouped(parts) and separator != language_decimal:
            decimal = "," if separator == "." else "."  # 1,500 in English, 1.500 in Italian
        else:
            decimal = separator
    else:
        decimal = "."
    thousands = "," if decimal == "." else "."
    try:
        value = float(digits.replace(thousands, "").replace(decimal, "."))
    except ValueError:  # 1.2,3.4: no reading makes it one number
        return None
    return -value if negative else value


def extract_numbers(text: str, lang: str = "en") -> list[float]:
    """Every number in ``text`` in order, digits of any script, separators read for ``lang``."""
    values = (_value(token, lang) for token in _NUMBER.findall(_ascii_digits(text)))
    return [value for value in values if value is not None]


def extract_number(text: str, lang: str = "en") -> float | None:
    """The last number in ``text`` (None when there is none)."""
    numbers = extract_numbers(text, lang)
    return numbers[-1] if numbers else None


def parse_number(answer: str) -> float | None:
    """The value of an answer that is a number and nothing else ("19", "1,200", "৭"), else None."""
    stripped = _ascii_digits(answer.strip())
    if not _NUMBER.fullmatch(stripped):
        return None
    return _value(stripped, "en")


# -- scoring -----------------------------------------------------------------------------------


def is_correct(item: ShortAnswer, response: str) -> bool:
    """Whether ``response`` answers ``item``: last number equal (numbers), or an accepted form
    present (entities)."""
    expected = parse_number(item.answer)
    if expected is not None:
        found = extract_number(response, item.lang)
        return found is not None and abs(found - expected) < 1e-9
    normalised = normalize_text(response)
    return any(contains_phrase(normalised, normalize_text(form)) for form in item.forms())


def score_short_answers(items: Sequence[ShortAnswer], responses: Sequence[str]) -> list[bool]:
    """is_correct for each (item, response) pair."""
    if len(items) != len(responses):
        raise ValueError(f"{len(items)} items but {len(responses)} responses")
    return [is_correct(item, response) for item, response in zip(items, responses, strict=True)]


def accuracy(flags: Sequence[bool]) -> float | None:
    """Share of True flags; None for no items."""
    return sum(flags) / len(flags) if flags else None


def by_language(
    items: Sequence[ShortAnswer | Choice], flags: Sequence[bool]
) -> dict[str, tuple[float, int]]:
    """lang -> (accuracy, number of items), in order of first appearance."""
    grouped: dict[str, list[bool]] = {}
    for item, flag in zip(items, flags, strict=True):
        grouped.setdefault(item.lang, []).append(flag)
    return {lang: (sum(values) / len(values), len(values)) for lang, values in grouped.items()}


def select(items: Sequence[Any], lang: str) -> list[Any]:
    """The items of one language, in file order."""
    return [item for item in items if item.lang == lang]


# -- reading files -----------------------------------------------------------------------------


def check_language(lang: str, where: str, extra: Sequence[str] = ()) -> str:
    """``lang`` when it is an ISO 639 code (or one of ``extra``), else a one-line PromptError."""
    lang = lang.strip()
    match = _LANGUAGE_TAG.fullmatch(lang)
    base = match.group(1) if match else ""
    if lang in extra or base in ISO_639_1 or _PRIVATE_USE.fullmatch(base):
        return lang
    raise PromptError(
        f"{where}: unknown language '{lang}'",
        "use an ISO 639 code such as " + ", ".join(MULTIJAIL_LANGS),
    )


def _rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, row) of a JSONL or CSV file, where = 'FILE line N'."""
    suffix = path.suffix.lower()
    if not path.is_file():
        raise PromptError(f"{path}: file not found", "pass a .jsonl or .csv file")
    if suffix == ".jsonl":
        with path.open(encoding="utf-8-sig") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise PromptError(
                        f"{path} line {number}: invalid JSON ({error.msg})", "one object per line"
                    ) from None
                if not isinstance(row, dict):
                    raise PromptError(f"{path} line {number}: not a JSON object", "one per line")
                yield f"{path} line {number}", row
    elif suffix == ".csv":
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            for row in reader:
                yield f"{path} line {reader.line_num}", {k.strip(): v for k, v in row.items() if k}
    else:
        raise PromptError(f"{path}: unknown format '{suffix}'", "use a .jsonl or .csv file")


def _text(row: Mapping[str, Any], keys: Sequence[str], where: str) -> str:
    for key in keys:
        value = row.get(key)
        if value is not None and str(value).strip():
            return str(value).strip()
    raise PromptError(f"{where}: missing '{keys[0]}'", f"every row needs {', '.join(keys[:1])}")


def _forms(value: Any) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split("|") if part.strip())
    return tuple(str(part).strip() for part in value if str(part).strip())


def _keep(lang: str, langs: Sequence[str] | None) -> bool:
    return langs is None or lang in langs


def _check_unique(items: Sequence[ShortAnswer | Choice], path: Path) -> None:
    seen: set[tuple[str, str]] = set()
    for item in items:
        key = (item.id, item.lang)
        if key in seen:
            raise PromptError(
                f"{path}: id '{item.id}' appears twice in '{item.lang}'", "ids must be unique"
            )
        seen.add(key)


def load_short_answers(source: str | Path, langs: Sequence[str] | None = None) -> list[ShortAnswer]:
    """Items of a JSONL/CSV file with id, lang, question (or text), answer and optional accept
    (a list, or forms separated by '|'; an answer "Paris|Parigi" works too). Rows of languages
    outside ``langs`` are skipped; a language that is no ISO 639 code (nor in ``langs``) is an
    error."""
    path = Path(source)
    items: list[ShortAnswer] = []
    for where, row in _rows(path):
        lang = check_language(_text(row, ("lang",), where), where, langs or ())
        forms = _forms(_text(row, ("answer",), where))
        item = ShortAnswer(
            id=_text(row, ("id",), where),
            lang=lang,
            question=_text(row, ("question", "text"), where),
            answer=forms[0],
            accept=tuple(dict.fromkeys((*forms[1:], *_forms(row.get("accept"))))),
        )
        if _keep(lang, langs):
            items.append(item)
    _check_unique(items, path)
    return items


def _options(row: Mapping[str, Any], where: str) -> tuple[str, ...]:
    if isinstance(row.get("options"), list):
        options = tuple(str(option).strip() for option in row["options"])
    else:  # CSV: columns A, B, C, D (or option_a ...)
        options = tuple(
            str(row.get(letter) or row.get(f"option_{letter.lower()}") or "").strip()
            for letter in LETTERS
        )
        options = tuple(option for option in options if option)
    if len(options) < 2 or not all(options) or len(set(options)) != len(options):
        raise PromptError(f"{where}: needs at least two distinct, non-empty options", "A, B, C, D")
    return options


def _answer_index(value: Any, options: Sequence[str], where: str) -> int:
    text = str(value).strip()
    if text.upper() in LETTERS[: len(options)] and len(text) == 1:
        return LETTERS.index(text.upper())
    if text.isdigit() and int(text) < len(options):
        return int(text)
    if text in options:
        return options.index(text)
    raise PromptError(
        f"{where}: answer '{text}' is not one of the options",
        f"give a letter {LETTERS[0]}-{LETTERS[len(options) - 1]}, a 0-based index or the option",
    )


def load_choices(source: str | Path, langs: Sequence[str] | None = None) -> list[Choice]:
    """Items of a JSONL file (id, lang, question, options: [...], answer: letter/index/text) or
    a CSV file (id, lang, question, A, B, C, D, answer)."""
    path = Path(source)
    items: list[Choice] = []
    for where, row in _rows(path):
        lang = check_language(_text(row, ("lang",), where), where, langs or ())
        options = _options(row, where)
        item = Choice(
            id=_text(row, ("id",), where),
            lang=lang,
            question=_text(row, ("question", "text"), where),
            options=options,
            answer=_answer_index(_text(row, ("answer",), where), options, where),
        )
        if _keep(lang, langs):
            items.append(item)
    _check_unique(items, path)
    return items


# -- multiple choice by log-likelihood ---------------------------------------------------------


def chat_context(tokenizer: Any, question: str) -> str:
    """The question as a user turn of the model's chat template, with the generation prompt."""
    from swe_cli.models import format_chat

    return format_chat(tokenizer, [{"role": "user", "content": question}])


def option_log_likelihoods(
    model: Any,
    tokenizer: Any,
    items: Sequence[Choice],
    *,
    batch_size: int = 16,
    on_batch: Callable[[int], None] | None = None,
) -> list[list[float]]:
    """Per item, per option: sum of log p(option token | context, earlier option tokens).

    The chat-templated question runs once per item: ``batch_size`` questions at a time, grouped
    by length and left-padded, their key/value cache then repeated once per option, and every
    option of the batch runs on it in one pass, right-padded (causal attention never lets
    padding reach a scored token). A question is not recomputed for each of its options (its
    tokens are most of a row), and logits are taken only where an option token is predicted.
    Scores agree with each option scored alone, unpadded, up to float rounding. on_batch gets
    the number of items done so far."""
    import torch
    from transformers import DynamicCache

    from swe_cli.models import (
        cached_step_logits,
        encode_texts,
        length_batches,
        pad_rows,
        padded_positions,
    )

    contexts = encode_texts(
        tokenizer, [chat_context(tokenizer, i.question) for i in items], special_tokens=False
    )
    options: list[list[list[int]]] = []
    for item in items:
        encoded = encode_texts(tokenizer, item.options, special_tokens=False)
        for text, option_ids in zip(item.options, encoded, strict=True):
            if not option_ids:
                raise PromptError(
                    f"item {item.id}: option {text!r} has no tokens", "give every option some text"
                )
        options.append(encoded)
    scores = [[0.0] * len(item.options) for item in items]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    done = 0
    for batch in length_batches([len(ids) for ids in contexts], batch_size):
        input_ids, mask = pad_rows([contexts[i] for i in batch], pad_id, left=True)
        input_ids, mask = input_ids.to(model.device), mask.to(model.device)
        positions = padded_positions(mask)
        cache = DynamicCache(config=model.config)
        with torch.inference_mode():
            first = cached_step_logits(model, input_ids, mask, positions, cache)
            first = torch.log_softmax(first.float(), dim=-1)
            # one row per (item, option), on a copy of its question's cache
            rows = [
                (at, item, k) for at, item in enumerate(batch) for k in range(len(options[item]))
            ]
            index = torch.tensor([at for at, _, _ in rows], device=mask.device)
            cache.batch_select_indices(index)
            option_ids, option_mask = pad_rows(
                [options[item][k] for _, item, k in rows], pad_id, left=False
            )
            option_ids, option_mask = option_ids.to(mask.device), option_mask.to(mask.device)
            steps = torch.arange(option_ids.shape[1], device=mask.device)
            logits = model(
                input_ids=option_ids,
                attention_mask=torch.cat([mask[index], option_mask], dim=1),
                position_ids=positions[index, -1:] + 1 + steps,
                cache=cache,
                use_cache=True,
            ).logits
            log_probs = torch.log_softmax(logits.float(), dim=-1)
        for row, (at, item, k) in enumerate(rows):
            ids = options[item][k]
            # the question's last logits predict the first option token, the option's own
            # position j predicts its token j + 1
            later = torch.tensor(ids[1:], device=log_probs.device, dtype=torch.long)
            score = first[at, ids[0]] + log_probs[row, steps[: len(ids) - 1], later].sum()
            scores[item][k] = float(score)
        done += len(batch)
        if on_batch is not None:
            on_batch(done)
    return scores


def choose(scores: Sequence[Sequence[float]]) -> list[int]:
    """Index of the best-scoring option per item (the first one on ties)."""
    return [max(range(len(row)), key=lambda i: (row[i], -i)) for row in scores]


def score_choices(
    model: Any,
    tokenizer: Any,
    items: Sequence[Choice],
    *,
    batch_size: int = 16,
    on_batch: Callable[[int], None] | None = None,
) -> list[bool]:
    """Whether the highest-likelihood option is the right one, per item."""
    scores = option_log_likelihoods(
        model, tokenizer, items, batch_size=batch_size, on_batch=on_batch
    )
    return [chosen == item.answer for chosen, item in zip(choose(scores), items, strict=True)]


# -- over-refusal probes and the sets eval measures on -----------------------------------------


def load_probes(source: str | Path, langs: Sequence[str] | None = None) -> list[Prompt]:
    """Over-refusal probes (benign requests with alarming words): a JSONL/CSV file with id, lang
    and text (or question). They are never used to fit an edit, so every probe is evaluated."""
    path = Path(source)
    probes: list[Prompt] = []
    for where, row in _rows(path):
        lang = check_language(_text(row, ("lang",), where), where, langs or ())
        text = _text(row, ("text", "question"), where)
        if _keep(lang, langs):
            probes.append(Prompt(_text(row, ("id",), where), lang, text, HELDOUT))
    seen: set[tuple[str, str]] = set()
    for probe in probes:
        if (probe.id, probe.lang) in seen:
            raise PromptError(f"{path}: id '{probe.id}' appears twice in '{probe.lang}'", "")
        seen.add((probe.id, probe.lang))
    return probes


def spread_per_language(items: Sequence[Any], limit: int | None) -> list[Any]:
    """At most ``limit`` items of each language, spread evenly over the file order (so a cap
    keeps both arithmetic and entity items), the same positions in every language."""
    if limit is None:
        return list(items)
    grouped: dict[str, list[Any]] = {}
    for item in items:
        grouped.setdefault(item.lang, []).append(item)
    kept = []
    for group in grouped.values():
        if len(group) <= limit:
            kept += group
        else:
            kept += [group[index * len(group) // limit] for index in range(limit)]
    return kept


@dataclass(frozen=True)
class UtilitySets:
    """What ``swe eval`` measures utility on besides the harmless and general prompt sets:
    short answers, multiple choice and over-refusal probes; ``sources`` describes each file
    (path and sha256) for the report's settings."""

    short_answers: tuple[ShortAnswer, ...] = ()
    choices: tuple[Choice, ...] = ()
    probes: tuple[Prompt, ...] = ()
    sources: Mapping[str, Mapping[str, str] | None] = field(default_factory=dict)


def resolve_source(value: str | Path | None, builtin: str) -> Path | None:
    """``builtin`` -> the shipped file, ``none``/None -> None, else the path given."""
    if value is None or str(value) == NONE:
        return None
    return builtin_path(builtin) if str(value) == BUILTIN else Path(value)


def load_utility_sets(
    langs: Sequence[str],
    *,
    short_answers: str | Path | None = BUILTIN,
    choices: str | Path | None = BUILTIN,
    probes: str | Path | None = BUILTIN,
    max_items: int | None = None,
) -> UtilitySets:
    """The three sets for ``langs`` (each: ``builtin``, ``none`` or a file), at most
    ``max_items`` per language each. Languages a file lacks are simply not measured."""
    sources: dict[str, Mapping[str, str] | None] = {}
    loaded: dict[str, list[Any]] = {}
    for name, value, builtin, loader in (
        ("utility", short_answers, UTILITY_FILE, load_short_answers),
        ("multiple_choice", choices, CHOICE_FILE, load_choices),
        ("over_refusal", probes, OVER_REFUSAL_FILE, load_probes),
    ):
        path = resolve_source(value, builtin)
        if path is None:
            sources[name], loaded[name] = None, []
            continue
        loaded[name] = spread_per_language(loader(path, langs), max_items)
        sources[name] = {"source": str(value), "sha256": _sha256(path)}
    return UtilitySets(
        short_answers=tuple(loaded["utility"]),
        choices=tuple(loaded["multiple_choice"]),
        probes=tuple(loaded["over_refusal"]),
        sources=sources,
    )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
