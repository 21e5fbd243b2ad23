"""Prompt sets: reading them, splitting them, writing them.

This module owns everything between a user's ``--harmful``/``--harmless``/``--general``
argument and the ``WS/prompts/<set>.jsonl`` file the stages read: the MultiJail wide CSV
(local or from the Hub dataset ``DAMO-NLP-SG/MultiJail``), generic long or wide CSV/JSONL
files, plain ``.txt`` files of general text, the checks that make a set usable (requested
languages present, no empty texts, no duplicate ids, parallel translations), the
deterministic fit/held-out split by id, and the canonical JSONL form with its hash.

Formats (``source``):

* wide CSV/JSONL: a column/key ``id`` plus one column/key per language code (``en``,
  ``bn``, ...); optional reference answers as ``answer_<lang>`` or one language-independent
  ``answer``. Other columns (MultiJail's ``source``, ``tags``) are ignored.
* long CSV/JSONL: columns/keys ``lang`` and ``text``, optional ``id`` (default: the line
  number) and ``answer``.
* ``.txt``: one text per non-blank line, id = line number; exactly one language requested.
* ``hf://datasets/OWNER/NAME[/FILE]`` or ``OWNER/NAME`` (when no such local path exists):
  a Hub dataset, fetched with ``huggingface_hub``; the file is ``MultiJail.csv`` for
  MultiJail, else the repository's single ``.csv``/``.jsonl`` file.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from swe_cli.errors import PromptError

FIT = "fit"
HELDOUT = "heldout"
SPLITS = (FIT, HELDOUT)

MULTIJAIL_REPO = "DAMO-NLP-SG/MultiJail"
MULTIJAIL_FILE = "MultiJail.csv"
HUB_PREFIX = "hf://datasets/"
FORMATS_HINT = (
    "use a wide CSV/JSONL (id + one column per language), a long CSV/JSONL "
    "(lang, text, optional id/answer), a .txt file (one text per line) or a Hub dataset"
)

_LANGUAGE_CODE = re.compile(r"[a-z]{2,3}([_-][A-Za-z0-9]{2,8})*")
_INTEGER = re.compile(r"-?[0-9]+")
_REPO_ID = re.compile(r"[\w.-]+/[\w.-]+")
_RESERVED_COLUMNS = {"id", "answer", "lang", "text", "split"}
_FILE_SUFFIXES = (".csv", ".jsonl", ".txt")


@dataclass(frozen=True)
class Prompt:
    """One text in one language; ``answer`` is an optional reference answer."""

    id: str
    lang: str
    text: str
    split: str
    answer: str | None = None


@dataclass(frozen=True)
class PromptSet:
    """A resolved prompt set: what the stages read, stored as ``WS/prompts/<name>.jsonl``."""

    name: str
    prompts: tuple[Prompt, ...]
    source: str
    unused_langs: tuple[str, ...] = ()  # languages the source has that were not asked for

    def langs(self) -> list[str]:
        """Languages in order of first appearance (the requested order for loaded sets)."""
        return list(dict.fromkeys(prompt.lang for prompt in self.prompts))

    def ids(self, split: str | None = None) -> list[str]:
        """Distinct ids, numerically sorted when all are integers, else as strings."""
        _check_split(split)
        return sort_ids({p.id for p in self.prompts if split is None or p.split == split})

    def select(self, lang: str, split: str | None = None) -> list[Prompt]:
        """Prompts of one language in ``ids()`` order, so selections are parallel across langs."""
        _check_split(split)
        if lang not in self.langs():
            raise PromptError(
                f"{self.source}: prompt set '{self.name}' has no language '{lang}' "
                f"(available: {', '.join(self.langs())})",
                "request one of the available languages or load the set with this language",
            )
        chosen = [p for p in self.prompts if p.lang == lang and (split is None or p.split == split)]
        return sorted(chosen, key=lambda prompt: _id_key(prompt.id))

    def counts(self) -> dict[tuple[str, str], int]:
        """Number of prompts per (lang, split), zeros included, so callers can spot empty splits."""
        counts = {(lang, split): 0 for lang in self.langs() for split in SPLITS}
        for prompt in self.prompts:
            counts[(prompt.lang, prompt.split)] += 1
        return counts

    def to_jsonl_bytes(self) -> bytes:
        """The canonical JSONL content: one object per prompt, keys in fixed order, UTF-8."""
        lines = [
            json.dumps(
                {"id": p.id, "lang": p.lang, "text": p.text, "split": p.split, "answer": p.answer},
                ensure_ascii=False,
            )
            + "\n"
            for p in self.prompts
        ]
        return "".join(lines).encode("utf-8")

    def sha256(self) -> str:
        """Hex digest of ``to_jsonl_bytes()``: equals ``sha256sum`` of the written file."""
        return hashlib.sha256(self.to_jsonl_bytes()).hexdigest()

    def to_jsonl(self, path: Path) -> None:
        """Write the canonical JSONL atomically (temp file, fsync, rename)."""
        _write_atomic(Path(path), self.to_jsonl_bytes())

    @classmethod
    def from_jsonl(cls, path: Path, name: str) -> PromptSet:
        """Read a file written by ``to_jsonl`` back, keeping its order and splits."""
        path = Path(path)
        prompts: list[Prompt] = []
        seen: dict[tuple[str, str], int] = {}
        split_of_id: dict[str, str] = {}
        with _reading(str(path)):
            records = list(_jsonl_objects(path, str(path)))
        for number, record in records:
            prompt = _stored_prompt(record, path, number)
            if (prompt.id, prompt.lang) in seen:
                raise PromptError(
                    f"{path}: duplicate id '{prompt.id}' for language '{prompt.lang}' "
                    f"(lines {seen[(prompt.id, prompt.lang)]} and {number})",
                    "rewrite the prompt set from its source with `swe probe`",
                )
            if split_of_id.setdefault(prompt.id, prompt.split) != prompt.split:
                raise PromptError(
                    f"{path}: id '{prompt.id}' is in both splits (line {number})",
                    "splits are per id; rewrite the prompt set from its source",
                )
            seen[(prompt.id, prompt.lang)] = number
            prompts.append(prompt)
        return cls(name=name, prompts=tuple(prompts), source=str(path))


def split_of(prompt_id: str, heldout_fraction: float, salt: str = "swe") -> str:
    """Deterministic by id (sha256 of salt+id -> uniform in [0,1)).

    Independent of language, file order and machine.

    The hashed string is ``f"{salt}:{prompt_id}"``; its first 8 digest bytes, read as a
    big-endian integer over 2**64, give the position u. ``u < heldout_fraction`` means
    held-out, so raising the fraction only moves ids from fit to held-out.
    """
    _check_fraction(heldout_fraction)
    digest = hashlib.sha256(f"{salt}:{prompt_id}".encode()).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    return HELDOUT if position < heldout_fraction else FIT


def sort_ids(ids: Iterable[str]) -> list[str]:
    """Ids in the deterministic order every set uses: numeric if all are integers."""
    ids = list(ids)
    if all(_INTEGER.fullmatch(prompt_id) for prompt_id in ids):
        return sorted(ids, key=lambda prompt_id: (int(prompt_id), prompt_id))
    return sorted(ids)


def load_prompt_set(
    source: str | Path,
    name: str,
    langs: Sequence[str],
    *,
    heldout_fraction: float = 0.5,
    max_prompts: int | None = None,
    require_parallel: bool = True,
    revision: str | None = None,
) -> PromptSet:
    """Read ``source``, keep the requested languages, check them, cap and split by id."""
    langs = list(langs)
    _check_request(langs, heldout_fraction, max_prompts)
    path, label = _resolve_source(source, revision)
    records, available = _read_records(path, label, langs)
    missing = [lang for lang in langs if lang not in available]
    if missing:
        raise PromptError(
            f"{label}: language {_quoted(missing)} not found "
            f"(available: {', '.join(sorted(available)) or 'none'})",
            "request only languages the file has, or add a column/rows for them",
        )
    texts = _index_records(records, label)
    ids = sort_ids({prompt_id for prompt_id, _ in texts})
    if require_parallel:
        _check_parallel(texts, ids, langs, label)
    if max_prompts is not None:
        ids = ids[:max_prompts]
    splits = {prompt_id: split_of(prompt_id, heldout_fraction) for prompt_id in ids}
    prompts = [
        Prompt(prompt_id, lang, record.text, splits[prompt_id], record.answer)
        for lang in langs
        for prompt_id in ids
        if (record := texts.get((prompt_id, lang))) is not None
    ]
    unused = tuple(sorted(available - set(langs)))
    return PromptSet(name=name, prompts=tuple(prompts), source=str(source), unused_langs=unused)


MERGED_SOURCE = " + "  # joins the sources of a merged set


def merge_sets(first: PromptSet, second: PromptSet) -> PromptSet:
    """first's prompts, then second's, under first's name (a set probed alongside another, e.g.
    borderline requests with the harmless prompts); the ids must not overlap."""
    shared = sorted(set(first.ids()) & set(second.ids()))
    if shared:
        raise PromptError(
            f"{second.source}: ids {_quoted(shared[:5])} are also ids of {first.source}",
            "give the prompts of each set ids of their own",
        )
    return PromptSet(
        name=first.name,
        prompts=first.prompts + second.prompts,
        source=f"{first.source}{MERGED_SOURCE}{second.source}",
        unused_langs=first.unused_langs,
    )


# --- reading -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Record:
    """One (id, lang) text as found in a file, with where it was found for error messages."""

    id: str
    lang: str
    text: str
    answer: str | None
    where: str


def _read_records(path: Path, label: str, langs: list[str]) -> tuple[list[_Record], set[str]]:
    """Records of the requested languages, and every language the file offers."""
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise PromptError(f"{label}: prompt file {what}", f"pass a file; {FORMATS_HINT}")
    suffix = path.suffix.lower()
    with _reading(label):
        if suffix == ".csv":
            return _read_csv(path, label, langs)
        if suffix == ".jsonl":
            return _read_jsonl(path, label, langs)
        if suffix == ".txt":
            return _read_txt(path, label, langs)
    raise PromptError(
        f"{label}: unknown prompt file format '{suffix or '(no extension)'}'",
        f"name the file .csv, .jsonl or .txt; {FORMATS_HINT}",
    )


def _read_csv(path: Path, label: str, langs: list[str]) -> tuple[list[_Record], set[str]]:
    # newline="" keeps line breaks inside quoted cells; utf-8-sig drops MultiJail's BOM.
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        try:
            columns = [column.strip() for column in reader.fieldnames or []]
            if not columns:
                raise PromptError(f"{label}: CSV file is empty", FORMATS_HINT)
            if len(set(columns)) != len(columns):
                raise PromptError(f"{label}: CSV header repeats a column name", FORMATS_HINT)
            reader.fieldnames = columns
            rows = [(reader.line_num, row) for row in reader]
        except csv.Error as error:
            raise PromptError(
                f"{label}: invalid CSV at line {reader.line_num} ({error})",
                "check the quoting of that line",
            ) from error
    return _records_from_rows(rows, columns, label, langs)


def _read_jsonl(path: Path, label: str, langs: list[str]) -> tuple[list[_Record], set[str]]:
    rows = list(_jsonl_objects(path, label))
    if not rows:
        raise PromptError(f"{label}: JSONL file has no records", FORMATS_HINT)
    columns = list(dict.fromkeys(key for _, row in rows for key in row))
    return _records_from_rows(rows, columns, label, langs)


def _read_txt(path: Path, label: str, langs: list[str]) -> tuple[list[_Record], set[str]]:
    if len(langs) != 1:
        raise PromptError(
            f"{label}: a .txt file holds one language but {len(langs)} were requested",
            "request exactly one language, or use a long CSV/JSONL (lang, text) for several",
        )
    text = path.read_text(encoding="utf-8-sig")
    records = [
        _Record(str(number), langs[0], line, None, f"line {number}")
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip()
    ]
    return records, {langs[0]}


@contextmanager
def _reading(label: str) -> Iterator[None]:
    """Turn decoding and file-system errors while reading into one-line PromptErrors."""
    try:
        yield
    except UnicodeDecodeError as error:
        raise PromptError(
            f"{label}: not valid UTF-8 text ({error.reason} at byte {error.start})",
            "save the file as UTF-8",
        ) from error
    except OSError as error:
        raise PromptError(
            f"{label}: cannot read prompt file ({error.strerror or error})",
            "check the path and its permissions",
        ) from error


def _jsonl_objects(path: Path, label: str) -> Iterator[tuple[int, dict[str, object]]]:
    """(line number, object) for every non-blank line; anything else is an error."""
    if not path.is_file():
        raise PromptError(f"{label}: prompt file does not exist", "check the path")
    with path.open(encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise PromptError(
                    f"{label}: invalid JSON on line {number} ({error.msg})",
                    "every line must be one JSON object",
                ) from error
            if not isinstance(record, dict):
                raise PromptError(
                    f"{label}: line {number} is not a JSON object",
                    "every line must be one JSON object",
                )
            yield number, record


def _records_from_rows(
    rows: list[tuple[int, dict[str, object]]], columns: list[str], label: str, langs: list[str]
) -> tuple[list[_Record], set[str]]:
    """Dispatch on layout: ``lang`` + ``text`` columns mean long, an ``id`` column means wide."""
    if "lang" in columns and "text" in columns:
        return _long_records(rows, label, langs)
    if "id" in columns:
        return _wide_records(rows, columns, label, langs)
    raise PromptError(
        f"{label}: unknown prompt table layout (columns: {', '.join(columns)})",
        FORMATS_HINT,
    )


def _long_records(
    rows: list[tuple[int, dict[str, object]]], label: str, langs: list[str]
) -> tuple[list[_Record], set[str]]:
    records: list[_Record] = []
    available: set[str] = set()
    for number, row in rows:
        lang = _cell(row, "lang", label, number)
        if not lang or not lang.strip():
            raise PromptError(f"{label}: empty 'lang' on line {number}", "fill in a language")
        lang = lang.strip()
        available.add(lang)
        if lang not in langs:
            continue
        prompt_id = _id_cell(row, label, number, default=str(number))
        text = _cell(row, "text", label, number) or ""
        answer = _answer(_cell(row, "answer", label, number))
        records.append(_Record(prompt_id, lang, text, answer, f"line {number}"))
    return records, available


def _wide_records(
    rows: list[tuple[int, dict[str, object]]], columns: list[str], label: str, langs: list[str]
) -> tuple[list[_Record], set[str]]:
    available = {
        column
        for column in columns
        if column not in _RESERVED_COLUMNS
        and not column.startswith("answer_")
        and (_LANGUAGE_CODE.fullmatch(column) or column in langs)
    }
    records: list[_Record] = []
    for number, row in rows:
        prompt_id = _id_cell(row, label, number, default=None)
        shared_answer = _cell(row, "answer", label, number)
        for lang in langs:
            text = _cell(row, lang, label, number)
            if text is None:  # a missing key or a short CSV row: this id lacks the language
                continue
            answer = _answer(_cell(row, f"answer_{lang}", label, number) or shared_answer)
            records.append(_Record(prompt_id, lang, text, answer, f"line {number}"))
    return records, available


def _cell(row: dict[str, object], key: str, label: str, number: int) -> str | None:
    value = row.get(key)
    if value is None or isinstance(value, str):
        return value
    raise PromptError(
        f"{label}: '{key}' on line {number} is {type(value).__name__}, not a string",
        "texts, languages and answers must be strings",
    )


def _id_cell(row: dict[str, object], label: str, number: int, default: str | None) -> str:
    value = row.get("id")
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if value is None or (isinstance(value, str) and not value.strip()):
        if default is not None:
            return default
        raise PromptError(f"{label}: empty id on line {number}", "give every row an id")
    if not isinstance(value, str):
        raise PromptError(
            f"{label}: id on line {number} is {type(value).__name__}, not a string or integer",
            "use string or integer ids",
        )
    return value.strip()


def _answer(value: str | None) -> str | None:
    return value if value and value.strip() else None


# --- checks --------------------------------------------------------------------------


def _index_records(records: list[_Record], label: str) -> dict[tuple[str, str], _Record]:
    """(id, lang) -> record, rejecting empty texts and duplicates."""
    index: dict[tuple[str, str], _Record] = {}
    for record in records:
        if not record.text.strip():
            raise PromptError(
                f"{label}: empty text for id '{record.id}' in language '{record.lang}' "
                f"({record.where})",
                "fill in the text, drop the row, or do not request this language",
            )
        key = (record.id, record.lang)
        if key in index:
            raise PromptError(
                f"{label}: duplicate id '{record.id}' for language '{record.lang}' "
                f"({index[key].where} and {record.where})",
                "make ids unique per language",
            )
        index[key] = record
    return index


def _check_parallel(
    texts: dict[tuple[str, str], _Record], ids: list[str], langs: list[str], label: str
) -> None:
    for prompt_id in ids:
        absent = [lang for lang in langs if (prompt_id, lang) not in texts]
        if absent:
            raise PromptError(
                f"{label}: id '{prompt_id}' has no text in language {_quoted(absent)} "
                "(the set must be parallel)",
                "add the translation, drop the id, or load the set without requiring parallel",
            )


def _check_request(langs: list[str], heldout_fraction: float, max_prompts: int | None) -> None:
    if not langs:
        raise PromptError("no languages requested for the prompt set", "pass e.g. --langs en,bn")
    duplicated = sorted({lang for lang in langs if langs.count(lang) > 1})
    if duplicated:
        raise PromptError(
            f"language {_quoted(duplicated)} requested twice", "list each language once"
        )
    _check_fraction(heldout_fraction)
    if max_prompts is not None and max_prompts < 1:
        raise PromptError(
            f"max prompts must be at least 1, got {max_prompts}", "omit it to keep all prompts"
        )


def _check_fraction(heldout_fraction: float) -> None:
    if not 0.0 <= heldout_fraction <= 1.0:
        raise PromptError(
            f"held-out fraction must be between 0 and 1, got {heldout_fraction}",
            "0.5 keeps half of the ids for evaluation",
        )


def _check_split(split: str | None) -> None:
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be None, {FIT!r} or {HELDOUT!r}, got {split!r}")


def _quoted(names: Iterable[str]) -> str:
    return ", ".join(f"'{name}'" for name in names)


def _id_key(prompt_id: str) -> tuple[int, int | str, str]:
    """Integers before strings, integers by value: consistent with ``sort_ids``."""
    if _INTEGER.fullmatch(prompt_id):
        return (0, int(prompt_id), prompt_id)
    return (1, prompt_id, prompt_id)


def _stored_prompt(record: dict[str, object], path: Path, number: int) -> Prompt:
    fields: dict[str, str] = {}
    for key in ("id", "lang", "text", "split"):
        value = record.get(key)
        if not isinstance(value, str):
            raise PromptError(
                f"{path}: line {number} has no string '{key}'",
                "prompt set files hold id, lang, text, split, answer on every line",
            )
        fields[key] = value
    if fields["split"] not in SPLITS:
        raise PromptError(
            f"{path}: unknown split '{fields['split']}' on line {number}",
            f"splits are '{FIT}' or '{HELDOUT}'",
        )
    answer = record.get("answer")
    if answer is not None and not isinstance(answer, str):
        raise PromptError(
            f"{path}: 'answer' on line {number} is not a string or null",
            "answers are strings, or null when there is none",
        )
    return Prompt(fields["id"], fields["lang"], fields["text"], fields["split"], answer)


# --- sources and files ---------------------------------------------------------------


def _resolve_source(source: str | Path, revision: str | None) -> tuple[Path, str]:
    """Local path (downloaded if needed) and the label error messages use."""
    if isinstance(source, Path):
        return source.expanduser(), str(source)
    if source.startswith("hf://"):
        return _fetch_from_hub(source, revision)
    local = Path(source).expanduser()
    looks_local = source.startswith((".", "/", "~")) or local.suffix.lower() in _FILE_SUFFIXES
    if local.exists() or looks_local or not _REPO_ID.fullmatch(source):
        return local, source
    return _fetch_from_hub(source, revision)


def _fetch_from_hub(source: str, revision: str | None) -> tuple[Path, str]:
    repo_id, filename = _parse_hub_source(source)
    # Imported here: huggingface_hub is slow to import and only this path needs it.
    from huggingface_hub import HfApi, hf_hub_download

    try:
        if filename is None:
            filename = _single_data_file(
                repo_id, HfApi().list_repo_files(repo_id, repo_type="dataset", revision=revision)
            )
        local = hf_hub_download(repo_id, filename, repo_type="dataset", revision=revision)
    except PromptError:
        raise
    # The transport error types differ across huggingface_hub versions (requests, httpx).
    except Exception as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise PromptError(
            f"could not fetch dataset '{repo_id}' from the Hugging Face Hub ({reason})",
            "check the name, your network and HF_TOKEN, or pass a local file "
            "(e.g. a downloaded MultiJail.csv)",
        ) from error
    return Path(local), f"{HUB_PREFIX}{repo_id}/{filename}"


def _parse_hub_source(source: str) -> tuple[str, str | None]:
    """``hf://datasets/OWNER/NAME[/FILE]`` or ``OWNER/NAME`` -> (repo id, file or None)."""
    if source.startswith("hf://") and not source.startswith(HUB_PREFIX):
        raise PromptError(
            f"{source}: only Hub datasets can hold prompts", f"use {HUB_PREFIX}OWNER/NAME[/FILE]"
        )
    parts = source.removeprefix(HUB_PREFIX).strip("/").split("/")
    if len(parts) < 2 or not all(parts[:2]):
        raise PromptError(f"{source}: not a Hub dataset name", f"use {HUB_PREFIX}OWNER/NAME[/FILE]")
    repo_id = "/".join(parts[:2])
    if len(parts) > 2:
        return repo_id, "/".join(parts[2:])
    if repo_id.lower() == MULTIJAIL_REPO.lower():
        return repo_id, MULTIJAIL_FILE
    return repo_id, None


def _single_data_file(repo_id: str, files: Iterable[str]) -> str:
    candidates = sorted(f for f in files if f.lower().endswith((".csv", ".jsonl")))
    if len(candidates) == 1:
        return candidates[0]
    found = ", ".join(candidates) if candidates else "none"
    raise PromptError(
        f"{HUB_PREFIX}{repo_id}: expected exactly one .csv or .jsonl file, found {found}",
        f"name the file: {HUB_PREFIX}{repo_id}/FILE",
    )


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    from swe_cli.io.files import atomic_write_bytes

    try:
        atomic_write_bytes(path, data)
    except OSError as error:
        raise PromptError(
            f"{path}: cannot write prompt set ({error.strerror or error})",
            "check that the directory is writable and the disk is not full",
        ) from error
