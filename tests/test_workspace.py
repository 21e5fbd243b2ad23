"""Workspace tests: resumable probing (finished shards skipped, damaged ones re-written), binding to
one model, the manifest's provenance, atomic writes, damaged-file errors and stale stages."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from conftest import LANGS, TARGETS, probe_workspace, write_varied_prompts

from swe_cli import __version__
from swe_cli.errors import WorkspaceError
from swe_cli.io.checkpoint import fingerprint
from swe_cli.io.files import atomic_path, atomic_write_text
from swe_cli.workspace import Workspace, load_tensors, save_tensors

SHARDS_PER_LAYER = 2 * len(LANGS)  # (harmful, harmless) x languages, one chunk each


def _shards(workspace: Path) -> list[Path]:
    return sorted((workspace / "acts").rglob("*.safetensors"))


def _mtimes(workspace: Path) -> dict[Path, int]:
    files = [*_shards(workspace), *sorted((workspace / "stats").glob("*.safetensors"))]
    return {path: path.stat().st_mtime_ns for path in files}


def test_rerun_skips_finished_shards(
    workspace_copy: Path, tiny_llama: Path, prompt_files: dict[str, Path]
) -> None:
    before = _mtimes(workspace_copy)
    assert len(before) == 3 * SHARDS_PER_LAYER + 3
    result = probe_workspace(workspace_copy, tiny_llama, prompt_files)
    assert result.shards_written == 0  # type: ignore[attr-defined]
    assert result.shards_skipped == SHARDS_PER_LAYER  # type: ignore[attr-defined]
    assert _mtimes(workspace_copy) == before
    outputs = Workspace(workspace_copy).require_stage("probe").outputs
    assert outputs["shards_written"] == 0
    assert outputs["shards_skipped"] == SHARDS_PER_LAYER


def test_deleted_or_truncated_shard_is_rewritten_on_resume(
    workspace_copy: Path, tiny_llama: Path, prompt_files: dict[str, Path]
) -> None:
    deleted = workspace_copy / "acts" / "L1" / "harmful-es-00000.safetensors"
    truncated = workspace_copy / "acts" / "L2" / "harmless-sw-00000.safetensors"
    # clone: safetensors may hand out tensors that map the file, which is truncated below
    original = {
        path: {key: value.clone() for key, value in load_tensors(path)[0].items()}
        for path in (deleted, truncated)
    }
    deleted.unlink()
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) - 100])
    untouched = workspace_copy / "acts" / "L0" / "harmful-en-00000.safetensors"
    untouched_mtime = untouched.stat().st_mtime_ns

    result = probe_workspace(workspace_copy, tiny_llama, prompt_files)
    assert result.shards_written == 2  # type: ignore[attr-defined]
    assert result.shards_skipped == SHARDS_PER_LAYER - 2  # type: ignore[attr-defined]
    assert untouched.stat().st_mtime_ns == untouched_mtime
    for path, tensors in original.items():
        rewritten, metadata = load_tensors(path)
        assert metadata["set"] in {"harmful", "harmless"}
        for key, value in tensors.items():
            torch.testing.assert_close(rewritten[key], value, atol=1e-5, rtol=0)


def test_shard_with_other_ids_is_rewritten(
    workspace_copy: Path, tiny_llama: Path, prompt_files: dict[str, Path]
) -> None:
    shard = workspace_copy / "acts" / "L0" / "harmful-sw-00000.safetensors"
    tensors, metadata = load_tensors(shard)
    save_tensors(shard, tensors, {**metadata, "ids": "0\n1"})
    result = probe_workspace(workspace_copy, tiny_llama, prompt_files)
    assert result.shards_written == 1  # type: ignore[attr-defined]
    assert load_tensors(shard)[1]["ids"] == metadata["ids"]


def test_interrupted_probe_with_other_positions_is_not_reused(
    workspace_copy: Path, tiny_llama: Path, prompt_files: dict[str, Path]
) -> None:
    """A probe interrupted with --positions 2 leaves 2-position shards behind while the manifest
    still says 1; resuming with 1 must re-record them, not take them for finished."""
    expected = {path: load_tensors(path)[0]["x"].clone() for path in _shards(workspace_copy)}

    def interrupt(label: str, done: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # after the first chunk, before the manifest update
        probe_workspace(workspace_copy, tiny_llama, prompt_files, interrupt, positions=2)
    result = probe_workspace(workspace_copy, tiny_llama, prompt_files, positions=1)
    assert result.shards_written == SHARDS_PER_LAYER  # type: ignore[attr-defined]
    for path, x in expected.items():
        torch.testing.assert_close(load_tensors(path)[0]["x"], x, atol=1e-5, rtol=0)


def test_probe_with_another_dtype_rerecords(
    workspace_copy: Path, tiny_llama: Path, prompt_files: dict[str, Path]
) -> None:
    expected = {path: load_tensors(path)[0]["x"].clone() for path in _shards(workspace_copy)}
    stats = Workspace(workspace_copy).stats_path(1)
    result = probe_workspace(workspace_copy, tiny_llama, prompt_files, dtype="bfloat16")
    assert result.shards_written == SHARDS_PER_LAYER  # type: ignore[attr-defined]
    assert load_tensors(stats)[1]["dtype"] == "bfloat16"
    for path, x in expected.items():
        tensors, metadata = load_tensors(path)
        assert metadata["dtype"] == "bfloat16"
        assert not torch.allclose(tensors["x"], x, atol=1e-4)  # recorded in bfloat16
    result = probe_workspace(workspace_copy, tiny_llama, prompt_files, dtype="auto")
    assert result.shards_written == SHARDS_PER_LAYER  # type: ignore[attr-defined]
    for path, x in expected.items():
        torch.testing.assert_close(load_tensors(path)[0]["x"], x, atol=1e-5, rtol=0)


def test_workspace_of_model_a_refuses_model_b(
    workspace_copy: Path,
    tiny_llama: Path,
    tiny_checkpoint: Callable[[str], Path],
    prompt_files: dict[str, Path],
) -> None:
    other = tiny_checkpoint("qwen2")
    manifest_before = (workspace_copy / "workspace.yaml").read_bytes()
    with pytest.raises(WorkspaceError) as caught:
        probe_workspace(workspace_copy, other, prompt_files)
    message = caught.value.message
    assert str(tiny_llama) in message and str(other) in message
    assert fingerprint(tiny_llama)[:12] in message and fingerprint(other)[:12] in message
    assert "workspace" in caught.value.hint
    assert (workspace_copy / "workspace.yaml").read_bytes() == manifest_before
    with pytest.raises(WorkspaceError, match="belongs to model"):
        Workspace(workspace_copy).check_model(fingerprint(other), str(other))
    Workspace(workspace_copy).check_model(fingerprint(tiny_llama), str(tiny_llama))


def test_manifest_records_provenance(probed_workspace: Path, tiny_llama: Path) -> None:
    text = (probed_workspace / "workspace.yaml").read_text()
    assert "&id" not in text and "*id" not in text  # plain YAML, readable without anchors
    manifest = yaml.safe_load(text)
    assert manifest["tool_version"] == __version__
    model = manifest["model"]
    assert model["id"] == str(tiny_llama)
    assert model["fingerprint"] == fingerprint(tiny_llama)
    assert len(model["fingerprint"]) == 64
    assert model["model_type"] == "llama"
    assert (model["num_layers"], model["hidden_size"], model["intermediate_size"]) == (3, 32, 48)
    assert manifest["hrl"] == "en"
    assert manifest["langs"] == list(TARGETS)
    for prompt_set in ("harmful", "harmless"):
        written = (probed_workspace / "prompts" / f"{prompt_set}.jsonl").read_bytes()
        assert manifest["prompt_sets"][prompt_set]["sha256"] == hashlib.sha256(written).hexdigest()
        assert manifest["prompt_sets"][prompt_set]["count"] == len(written.splitlines())
    probe = manifest["stages"]["probe"]
    assert probe["status"] == "done"
    assert probe["tool_version"] == __version__
    assert probe["params"]["layers"] == [0, 1, 2]
    assert probe["params"]["stats_layers"] == [0, 1, 2]
    assert probe["params"]["positions"] == 1
    assert probe["params"]["batch_size"] == 4
    assert manifest["history"][-1]["stage"] == "probe"


def test_every_stage_records_its_params(workspace_copy: Path) -> None:
    from swe_cli.settings import LocalizeConfig, SolveConfig
    from swe_cli.stages.localize import run_localize
    from swe_cli.stages.solve import run_solve

    workspace = Workspace(workspace_copy)
    run_localize(workspace, LocalizeConfig(tau_mag=1.5, tau_stat=0.5))
    run_solve(workspace, SolveConfig(method="residual", lam=0.2, alpha=0.5))
    stages = workspace.load()["stages"]
    assert stages["localize"]["params"] == {"tau_mag": 1.5, "tau_stat": 0.5}
    solve = stages["solve"]["params"]
    assert (solve["method"], solve["lam"], solve["alpha"], solve["hard"]) == (
        "residual",
        0.2,
        0.5,
        False,
    )
    assert [entry["stage"] for entry in workspace.load()["history"]] == [
        "probe",
        "localize",
        "solve",
    ]


def _temporaries(directory: Path) -> list[Path]:
    return [path for path in directory.rglob("*") if path.name.endswith(".tmp")]


def test_atomic_writes_leave_no_temporary_files(probed_workspace: Path, tmp_path: Path) -> None:
    assert _temporaries(probed_workspace) == []
    target = tmp_path / "sub" / "file.txt"
    atomic_write_text(target, "first")
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        temporary.write_text("half-written")
        raise RuntimeError("interrupted")
    assert target.read_text() == "first"  # the old content survives an interrupted write
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "never.txt") as temporary:
        temporary.write_text("half")
        raise RuntimeError("interrupted")
    assert not (tmp_path / "never.txt").exists()
    assert _temporaries(tmp_path) == []
    assert sorted(os.listdir(tmp_path / "sub")) == ["file.txt"]


def test_load_tensors_on_damaged_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "shard.safetensors"
    save_tensors(path, {"x": torch.ones(4, 8)}, {"ids": "a"})
    tensors, metadata = load_tensors(path)
    assert metadata == {"ids": "a"} and tensors["x"].shape == (4, 8)
    data = path.read_bytes()
    path.write_bytes(data[:-16])
    with pytest.raises(WorkspaceError) as caught:
        load_tensors(path)
    assert str(path) in caught.value.message and "truncated" in caught.value.message
    assert caught.value.hint
    path.write_bytes(data[:5])
    with pytest.raises(WorkspaceError, match="shard.safetensors"):
        load_tensors(path)
    with pytest.raises(WorkspaceError, match="missing"):
        load_tensors(tmp_path / "absent.safetensors")


def test_invalidate_after_marks_later_stages_stale(workspace_copy: Path) -> None:
    workspace = Workspace(workspace_copy)
    workspace.record_stage("localize", {"tau_mag": 2.0}, {})
    workspace.record_stage("solve", {"method": "paper"}, {})
    workspace.invalidate_after("localize")
    stages = workspace.load()["stages"]
    assert stages["probe"]["status"] == "done"
    assert stages["localize"]["status"] == "done"
    assert stages["solve"]["status"] == "stale"
    with pytest.raises(WorkspaceError, match="'solve' has not finished"):
        workspace.require_stage("solve")
    workspace.invalidate_after("probe")
    assert workspace.load()["stages"]["localize"]["status"] == "stale"
    assert workspace.load()["stages"]["probe"]["status"] == "done"


def test_not_a_workspace(tmp_path: Path) -> None:
    with pytest.raises(WorkspaceError) as caught:
        Workspace(tmp_path).load()
    assert "not a workspace" in caught.value.message
    assert "swe probe" in caught.value.hint


def test_prompts_with_the_same_ids_but_other_texts_are_rerecorded(
    workspace_copy: Path, tiny_llama: Path, prompt_files: dict[str, Path], tmp_path: Path
) -> None:
    from swe_cli.workspace import load_acts

    edited = write_varied_prompts(tmp_path / "edited", seed=1)  # same ids, other texts
    result = probe_workspace(workspace_copy, tiny_llama, edited)
    assert result.shards_written == SHARDS_PER_LAYER  # type: ignore[attr-defined]
    reference = probe_workspace(tmp_path / "fresh", tiny_llama, edited)
    assert reference.shards_written == SHARDS_PER_LAYER  # type: ignore[attr-defined]
    got, _ = load_acts(Workspace(workspace_copy), 1, "harmful", "sw")
    expected, _ = load_acts(Workspace(tmp_path / "fresh"), 1, "harmful", "sw")
    torch.testing.assert_close(got["x"], expected["x"], atol=1e-5, rtol=0)


def test_fewer_prompts_on_rerun_leave_no_stale_chunks(
    workspace_copy: Path,
    tiny_llama: Path,
    prompt_files: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import swe_cli.stages.probe
    from swe_cli.workspace import load_acts

    monkeypatch.setattr(swe_cli.stages.probe, "CHUNK_SIZE", 3)
    many = probe_workspace(workspace_copy, tiny_llama, prompt_files)
    assert many.shards_written > SHARDS_PER_LAYER  # type: ignore[attr-defined]
    few_files = write_varied_prompts(tmp_path / "few", count=4)
    probe_workspace(workspace_copy, tiny_llama, few_files)
    workspace = Workspace(workspace_copy)
    for lang in LANGS:
        stored = (workspace.prompts_dir / "harmful.jsonl").read_text().splitlines()
        fit = [
            record["id"]
            for record in map(yaml.safe_load, stored)
            if record["lang"] == lang and record["split"] == "fit"
        ]
        acts, ids = load_acts(workspace, 0, "harmful", lang)
        assert ids == fit
        assert acts["x"].shape[0] == len(fit)


def test_language_codes_sharing_a_prefix_are_kept_apart(tmp_path: Path) -> None:
    from swe_cli.workspace import load_acts

    workspace = Workspace(tmp_path)
    for lang, rows in (("zh", 2), ("zh-TW", 3)):
        path = workspace.shard_path(0, "harmful", lang, 0)
        ids = "\n".join(str(index) for index in range(rows))
        save_tensors(path, {"x": torch.zeros(rows, 1, 4)}, {"ids": ids})
    acts, ids = load_acts(workspace, 0, "harmful", "zh")
    assert ids == ["0", "1"] and acts["x"].shape == (2, 1, 4)
