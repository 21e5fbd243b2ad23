"""Borderline benign requests in the fit data: `swe probe --borderline FILE` probes them with the
harmless prompts (same split by id), so the edit keeps the model's own answers to them and
select counts their refusals on its validation part; their ids must not clash with the harmless
ones; the built-in set is used only for runs whose languages it has."""

from __future__ import annotations

import json
from pathlib import Path

from test_cli import probe_args, run_cli

from swe_cli.pipeline import borderline_source


def _borderline(path: Path, ids: list[str], langs: tuple[str, ...] = ("en", "es", "sw")) -> Path:
    lines = [
        json.dumps({"id": prompt_id, "lang": lang, "text": f"how do I shoot a photo {prompt_id}"})
        for prompt_id in ids
        for lang in langs
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _stored(workspace: Path) -> list[dict[str, str]]:
    lines = (workspace / "prompts" / "harmless.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def test_borderline_prompts_join_the_harmless_fit_data_with_their_own_answers(
    tmp_path: Path, tiny_llama: Path, prompt_files: dict[str, Path], monkeypatch, capsys
) -> None:
    ids = [f"b{index:02d}" for index in range(1, 13)]
    borderline = _borderline(tmp_path / "borderline.jsonl", ids)
    workspace = tmp_path / "ws"
    args = [*probe_args(str(tiny_llama), workspace, prompt_files), "--borderline", str(borderline)]
    code, _, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    stored = [p for p in _stored(workspace) if p["id"] in ids]
    assert {p["lang"] for p in stored} == {"en", "es", "sw"} and len(stored) == 36
    splits = {p["id"]: p["split"] for p in stored}
    assert set(splits.values()) == {"fit", "heldout"}  # split by id like every prompt set
    answered = {
        (row["lang"], row["id"])
        for row in map(json.loads, (workspace / "answers" / "harmless.jsonl").open())
    }
    fit = {(p["lang"], p["id"]) for p in stored if p["split"] == "fit"}
    assert fit and fit <= answered  # the model's own answers are kept like the harmless ones
    held_out = {(p["lang"], p["id"]) for p in stored if p["split"] == "heldout"}
    assert not held_out & answered
    # select tells them from the plain harmless prompts by the ids probe records
    from swe_cli.stages.select import borderline_ids
    from swe_cli.workspace import Workspace

    assert borderline_ids(Workspace(workspace)) == set(ids)


def test_borderline_ids_that_clash_with_harmless_ids_are_refused(
    tmp_path: Path, tiny_llama: Path, prompt_files: dict[str, Path], monkeypatch, capsys
) -> None:
    harmless_ids = {p["id"] for p in map(json.loads, prompt_files["harmless"].open())}
    clash = sorted(harmless_ids)[0]
    borderline = _borderline(tmp_path / "borderline.jsonl", [clash, "b99"])
    workspace = tmp_path / "ws"
    args = [*probe_args(str(tiny_llama), workspace, prompt_files), "--borderline", str(borderline)]
    code, _, err = run_cli(args, monkeypatch, capsys)
    assert code != 0
    line = " ".join(err.split())
    assert f"'{clash}'" in line and "ids of their own" in line
    assert "--borderline none" in line  # probed by default: the way out is named
    assert not (workspace / "acts").exists()


def test_builtin_borderline_only_for_languages_it_has() -> None:
    said: list[str] = []

    class Ui:
        def info(self, message: str) -> None:
            said.append(message)

    assert borderline_source("none", ["en", "bn"]) is None
    assert borderline_source("some/file.jsonl", ["en"]) == "some/file.jsonl"
    assert borderline_source("builtin", ["en", "qaa"], Ui()) is None  # type: ignore[arg-type]
    assert said and "qaa" in said[0]
    builtin = borderline_source("builtin", ["en", "bn", "sw", "th"])  # shipped: MultiJail's ten
    assert builtin is not None and Path(builtin).name == "borderline.jsonl"
    # auto, the default: the same set when it has every language, else none and no note
    assert borderline_source("auto", ["en", "bn", "sw", "th"]) == builtin
    said.clear()
    assert borderline_source("auto", ["en", "qaa"], Ui()) is None  # type: ignore[arg-type]
    assert said == []
