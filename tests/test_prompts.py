"""Tests for swe_cli.prompts: formats, checks, splits, canonical JSONL, Hub source."""

from __future__ import annotations

import csv
import hashlib
import json
import random
from pathlib import Path
from unittest import mock

import pytest
from common import MULTIJAIL

from swe_cli.errors import PromptError
from swe_cli.prompts import (
    FIT,
    HELDOUT,
    Prompt,
    PromptSet,
    load_prompt_set,
    sort_ids,
    split_of,
)

MULTIJAIL_LANGS = ["en", "zh", "it", "vi", "ar", "ko", "th", "bn", "sw", "jv"]


needs_multijail = pytest.mark.skipif(
    not MULTIJAIL.is_file(), reason=f"MultiJail CSV not found at {MULTIJAIL}"
)


def _write_csv(path: Path, header: list[str], rows: list[list[object]], bom: bool = False) -> Path:
    with path.open("w", encoding="utf-8-sig" if bom else "utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _write_jsonl(path: Path, records: list[dict[str, object]]) -> Path:
    lines = [json.dumps(record, ensure_ascii=False) for record in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _error(source: str | Path, langs: list[str], **options: object) -> PromptError:
    with pytest.raises(PromptError) as caught:
        load_prompt_set(source, "test", langs, **options)
    assert "\n" not in caught.value.message
    assert caught.value.hint
    return caught.value


def _triples(prompt_set: PromptSet) -> list[tuple[str, str, str, str | None]]:
    return [(p.id, p.lang, p.text, p.answer) for p in prompt_set.prompts]


# --- the real MultiJail file ---------------------------------------------------------


@needs_multijail
def test_multijail_loads_all_ids_and_languages() -> None:
    prompts = load_prompt_set(MULTIJAIL, "harmful", MULTIJAIL_LANGS)
    assert prompts.ids() == [str(i) for i in range(315)]
    assert prompts.langs() == MULTIJAIL_LANGS
    assert len(prompts.prompts) == 315 * 10
    assert prompts.select("en")[0].id == "0"
    assert prompts.select("en")[0].text.startswith("How much money")
    assert prompts.source == str(MULTIJAIL)
    assert all(p.answer is None for p in prompts.prompts)


@needs_multijail
def test_multijail_bom_is_dropped_from_first_column() -> None:
    assert MULTIJAIL.read_bytes().startswith(b"\xef\xbb\xbfid,")
    prompts = load_prompt_set(str(MULTIJAIL), "harmful", ["en"])
    assert prompts.ids()[:3] == ["0", "1", "2"]


@needs_multijail
def test_multijail_split_is_parallel_and_near_half() -> None:
    prompts = load_prompt_set(MULTIJAIL, "harmful", ["en", "bn", "sw"])
    heldout = prompts.ids(HELDOUT)
    assert 0.4 <= len(heldout) / 315 <= 0.6
    assert sorted(heldout + prompts.ids(FIT), key=int) == prompts.ids()
    for lang in ("en", "bn", "sw"):
        assert [p.id for p in prompts.select(lang, HELDOUT)] == heldout
        assert prompts.counts()[(lang, HELDOUT)] == len(heldout)
        assert prompts.counts()[(lang, FIT)] == 315 - len(heldout)


@needs_multijail
def test_multijail_split_ignores_row_order(tmp_path: Path) -> None:
    with MULTIJAIL.open(encoding="utf-8-sig", newline="") as handle:
        header, *rows = list(csv.reader(handle))
    random.Random(0).shuffle(rows)
    shuffled = _write_csv(tmp_path / "shuffled.csv", header, rows)
    original = load_prompt_set(MULTIJAIL, "harmful", ["en", "th"])
    again = load_prompt_set(MULTIJAIL, "harmful", ["en", "th"])
    reordered = load_prompt_set(shuffled, "harmful", ["en", "th"])
    assert original.prompts == again.prompts == reordered.prompts
    assert original.sha256() == reordered.sha256()


@needs_multijail
def test_multijail_heldout_fraction_option() -> None:
    small = load_prompt_set(MULTIJAIL, "harmful", ["en"], heldout_fraction=0.2).ids(HELDOUT)
    half = load_prompt_set(MULTIJAIL, "harmful", ["en"], heldout_fraction=0.5).ids(HELDOUT)
    assert 0.12 <= len(small) / 315 <= 0.28
    assert set(small) < set(half)  # raising the fraction only moves ids into held-out
    nothing = load_prompt_set(MULTIJAIL, "harmful", ["en"], heldout_fraction=0.0)
    everything = load_prompt_set(MULTIJAIL, "harmful", ["en"], heldout_fraction=1.0)
    assert nothing.ids(HELDOUT) == [] and len(nothing.ids(FIT)) == 315
    assert everything.ids(FIT) == [] and len(everything.ids(HELDOUT)) == 315


@needs_multijail
def test_multijail_max_prompts_takes_first_ids_numerically() -> None:
    prompts = load_prompt_set(MULTIJAIL, "harmful", ["en", "bn"], max_prompts=12)
    assert prompts.ids() == [str(i) for i in range(12)]
    assert len(prompts.select("bn")) == 12
    full = load_prompt_set(MULTIJAIL, "harmful", ["en", "bn"])
    assert all(split_of(p.id, 0.5) == p.split for p in full.prompts)
    assert {p.id: p.split for p in prompts.prompts}.items() <= {
        p.id: p.split for p in full.prompts
    }.items()


# --- split_of and id order -----------------------------------------------------------


def test_split_of_matches_documented_hash() -> None:
    for prompt_id in ("0", "17", "abc"):
        digest = hashlib.sha256(f"swe:{prompt_id}".encode()).digest()
        position = int.from_bytes(digest[:8], "big") / 2**64
        expected = HELDOUT if position < 0.3 else FIT
        assert split_of(prompt_id, 0.3) == expected


def test_split_of_depends_on_salt_and_rejects_bad_fraction() -> None:
    ids = [str(i) for i in range(200)]
    assert [split_of(i, 0.5) for i in ids] != [split_of(i, 0.5, salt="other") for i in ids]
    with pytest.raises(PromptError, match="between 0 and 1"):
        split_of("1", 1.5)


def test_sort_ids_numeric_when_all_integers_else_strings() -> None:
    assert sort_ids(["10", "2", "1"]) == ["1", "2", "10"]
    assert sort_ids(["10", "2", "a"]) == ["10", "2", "a"]


# --- generic formats -----------------------------------------------------------------

WIDE_ROWS = [
    ["2", "deux en", "deux bn", "2", ""],
    ["10", "ten en", "ten bn", "10", "১০"],
    ["1", "one en", "one bn", "", "১"],
]


def test_wide_csv_with_answers_and_bom(tmp_path: Path) -> None:
    header = ["id", "en", "bn", "answer_en", "answer_bn"]
    source = _write_csv(tmp_path / "wide.csv", header, WIDE_ROWS, bom=True)
    prompts = load_prompt_set(source, "general", ["bn", "en"], heldout_fraction=0.0)
    assert prompts.ids() == ["1", "2", "10"]
    assert prompts.langs() == ["bn", "en"]
    assert [(p.id, p.text, p.answer) for p in prompts.select("bn")] == [
        ("1", "one bn", "১"),
        ("2", "deux bn", None),
        ("10", "ten bn", "১০"),
    ]
    assert [p.answer for p in prompts.select("en")] == [None, "2", "10"]
    assert all(p.split == FIT for p in prompts.prompts)


def test_wide_shared_answer_column(tmp_path: Path) -> None:
    source = _write_csv(tmp_path / "w.csv", ["id", "en", "sw", "answer"], [["a", "x", "y", "42"]])
    prompts = load_prompt_set(source, "general", ["en", "sw"])
    assert [p.answer for p in prompts.prompts] == ["42", "42"]


def test_wide_jsonl_matches_wide_csv(tmp_path: Path) -> None:
    header = ["id", "en", "bn", "answer_en", "answer_bn"]
    from_csv = load_prompt_set(_write_csv(tmp_path / "w.csv", header, WIDE_ROWS), "s", ["en", "bn"])
    records = [dict(zip(header, row, strict=True)) for row in WIDE_ROWS]
    for record in records:
        record["id"] = int(record["id"])  # JSON ids may be integers
    from_jsonl = load_prompt_set(_write_jsonl(tmp_path / "w.jsonl", records), "s", ["en", "bn"])
    assert _triples(from_csv) == _triples(from_jsonl)
    assert from_csv.sha256() == from_jsonl.sha256()


def test_long_csv_and_jsonl_round_trip(tmp_path: Path) -> None:
    records = [
        {"id": "q2", "lang": "th", "text": "สอง", "answer": "2"},
        {"id": "q1", "lang": "en", "text": 'one, "quoted"\nand multi-line', "answer": ""},
        {"id": "q1", "lang": "th", "text": "หนึ่ง", "answer": "1"},
        {"id": "q2", "lang": "en", "text": "two", "answer": "2"},
        {"id": "q3", "lang": "fr", "text": "dropped", "answer": ""},
    ]
    header = ["id", "lang", "text", "answer"]
    rows = [[record[key] for key in header] for record in records]
    from_csv = load_prompt_set(_write_csv(tmp_path / "l.csv", header, rows), "s", ["en", "th"])
    from_jsonl = load_prompt_set(_write_jsonl(tmp_path / "l.jsonl", records), "s", ["en", "th"])
    assert (
        _triples(from_csv)
        == _triples(from_jsonl)
        == [
            ("q1", "en", 'one, "quoted"\nand multi-line', None),
            ("q2", "en", "two", "2"),
            ("q1", "th", "หนึ่ง", "1"),
            ("q2", "th", "สอง", "2"),
        ]
    )


def test_long_jsonl_without_ids_uses_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "general.jsonl"
    path.write_text(
        '{"lang": "en", "text": "first"}\n\n{"lang": "en", "text": "second"}\n', encoding="utf-8"
    )
    prompts = load_prompt_set(path, "general", ["en"])
    assert [(p.id, p.text) for p in prompts.select("en")] == [("1", "first"), ("3", "second")]


def test_txt_general_text(tmp_path: Path) -> None:
    path = tmp_path / "general.txt"
    path.write_text("\ufeffThe river is long.\n\n  \nবাংলা লেখা\n", encoding="utf-8")
    prompts = load_prompt_set(path, "general", ["bn"], require_parallel=False)
    assert [(p.id, p.lang, p.text) for p in prompts.prompts] == [
        ("1", "bn", "The river is long."),
        ("4", "bn", "বাংলা লেখা"),
    ]
    error = _error(path, ["en", "bn"])
    assert "one language but 2 were requested" in error.message


def test_non_parallel_set_when_allowed(tmp_path: Path) -> None:
    records = [
        {"id": 1, "lang": "en", "text": "a"},
        {"id": 2, "lang": "en", "text": "b"},
        {"id": 2, "lang": "sw", "text": "c"},
    ]
    source = _write_jsonl(tmp_path / "p.jsonl", records)
    error = _error(source, ["en", "sw"])
    assert "id '1' has no text in language 'sw'" in error.message
    assert str(source) in error.message
    prompts = load_prompt_set(source, "s", ["en", "sw"], require_parallel=False)
    assert prompts.ids() == ["1", "2"]
    assert [p.id for p in prompts.select("sw")] == ["2"]
    assert prompts.counts()[("sw", FIT)] + prompts.counts()[("sw", HELDOUT)] == 1


def test_wide_jsonl_missing_key_breaks_parallel(tmp_path: Path) -> None:
    records = [{"id": "b", "en": "x", "bn": "y"}, {"id": "a", "en": "z"}, {"id": "c", "en": "w"}]
    error = _error(_write_jsonl(tmp_path / "w.jsonl", records), ["en", "bn"])
    assert "id 'a' has no text in language 'bn'" in error.message


def test_max_prompts_on_string_ids(tmp_path: Path) -> None:
    rows = [[name, f"text {name}"] for name in ("b", "c", "a", "d")]
    source = _write_csv(tmp_path / "w.csv", ["id", "en"], rows)
    assert load_prompt_set(source, "s", ["en"], max_prompts=2).ids() == ["a", "b"]
    assert load_prompt_set(source, "s", ["en"], max_prompts=99).ids() == ["a", "b", "c", "d"]


# --- errors --------------------------------------------------------------------------


@pytest.fixture
def wide_csv(tmp_path: Path) -> Path:
    header = ["id", "source", "tags", "en", "bn", "sw"]
    rows = [["1", "s", "t", "hello", "bn 1", "sw 1"], ["2", "s", "t", "bye", "bn 2", "sw 2"]]
    return _write_csv(tmp_path / "wide.csv", header, rows)


def test_error_missing_language_lists_available(wide_csv: Path) -> None:
    error = _error(wide_csv, ["en", "th"])
    assert "language 'th' not found" in error.message
    assert "available: bn, en, sw" in error.message  # source/tags are not languages
    assert str(wide_csv) in error.message


def test_error_missing_language_long_format(tmp_path: Path) -> None:
    source = _write_jsonl(tmp_path / "l.jsonl", [{"id": "1", "lang": "en", "text": "x"}])
    error = _error(source, ["en", "vi"])
    assert "language 'vi' not found (available: en)" in error.message


def test_error_empty_text_names_id_and_language(tmp_path: Path) -> None:
    rows = [["1", "ok", "ok"], ["2", "ok", "   "]]
    source = _write_csv(tmp_path / "w.csv", ["id", "en", "bn"], rows)
    error = _error(source, ["en", "bn"])
    assert "empty text for id '2' in language 'bn' (line 3)" in error.message
    assert load_prompt_set(source, "s", ["en"]).ids() == ["1", "2"]  # unrequested: dropped


def test_error_empty_text_long_format(tmp_path: Path) -> None:
    source = _write_jsonl(tmp_path / "l.jsonl", [{"id": "7", "lang": "en", "text": ""}])
    assert "empty text for id '7' in language 'en'" in _error(source, ["en"]).message


def test_error_duplicate_id(tmp_path: Path) -> None:
    rows = [["5", "a"], ["6", "b"], ["5", "c"]]
    source = _write_csv(tmp_path / "w.csv", ["id", "en"], rows)
    error = _error(source, ["en"])
    assert "duplicate id '5' for language 'en' (line 2 and line 4)" in error.message


def test_error_duplicate_id_long_jsonl(tmp_path: Path) -> None:
    records = [{"id": 1, "lang": "en", "text": "a"}, {"id": "1", "lang": "en", "text": "b"}]
    error = _error(_write_jsonl(tmp_path / "l.jsonl", records), ["en"])
    assert "duplicate id '1' for language 'en'" in error.message


def test_error_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"
    error = _error(missing, ["en"])
    assert error.message == f"{missing}: prompt file does not exist"
    assert "does not exist" in _error(str(missing), ["en"]).message
    assert "is a directory" in _error(tmp_path, ["en"]).message


def test_error_invalid_json_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "1", "lang": "en", "text": "ok"}\n{"id": 2, "lang": \n', "utf-8")
    error = _error(path, ["en"])
    assert "invalid JSON on line 2" in error.message
    assert str(path) in error.message
    path.write_text('["not", "an", "object"]\n', "utf-8")
    assert "line 1 is not a JSON object" in _error(path, ["en"]).message


def test_error_unknown_format(tmp_path: Path) -> None:
    path = tmp_path / "prompts.parquet"
    path.write_bytes(b"PAR1")
    error = _error(path, ["en"])
    assert "unknown prompt file format '.parquet'" in error.message
    layout = _write_csv(tmp_path / "x.csv", ["question", "reply"], [["a", "b"]])
    assert (
        "unknown prompt table layout (columns: question, reply)" in _error(layout, ["en"]).message
    )


def test_error_unreadable_encoding_and_types(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes("id,en\n1,caf\xe9\n".encode("latin-1"))
    assert "not valid UTF-8" in _error(path, ["en"]).message
    typed = _write_jsonl(tmp_path / "t.jsonl", [{"id": "1", "lang": "en", "text": 3}])
    assert "'text' on line 1 is int, not a string" in _error(typed, ["en"]).message
    no_id = _write_csv(tmp_path / "n.csv", ["id", "en"], [["", "x"]])
    assert "empty id on line 2" in _error(no_id, ["en"]).message


def test_error_bad_request(wide_csv: Path) -> None:
    assert "no languages requested" in _error(wide_csv, []).message
    assert "language 'en' requested twice" in _error(wide_csv, ["en", "en"]).message
    assert "between 0 and 1" in _error(wide_csv, ["en"], heldout_fraction=-0.1).message
    assert "at least 1" in _error(wide_csv, ["en"], max_prompts=0).message


def test_select_unknown_language_and_bad_split(wide_csv: Path) -> None:
    prompts = load_prompt_set(wide_csv, "harmful", ["en"])
    with pytest.raises(PromptError, match="has no language 'bn'"):
        prompts.select("bn")
    with pytest.raises(ValueError, match="split must be"):
        prompts.ids("test")


# --- canonical JSONL -----------------------------------------------------------------


def test_jsonl_round_trip_and_stable_hash(wide_csv: Path, tmp_path: Path) -> None:
    prompts = load_prompt_set(wide_csv, "harmful", ["sw", "en"])
    target = tmp_path / "ws" / "prompts" / "harmful.jsonl"
    prompts.to_jsonl(target)
    assert prompts.sha256() == hashlib.sha256(target.read_bytes()).hexdigest()
    assert prompts.sha256() == load_prompt_set(wide_csv, "harmful", ["sw", "en"]).sha256()
    lines = target.read_text("utf-8").splitlines()
    assert len(lines) == 4
    assert list(json.loads(lines[0])) == ["id", "lang", "text", "split", "answer"]
    reloaded = PromptSet.from_jsonl(target, "harmful")
    assert reloaded.prompts == prompts.prompts
    assert reloaded.langs() == ["sw", "en"]
    assert reloaded.sha256() == prompts.sha256()
    assert [p.name for p in tmp_path.joinpath("ws", "prompts").iterdir()] == ["harmful.jsonl"]


def test_hash_changes_with_content() -> None:
    base = PromptSet("s", (Prompt("1", "en", "a", FIT),), "mem")
    assert base.sha256() == PromptSet("other", base.prompts, "elsewhere").sha256()
    assert base.sha256() != PromptSet("s", (Prompt("1", "en", "a", HELDOUT),), "mem").sha256()
    assert base.sha256() != PromptSet("s", (Prompt("1", "en", "a", FIT, "x"),), "mem").sha256()
    assert base.sha256() != PromptSet("s", (Prompt("1", "en", "b", FIT),), "mem").sha256()


def test_to_jsonl_replaces_existing_file_atomically(tmp_path: Path) -> None:
    target = tmp_path / "set.jsonl"
    target.write_text("old\n", "utf-8")
    PromptSet("s", (Prompt("1", "en", "new", FIT, "ans"),), "mem").to_jsonl(target)
    assert json.loads(target.read_text("utf-8")) == {
        "id": "1",
        "lang": "en",
        "text": "new",
        "split": "fit",
        "answer": "ans",
    }
    disk_full = OSError(28, "No space left on device")
    with (
        mock.patch("os.replace", side_effect=disk_full),
        pytest.raises(PromptError, match="cannot write prompt set"),
    ):
        PromptSet("s", (), "mem").to_jsonl(target)
    assert json.loads(target.read_text("utf-8"))["text"] == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set.jsonl"]


def test_from_jsonl_errors(tmp_path: Path) -> None:
    path = tmp_path / "set.jsonl"
    with pytest.raises(PromptError, match="does not exist"):
        PromptSet.from_jsonl(path, "s")
    path.write_text('{"id": "1", "lang": "en", "text": "a", "split": "train"}\n', "utf-8")
    with pytest.raises(PromptError, match="unknown split 'train' on line 1"):
        PromptSet.from_jsonl(path, "s")
    path.write_text('{"id": "1", "lang": "en", "split": "fit"}\n', "utf-8")
    with pytest.raises(PromptError, match="line 1 has no string 'text'"):
        PromptSet.from_jsonl(path, "s")
    line = '{"id": "1", "lang": "en", "text": "a", "split": "fit", "answer": null}\n'
    path.write_text(line + line, "utf-8")
    with pytest.raises(PromptError, match="duplicate id '1' for language 'en' \\(lines 1 and 2\\)"):
        PromptSet.from_jsonl(path, "s")
    path.write_text(line + line.replace('"en"', '"bn"').replace("fit", "heldout"), "utf-8")
    with pytest.raises(PromptError, match="id '1' is in both splits"):
        PromptSet.from_jsonl(path, "s")
    path.write_text("{oops\n", "utf-8")
    with pytest.raises(PromptError, match="invalid JSON on line 1"):
        PromptSet.from_jsonl(path, "s")


# --- Hub source (offline: huggingface_hub is mocked) ---------------------------------


@needs_multijail
def test_hub_multijail_downloads_the_csv() -> None:
    with mock.patch("huggingface_hub.hf_hub_download", return_value=str(MULTIJAIL)) as download:
        prompts = load_prompt_set("DAMO-NLP-SG/MultiJail", "harmful", ["en", "sw"], revision="v1")
    download.assert_called_once_with(
        "DAMO-NLP-SG/MultiJail", "MultiJail.csv", repo_type="dataset", revision="v1"
    )
    assert prompts.source == "DAMO-NLP-SG/MultiJail"
    assert len(prompts.ids()) == 315
    assert prompts.select("en")[0].text.startswith("How much money")


def test_hub_url_with_file(wide_csv: Path) -> None:
    with mock.patch("huggingface_hub.hf_hub_download", return_value=str(wide_csv)) as download:
        prompts = load_prompt_set("hf://datasets/me/set/data/x.csv", "harmful", ["en"])
    download.assert_called_once_with("me/set", "data/x.csv", repo_type="dataset", revision=None)
    assert prompts.ids() == ["1", "2"]


def test_hub_repo_with_single_data_file(wide_csv: Path) -> None:
    files = ["README.md", ".gitattributes", "prompts.csv"]
    with (
        mock.patch("huggingface_hub.HfApi.list_repo_files", return_value=files) as listing,
        mock.patch("huggingface_hub.hf_hub_download", return_value=str(wide_csv)) as download,
    ):
        prompts = load_prompt_set("me/set", "harmful", ["bn"], revision="abc")
    listing.assert_called_once_with("me/set", repo_type="dataset", revision="abc")
    download.assert_called_once_with("me/set", "prompts.csv", repo_type="dataset", revision="abc")
    assert [p.text for p in prompts.select("bn")] == ["bn 1", "bn 2"]


def test_hub_repo_with_ambiguous_files() -> None:
    files = ["a.csv", "b.jsonl", "README.md"]
    with mock.patch("huggingface_hub.HfApi.list_repo_files", return_value=files):
        error = _error("me/set", ["en"])
    assert "expected exactly one .csv or .jsonl file, found a.csv, b.jsonl" in error.message
    assert "hf://datasets/me/set/FILE" in error.hint


def test_hub_network_failure_suggests_local_file() -> None:
    failure = ConnectionError("Name or service not known\nretrying")
    with mock.patch("huggingface_hub.hf_hub_download", side_effect=failure):
        error = _error("DAMO-NLP-SG/MultiJail", ["en"])
    assert error.message == (
        "could not fetch dataset 'DAMO-NLP-SG/MultiJail' from the Hugging Face Hub "
        "(Name or service not known)"
    )
    assert "local file" in error.hint


def test_local_path_wins_over_hub_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "owner").mkdir()
    _write_csv(tmp_path / "owner" / "name", ["id", "en"], [["1", "x"]])
    with mock.patch("huggingface_hub.hf_hub_download") as download:
        error = _error("owner/name", ["en"])
        assert "does not exist" in _error("data/typo.csv", ["en"]).message
    download.assert_not_called()
    assert "unknown prompt file format '(no extension)'" in error.message
