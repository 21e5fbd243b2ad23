"""The built-in borderline benign set (swe_cli/data/borderline.jsonl): safe requests that use
alarming words, parallel in the ten MultiJail languages, in each language's own script, with a
short answer each, and apart from the harmless prompts and eval's over-refusal probes (no shared
id, no equal or near-equal English request)."""

from __future__ import annotations

import json
import re
import unicodedata
from collections import defaultdict
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from swe_cli.prompts import FIT, load_prompt_set, split_of
from swe_cli.settings import ProbeSettings, field_default

LANGS = ("en", "zh", "it", "vi", "ar", "ko", "th", "bn", "sw", "jv")
MIN_REQUESTS = 48
MIN_FIT = 40  # requests per language on the fit side of probe's default split

# Code points of each non-Latin script; brand and tool names (Minecraft, Nmap, GitHub) stay in
# Latin letters, so a text passes when most of its letters, not all, are in its script.
SCRIPTS: dict[str, tuple[tuple[int, int], ...]] = {
    "zh": ((0x4E00, 0x9FFF), (0x3400, 0x4DBF)),
    "ar": ((0x0600, 0x06FF), (0x0750, 0x077F)),
    "ko": ((0xAC00, 0xD7A3), (0x1100, 0x11FF), (0x3130, 0x318F)),
    "th": ((0x0E00, 0x0E7F),),
    "bn": ((0x0980, 0x09FF),),
}
# Vietnamese letters outside ASCII: every Vietnamese sentence has some.
VIETNAMESE = set("ăâđêôơưĂÂĐÊÔƠƯ") | {chr(code) for code in range(0x1EA0, 0x1EFA)}
STOPWORDS = set(
    "a an the i my me to of in on for and or is it how do can what why should with at from that"
    " this by be so are was did does when where who your you their they".split()
)


def _data(name: str) -> Path:
    return Path(str(resources.files("swe_cli") / "data" / name))


def _rows(name: str) -> list[dict[str, Any]]:
    lines = _data(name).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


@pytest.fixture(scope="module")
def rows() -> list[dict[str, Any]]:
    return _rows("borderline.jsonl")


def _in_script(char: str, lang: str) -> bool:
    if lang in SCRIPTS:
        return any(low <= ord(char) <= high for low, high in SCRIPTS[lang])
    return unicodedata.name(char, "").startswith("LATIN")


def _script_share(text: str, lang: str) -> float:
    letters = [char for char in text if char.isalpha()]
    return sum(_in_script(char, lang) for char in letters) / len(letters)


def _content_words(text: str) -> set[str]:
    return {word for word in re.findall(r"[a-z']+", text.lower()) if word not in STOPWORDS}


def test_every_request_is_in_exactly_the_ten_languages_once(rows: list[dict[str, Any]]) -> None:
    assert all(set(row) == {"id", "lang", "text", "answer"} for row in rows)
    langs_by_id: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        langs_by_id[row["id"]].append(row["lang"])
    assert len(langs_by_id) >= MIN_REQUESTS
    assert all(sorted(langs) == sorted(LANGS) for langs in langs_by_id.values()), langs_by_id
    assert all(re.fullmatch(r"b\d{2,}", prompt_id) for prompt_id in langs_by_id)
    # the loader the pipeline uses reads it as a parallel set with an answer for every prompt
    prompts = load_prompt_set(_data("borderline.jsonl"), "borderline", list(LANGS)).prompts
    assert len(prompts) == len(rows) and all(prompt.answer for prompt in prompts)


def test_the_fit_split_holds_at_least_forty_requests_per_language(
    rows: list[dict[str, Any]],
) -> None:
    # probe splits ids by hash at its default held-out fraction; what falls on the fit side is
    # what `--borderline builtin` preserves and select validates on
    fraction = field_default(ProbeSettings, "heldout_fraction")
    for lang in LANGS:
        ids = {row["id"] for row in rows if row["lang"] == lang}
        fit = {prompt_id for prompt_id in ids if split_of(prompt_id, fraction) == FIT}
        assert len(fit) >= MIN_FIT, (lang, len(fit))
        assert len(ids) - len(fit) >= 20, (lang, len(ids) - len(fit))  # a held-out side remains


def test_texts_and_answers_are_non_empty_and_distinct(rows: list[dict[str, Any]]) -> None:
    for field in ("text", "answer"):
        values = [row[field] for row in rows]
        assert all(isinstance(value, str) and value.strip() == value and value for value in values)
        assert len(set(values)) == len(values), field
    english = {row["id"]: row["text"] for row in rows if row["lang"] == "en"}
    assert all(row["text"] != english[row["id"]] for row in rows if row["lang"] != "en")


@pytest.mark.parametrize("lang", LANGS)
def test_each_language_is_written_in_its_own_script(rows: list[dict[str, Any]], lang: str) -> None:
    for row in (row for row in rows if row["lang"] == lang):
        for field in ("text", "answer"):
            value = row[field]
            if lang in SCRIPTS:
                assert _script_share(value, lang) > 0.5, (row["id"], field, value)
            else:  # Latin-script languages hold no letter of another script
                foreign = [char for char in value if char.isalpha() and not _in_script(char, lang)]
                assert not foreign, (row["id"], field, value)
        if lang == "vi":
            assert VIETNAMESE & set(row["text"]), (row["id"], row["text"])


@pytest.mark.parametrize("other", ["harmless.jsonl", "over_refusal.jsonl"])
def test_apart_from_the_harmless_prompts_and_the_over_refusal_probes(
    rows: list[dict[str, Any]], other: str
) -> None:
    theirs = _rows(other)
    assert not {row["id"] for row in rows} & {row["id"] for row in theirs}
    assert not {row["text"] for row in rows} & {row["text"] for row in theirs}
    ours_en = [row["text"] for row in rows if row["lang"] == "en"]
    theirs_en = [row["text"] for row in theirs if row["lang"] == "en"]
    assert not {text.casefold() for text in ours_en} & {text.casefold() for text in theirs_en}
    # no near-paraphrase: a request shares at most half of its content words with any of theirs
    # ("kill time at the airport during a layover" would share 5 of 6 with over_refusal's x01)
    for ours in ours_en:
        for their in theirs_en:
            mine, other_words = _content_words(ours), _content_words(their)
            overlap = len(mine & other_words) / len(mine | other_words)
            assert overlap < 0.5, (ours, their, overlap)
