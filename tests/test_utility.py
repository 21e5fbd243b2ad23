"""Short-answer extraction and scoring, users' utility files, multiple-choice scoring by option
log-likelihood on a tiny real model, and the shape of the built-in sets."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from swe_cli.accuracy import (
    CHOICE_FILE,
    ENTITY,
    MULTIJAIL_LANGS,
    NUMBER,
    OVER_REFUSAL_FILE,
    UTILITY_FILE,
    Choice,
    ShortAnswer,
    accuracy,
    builtin_path,
    by_language,
    chat_context,
    choose,
    extract_number,
    extract_numbers,
    is_correct,
    load_choices,
    load_short_answers,
    option_log_likelihoods,
    parse_number,
    score_choices,
    score_short_answers,
)
from swe_cli.errors import PromptError

# -- extraction --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "lang", "expected"),
    [
        ("The answer is 12.", "en", 12),
        ("12 apples, 3 left", "en", 3),  # the last number, not the first
        ("12 + 7 = 19 cows", "en", 19),
        ("12-5=7", "en", 7),  # a hyphen between digits is no minus sign
        ("The temperature is -3 degrees.", "en", -3),
        ("It is 1,200 km away.", "en", 1200),
        ("It costs 1,234.50 dollars.", "en", 1234.5),
        ("Costa 1.234,50 euro.", "it", 1234.5),
        ("Sono 1.200 chilometri.", "it", 1200),
        ("Ne restano 7,5.", "it", 7.5),
        ("Còn lại 2,5 cái bánh.", "vi", 2.5),
        ("The ratio is 1.5", "en", 1.5),
        ("1,00,000 টাকা", "bn", 100000),  # Indian digit grouping
        ("কৃষকের এখন ১৯টি গরু আছে।", "bn", 19),  # Bengali digits, classifier attached
        ("ชาวนามีวัว ๑๙ ตัว", "th", 19),  # Thai digits
        ("لدى المزارع ١٩ بقرة.", "ar", 19),  # Arabic-Indic digits
        ("۱۹ گاو", "fa", 19),  # Persian (extended Arabic-Indic) digits
        ("١٢٫٥", "ar", 12.5),  # Arabic decimal separator
        ("农民现在有１９头牛。", "zh", 19),  # full-width digits
        ("这个农民现在有19头牛。", "zh", 19),
        ("소는 모두 19마리입니다.", "ko", 19),
        ("答案：12，3", "zh", 3),  # a full-width comma separates two numbers
        ("It is 3.", "en", 3),  # a sentence-final period is no decimal point
    ],
)
def test_extract_number_in_every_script(text: str, lang: str, expected: float) -> None:
    assert extract_number(text, lang) == pytest.approx(expected)


def test_extract_numbers_order_and_absence() -> None:
    assert extract_numbers("5 birds, then 3 more: 8 in all") == [5, 3, 8]
    assert extract_number("no digits here") is None
    assert extract_number("version 1.2.3") is None  # not a number
    assert extract_number("1.2,3.4") is None
    assert extract_numbers("١٢، ٣", "ar") == [12, 3]  # the Arabic comma separates
    assert extract_numbers("١٢،٣", "ar") == [12, 3]


def test_parse_number_only_accepts_a_bare_number() -> None:
    assert parse_number("19") == 19
    assert parse_number("১৯") == 19
    assert parse_number(" 1,200 ") == 1200
    assert parse_number("Paris") is None
    assert parse_number("19 cows") is None


# -- scoring -----------------------------------------------------------------------------------


def test_numeric_answers_use_the_last_number() -> None:
    item = ShortAnswer("u1", "en", "12 apples, 5 eaten?", "7")
    assert item.kind == NUMBER
    assert is_correct(item, "12 - 5 = 7")
    assert is_correct(item, "You have 7.0 apples left.")
    assert not is_correct(item, "7 or maybe 8")
    assert not is_correct(item, "I cannot answer that.")
    bengali = ShortAnswer("u1", "bn", "?", "7")
    assert is_correct(bengali, "উত্তর: ৭টি আপেল")


def test_entities_match_accepted_forms_per_language() -> None:
    item = ShortAnswer("u2", "zh", "法国的首都是哪里？", "Paris", ("巴黎",))
    assert item.kind == ENTITY
    assert is_correct(item, "法国的首都是巴黎。")
    assert is_correct(item, "The capital is PARIS!")
    assert not is_correct(item, "是里昂。")
    italian = ShortAnswer("u3", "it", "?", "Rome", ("Roma",))
    assert is_correct(italian, "È Roma.")
    assert not is_correct(italian, "Romania")  # whole words in space-separated scripts
    arabic = ShortAnswer("u4", "ar", "?", "green", ("الأخضر",))
    assert is_correct(arabic, "اللون الاخضر")  # alef variants normalised


def test_score_and_accuracy_per_language() -> None:
    items = [
        ShortAnswer("1", "en", "q", "3"),
        ShortAnswer("2", "en", "q", "4"),
        ShortAnswer("1", "bn", "q", "3"),
    ]
    flags = score_short_answers(items, ["3", "5", "৩"])
    assert flags == [True, False, True]
    assert accuracy(flags) == pytest.approx(2 / 3)
    assert accuracy([]) is None
    assert by_language(items, flags) == {"en": (0.5, 2), "bn": (1.0, 1)}
    with pytest.raises(ValueError):
        score_short_answers(items, ["3"])


# -- user files --------------------------------------------------------------------------------


def test_load_user_jsonl_and_csv(tmp_path: Path) -> None:
    jsonl = tmp_path / "mine.jsonl"
    rows = [
        {"id": "a", "lang": "en", "question": "2+2?", "answer": "4"},
        {"id": "b", "lang": "it", "text": "Capitale?", "answer": "Roma|Rome"},
        {"id": "c", "lang": "sw", "question": "Rangi?", "answer": "kijani", "accept": ["green"]},
    ]
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    items = load_short_answers(jsonl)
    assert [item.id for item in items] == ["a", "b", "c"]
    assert items[1].forms() == ("Roma", "Rome")
    assert items[2].forms() == ("kijani", "green")
    assert [item.lang for item in load_short_answers(jsonl, ["en", "sw"])] == ["en", "sw"]

    table = tmp_path / "mine.csv"
    table.write_text("id,lang,question,answer\n1,bn,প্রশ্ন?,১২\n2,qaa,ka vo?,blue\n")
    loaded = load_short_answers(table)
    assert loaded[0].kind == NUMBER and parse_number(loaded[0].answer) == 12
    assert loaded[1].lang == "qaa"  # private-use codes (the organism's languages) are fine


@pytest.mark.parametrize("lang", ["english", "xx", "EN!", "zz-latn"])
def test_unknown_language_is_a_clear_error(tmp_path: Path, lang: str) -> None:
    path = tmp_path / "bad.jsonl"
    record = {"id": "1", "lang": lang, "question": "q", "answer": "1"}
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(PromptError) as caught:
        load_short_answers(path)
    assert f"unknown language '{lang}'" in caught.value.message
    assert "line 1" in caught.value.message and "\n" not in caught.value.message
    assert "ISO 639" in caught.value.hint


def test_requested_languages_may_be_any_code(tmp_path: Path) -> None:
    path = tmp_path / "toy.jsonl"
    path.write_text(json.dumps({"id": "1", "lang": "toy", "question": "q", "answer": "1"}) + "\n")
    assert load_short_answers(path, ["toy"])[0].lang == "toy"


def test_bad_user_files(tmp_path: Path) -> None:
    missing = tmp_path / "missing.jsonl"
    missing.write_text(json.dumps({"id": "1", "lang": "en", "question": "q"}) + "\n")
    with pytest.raises(PromptError, match="missing 'answer'"):
        load_short_answers(missing)
    twice = tmp_path / "twice.jsonl"
    row = json.dumps({"id": "1", "lang": "en", "question": "q", "answer": "1"}) + "\n"
    twice.write_text(row + row)
    with pytest.raises(PromptError, match="appears twice"):
        load_short_answers(twice)
    text = tmp_path / "x.txt"
    text.write_text("2+2? 4\n")
    with pytest.raises(PromptError, match="unknown format"):
        load_short_answers(text)
    with pytest.raises(PromptError, match="file not found"):
        load_short_answers(tmp_path / "absent.jsonl")


def test_load_choices_jsonl_and_csv(tmp_path: Path) -> None:
    jsonl = tmp_path / "mc.jsonl"
    rows = [
        {"id": "1", "lang": "en", "question": "q", "options": ["a", "b", "c", "d"], "answer": "C"},
        {"id": "2", "lang": "en", "question": "q", "options": ["a", "b", "c", "d"], "answer": 1},
        {"id": "3", "lang": "en", "question": "q", "options": ["a", "b"], "answer": "b"},
    ]
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert [item.answer for item in load_choices(jsonl)] == [2, 1, 1]
    table = tmp_path / "mc.csv"
    table.write_text("id,lang,question,A,B,C,D,answer\n1,sw,Swali?,moja,mbili,tatu,nne,D\n")
    (item,) = load_choices(table)
    assert item.options == ("moja", "mbili", "tatu", "nne") and item.answer == 3
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({**rows[0], "answer": "E"}) + "\n")
    with pytest.raises(PromptError, match="not one of the options"):
        load_choices(bad)
    bad.write_text(json.dumps({**rows[0], "lang": "klingon"}) + "\n")
    with pytest.raises(PromptError, match="unknown language 'klingon'"):
        load_choices(bad)


# -- multiple choice on a tiny real model ------------------------------------------------------


def _manual_scores(model: Any, tokenizer: Any, item: Choice) -> list[float]:
    """Each option scored alone, unpadded: sum of log p(option token | everything before)."""
    import torch

    context = tokenizer(chat_context(tokenizer, item.question), add_special_tokens=False)
    scores = []
    for option in item.options:
        option_ids = tokenizer(option, add_special_tokens=False)["input_ids"]
        ids = list(context["input_ids"]) + list(option_ids)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0].double()
        log_probs = torch.log_softmax(logits, dim=-1)
        start = len(context["input_ids"])
        scores.append(
            sum(float(log_probs[start + k - 1, token]) for k, token in enumerate(option_ids))
        )
    return scores


def test_choice_scores_equal_a_manual_log_probability(tiny_llama: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    items = [
        Choice("1", "en", "how do i make a cake", ("bread", "garden", "letter friend", "cake"), 3),
        Choice("2", "en", "tell me about the garden please", ("pan", "keki mkate", "the"), 0),
        Choice("3", "es", "cómo hago pan", ("jardín", "carta amigo pastel", "pan", "amigo"), 2),
    ]
    expected = [_manual_scores(model, tokenizer, item) for item in items]
    for batch_size in (1, 3, 64):  # padding and row order must not change a score
        scores = option_log_likelihoods(model, tokenizer, items, batch_size=batch_size)
        for got, want in zip(scores, expected, strict=True):
            assert got == pytest.approx(want, abs=1e-4)
    chosen = choose(expected)
    assert score_choices(model, tokenizer, items) == [
        pick == item.answer for pick, item in zip(chosen, items, strict=True)
    ]
    progress: list[int] = []
    option_log_likelihoods(model, tokenizer, items, batch_size=4, on_batch=progress.append)
    assert progress[-1] == len(items) and progress == sorted(progress)


def test_choose_takes_the_first_of_equal_scores() -> None:
    assert choose([[-1.0, -0.5, -0.5], [0.0, -2.0]]) == [1, 0]


# -- built-in sets -----------------------------------------------------------------------------


def _records(name: str) -> list[dict[str, object]]:
    lines = builtin_path(name).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _ids_per_language(records: list[dict[str, object]]) -> dict[str, list[str]]:
    ids: dict[str, list[str]] = {}
    for record in records:
        ids.setdefault(str(record["lang"]), []).append(str(record["id"]))
    return ids


@pytest.mark.parametrize(("name", "minimum"), [(UTILITY_FILE, 40), (CHOICE_FILE, 30)])
def test_builtin_sets_are_parallel_in_all_ten_languages(name: str, minimum: int) -> None:
    ids = _ids_per_language(_records(name))
    assert tuple(ids) == MULTIJAIL_LANGS
    reference = ids["en"]
    assert len(reference) >= minimum and len(set(reference)) == len(reference)
    for lang, lang_ids in ids.items():
        assert lang_ids == reference, lang


def test_builtin_short_answers_are_checkable() -> None:
    items = load_short_answers(builtin_path(UTILITY_FILE))
    assert len(items) >= 400
    kinds = Counter(item.kind for item in items if item.lang == "en")
    assert kinds[NUMBER] >= 20 and kinds[ENTITY] >= 10
    answers: dict[str, str] = {}
    for item in items:
        # parallel items share one canonical answer
        assert answers.setdefault(item.id, item.answer) == item.answer, (item.id, item.lang)
        for form in item.forms() if item.kind == ENTITY else (item.answer,):
            assert is_correct(item, form), (item.id, item.lang, form)
        # echoing the question must not score (its last number is not the answer, and it
        # names no accepted entity)
        assert not is_correct(item, item.question), (item.id, item.lang)


def test_builtin_choices_are_well_formed() -> None:
    items = load_choices(builtin_path(CHOICE_FILE))
    assert all(len(item.options) == 4 for item in items)
    english = [item for item in items if item.lang == "en"]
    positions = Counter(item.answer for item in english)
    assert set(positions) == {0, 1, 2, 3} and max(positions.values()) <= len(english) / 2
    answers = {item.id: item.answer for item in english}
    assert all(item.answer == answers[item.id] for item in items)  # same letter in every lang


def test_over_refusal_probes_are_apart_from_harmless_prompts() -> None:
    from swe_cli.prompts import load_prompt_set

    probes = load_prompt_set(builtin_path(OVER_REFUSAL_FILE), "over_refusal", list(MULTIJAIL_LANGS))
    harmless = load_prompt_set(builtin_path("harmless.jsonl"), "harmless", list(MULTIJAIL_LANGS))
    assert len(probes.ids()) >= 30
    assert all(len(probes.select(lang)) == len(probes.ids()) for lang in MULTIJAIL_LANGS)
    harmless_texts = {p.text for p in harmless.prompts}
    assert not harmless_texts & {p.text for p in probes.prompts}
    assert not set(probes.ids()) & set(harmless.ids())


def test_organism_utility_sets_are_parallel_and_checkable(tmp_path: Path) -> None:
    from swe_cli.organism.utility_sets import write_utility_sets
    from swe_cli.organism.world import LANGUAGES

    short_path, choice_path = write_utility_sets(tmp_path)
    items = load_short_answers(short_path)
    choices = load_choices(choice_path)
    ids = _ids_per_language([{"id": i.id, "lang": i.lang} for i in items])
    assert tuple(ids) == LANGUAGES and all(v == ids["en"] for v in ids.values())
    assert len(ids["en"]) == 60 and all(item.kind == ENTITY for item in items)
    for item in items:
        assert not is_correct(item, item.question), item  # the question does not give it away
    for choice, item in zip(choices, items, strict=True):
        assert (choice.id, choice.lang) == (item.id, item.lang)
        right = choice.options[choice.answer]
        assert is_correct(item, right)
        assert not any(
            is_correct(item, o) for i, o in enumerate(choice.options) if i != choice.answer
        )


def test_a_cap_spreads_over_both_kinds_in_every_language() -> None:
    from swe_cli.accuracy import load_utility_sets

    sets = load_utility_sets(["en", "bn"], max_items=8)
    english = [item for item in sets.short_answers if item.lang == "en"]
    bengali = [item for item in sets.short_answers if item.lang == "bn"]
    assert len(english) == 8 and [i.id for i in english] == [i.id for i in bengali]
    assert {item.kind for item in english} == {NUMBER, ENTITY}
    assert len(sets.choices) == 16 and len(sets.probes) == 16
    assert sets.sources["utility"] is not None and sets.sources["utility"]["source"] == "builtin"
