"""bench/effect.py's prompt sets: held-out and development prompts never overlap what the
workspace probed, and development keeps borderline refusals apart from harmless ones (a
workspace probed with half of a borderline fit split is compared on the other half)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from common import load_bench

from swe_cli.prompts import FIT, HELDOUT, load_prompt_set, split_of

LANGS = ["en", "sw"]


def _write(path: Path, ids: list[str], kind: str) -> Path:
    """A long JSONL set: one text per id and language, the text naming both."""
    rows = [{"id": i, "lang": lang, "text": f"{kind} {i} {lang}"} for i in ids for lang in LANGS]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _ids(prefix: str, count: int) -> tuple[list[str], list[str]]:
    """`count` ids and the fit ones among them (both splits must occur for a real check)."""
    ids = [f"{prefix}{n:02d}" for n in range(count)]
    fit = [i for i in ids if split_of(i, 0.5) == FIT]
    assert 2 <= len(fit) <= count - 2
    return ids, fit


@pytest.fixture
def files(tmp_path: Path) -> dict[str, object]:
    """A workspace that probed the first 8 harmful ids, the harmless set and half of the
    borderline fit ids (as `swe probe --max-prompts 8 --borderline HALF` writes them)."""
    harmful_ids, harmful_fit = _ids("", 24)
    harmless_ids, _ = _ids("h", 10)
    border_ids, border_fit = _ids("b", 20)
    harmful = _write(tmp_path / "harmful.jsonl", harmful_ids, "harmful")
    harmless = _write(tmp_path / "harmless.jsonl", harmless_ids, "harmless")
    border = _write(tmp_path / "borderline.jsonl", border_ids, "border")
    half = _write(tmp_path / "half.jsonl", border_fit[0::2], "border")
    prompts = tmp_path / "ws" / "prompts"
    prompts.mkdir(parents=True)
    load_prompt_set(harmful, "harmful", LANGS, max_prompts=8).to_jsonl(prompts / "harmful.jsonl")
    load_prompt_set(half, "borderline", LANGS).to_jsonl(prompts / "borderline.jsonl")
    probed_harmless = load_prompt_set(harmless, "harmless", LANGS)
    probed_harmless.to_jsonl(prompts / "harmless.jsonl")
    return {
        "ws": tmp_path / "ws",
        "harmful": harmful,
        "border": border,
        "harmful_ids": harmful_ids,
        "harmful_fit": harmful_fit,
        "harmless_ids": harmless_ids,
        "border_ids": border_ids,
        "border_fit": border_fit,
    }


def _ids_of(texts: dict[str, list[str]], lang: str) -> list[str]:
    return [t.split()[1] for t in texts[lang]]


def test_development_compares_on_the_borderline_ids_the_workspace_did_not_probe(
    files: dict,
) -> None:
    bench = load_bench("effect")
    sets = bench.prompt_sets(files["ws"], LANGS, None, files["border"], files["harmful"])
    # no harmless column: the borderline refusals are not reported as harmless ones
    assert set(sets) == {"harmful", "borderline"}
    unprobed = files["border_fit"][1::2]
    for lang in LANGS:
        assert _ids_of(sets["borderline"], lang) == sorted(unprobed)
        assert all(t.endswith(f" {lang}") for t in sets["borderline"][lang])
        harmful = _ids_of(sets["harmful"], lang)
        assert harmful == sorted(i for i in files["harmful_fit"] if i not in files["harmful_ids"][:8])  # fmt: skip
    # the KL is measured on the development borderline prompts
    assert bench.kl_texts(sets) == [t for lang in LANGS for t in sets["borderline"][lang]]
    # a limit keeps the first ids, the same in every language
    limited = bench.prompt_sets(files["ws"], LANGS, 2, files["border"], files["harmful"])
    assert _ids_of(limited["borderline"], "en") == sorted(unprobed)[:2]
    assert _ids_of(limited["borderline"], "sw") == sorted(unprobed)[:2]


def test_held_out_sets_keep_borderline_and_harmless_apart(files: dict) -> None:
    bench = load_bench("effect")
    sets = bench.prompt_sets(files["ws"], LANGS, None, files["border"])
    assert set(sets) == {"harmful", "harmless", "borderline"}
    for lang in LANGS:
        border = [i for i in files["border_ids"] if split_of(i, 0.5) == HELDOUT]
        assert _ids_of(sets["borderline"], lang) == sorted(border)
        harmless = [i for i in files["harmless_ids"] if split_of(i, 0.5) == HELDOUT]
        assert _ids_of(sets["harmless"], lang) == sorted(harmless)
        harmful = [i for i in files["harmful_ids"][:8] if split_of(i, 0.5) == HELDOUT]
        assert _ids_of(sets["harmful"], lang) == sorted(harmful)
    assert bench.kl_texts(sets) == [t for lang in LANGS for t in sets["harmless"][lang]]
    assert set(bench.prompt_sets(files["ws"], LANGS, None)) == {"harmful", "harmless"}
