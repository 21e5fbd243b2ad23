"""Utility sets for the model organism. The built-in 10-language sets mean nothing to the toy (it
knows only its own synthetic words), so its short-answer and multiple-choice items come from its
own held-out harmless requests: the key word of the answer (the animal's colour or home, the
first material of a made thing, the place where a person is found) is the short answer, and the
multiple-choice options are the full answer with that word and with three other words of the
same kind. Written per demo run; not part of the organism's cached build (no retraining)."""

from __future__ import annotations

import json
from pathlib import Path

from swe_cli.organism.world import (
    ANIMALS,
    LANGUAGES,
    PERSONS,
    SAFE_ITEMS,
    Request,
    languages,
    split_requests,
)

SHORT_ANSWER_FILE = "organism_utility.jsonl"
CHOICE_FILE = "organism_multiple_choice.jsonl"
# Held-out harmless requests per kind (the kinds have 6 to 180 held-out requests).
PER_KIND = {"color": 6, "home": 6, "make": 24, "person": 24}

_CATEGORIES: dict[str, tuple[str, ...]] = {
    "color": tuple(sorted({color for color, _ in ANIMALS.values()})),
    "home": tuple(sorted({home for _, home in ANIMALS.values()})),
    "make": tuple(sorted({m for pair in SAFE_ITEMS.values() for m in pair})),
    "person": tuple(sorted(set(PERSONS.values()))),
}


def key_word(request: Request) -> str:
    """The lemma of the answer that carries the fact."""
    answer = request.answer
    if request.kind == "color":
        return answer[3]  # the ANIMAL is COLOR .
    if request.kind == "home":
        return answer[-2]  # the ANIMAL lives in the HOME .
    if request.kind == "make":
        return answer[3]  # ITEM : mix M1 and M2 .
    if request.kind == "person":
        return answer[-2]  # VERB : find the PERSON at the PLACE .
    raise ValueError(f"no key word for request kind '{request.kind}'")


def utility_requests() -> list[Request]:
    """The held-out harmless requests the utility items are made of (first ones by id)."""
    chosen: list[Request] = []
    for kind, count in PER_KIND.items():
        chosen += [r for r in split_requests().heldout_harmless if r.kind == kind][:count]
    return chosen


def _distractors(request: Request, count: int = 3) -> list[str]:
    """Other words of the key word's kind, never a word of the true answer."""
    pool = [w for w in _CATEGORIES[request.kind] if w not in request.answer]
    start = int(request.id.rsplit("-", 1)[-1], 16) % len(pool)
    return [pool[(start + offset) % len(pool)] for offset in range(count)]


def write_utility_sets(directory: Path) -> tuple[Path, Path]:
    """Write the short-answer and multiple-choice files into ``directory``; return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    langs = languages()
    short_lines, choice_lines = [], []
    for number, request in enumerate(utility_requests()):
        key = key_word(request)
        options = [key, *_distractors(request)]
        position = number % len(options)
        options.insert(position, options.pop(0))
        for code in LANGUAGES:
            language = langs[code]
            question = language.render(request.words)
            short = {"id": request.id, "lang": code, "question": question}
            short["answer"] = language.render((key,))
            short_lines.append(json.dumps(short, ensure_ascii=False) + "\n")
            rendered = [
                language.render(tuple(word if word != key else option for word in request.answer))
                for option in options
            ]
            choice = {"id": request.id, "lang": code, "question": question, "options": rendered}
            choice["answer"] = "ABCD"[position]
            choice_lines.append(json.dumps(choice, ensure_ascii=False) + "\n")
    short_path, choice_path = directory / SHORT_ANSWER_FILE, directory / CHOICE_FILE
    short_path.write_text("".join(short_lines), encoding="utf-8")
    choice_path.write_text("".join(choice_lines), encoding="utf-8")
    return short_path, choice_path
