"""Files meant to be pushed name no local path: the base by its Hub id or folder name, prompt sets
by name and sha256, the evaluated models by name; `--push-to-hub` uploads only swe's files and the
checkpoint's own, and `align --dry-run` lists them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from unittest import mock

import pytest
from test_align import align_args
from test_cli import run_cli

from swe_cli.hub import planned_upload, push_to_hub, upload_files
from swe_cli.io.safetensors import read_header

REPO = Path(__file__).resolve().parents[1]


def _texts(folder: Path) -> dict[str, str]:
    """Every pushable text of a folder: its text files and the metadata of its safetensors."""
    texts = {}
    for name in upload_files(folder):
        path = folder / name
        if name.endswith(".safetensors"):
            texts[name] = json.dumps(read_header(path).metadata)
        elif path.stat().st_size < 1_000_000:
            texts[name] = path.read_text(encoding="utf-8", errors="replace")
    return texts


def _local_paths(folder: Path, *roots: Path) -> list[str]:
    return [
        f"{name}: {root}"
        for name, text in _texts(folder).items()
        for root in roots
        if str(root) in text
    ]


def test_align_apply_lora_and_edit_only_write_no_local_path(
    tmp_path: Path,
    tiny_llama: Path,
    prompt_files: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    base = tmp_path / "my-base"
    shutil.copytree(tiny_llama, base)
    output, workspace = tmp_path / "out", tmp_path / "ws"
    args = [*align_args(base, prompt_files, output, workspace), "--method", "residual"]
    args += ["--eval", "--no-gate", "--set", "eval.max_new_tokens=2"]
    code, _, err = run_cli([*args, "--quiet"], monkeypatch, capsys)
    assert code == 0, err
    for extra, folder in ((["--as-lora"], "adapter"), (["--edit-only"], "edit")):
        code, _, err = run_cli(
            ["apply", "-w", str(workspace), "-o", str(tmp_path / folder), *extra, "--quiet"],
            monkeypatch,
            capsys,
        )
        assert code == 0, err
    roots = (tmp_path, prompt_files["harmful"].parent, REPO, Path.home())
    for folder in ("out", "adapter", "edit"):
        assert _local_paths(tmp_path / folder, *roots) == [], folder
    provenance = json.loads((output / "swe_edit.json").read_text())
    assert provenance["base_model"]["id"] == "my-base"
    assert provenance["prompt_sets"]["harmful"]["source"] == "harmful.csv"
    assert len(provenance["prompt_sets"]["harmful"]["sha256"]) == 64
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "my-base"
    assert "| Language |" in (output / "README.md").read_text()  # the eval, with no path


@pytest.fixture()
def copied(tmp_path: Path, tiny_llama: Path) -> Path:
    """An edited checkpoint's folder as apply leaves it, with the user's own files copied from
    the base folder beside the checkpoint's."""
    folder = tmp_path / "out"
    shutil.copytree(tiny_llama, folder)
    (folder / "notes.txt").write_text("my notes\n")
    (folder / "logs").mkdir()
    (folder / "logs" / "run.log").write_text("HF_TOKEN=...\n")
    (folder / "swe_edit.json").write_text("{}")
    (folder / "swe_edit").mkdir()
    (folder / "swe_edit" / "edit.safetensors").write_bytes(b"x")
    return folder


def test_push_uploads_only_checkpoint_and_swe_files(copied: Path) -> None:
    files = upload_files(copied)
    assert "notes.txt" not in files and not any(name.startswith("logs") for name in files)
    assert {"config.json", "swe_edit.json", "swe_edit/edit.safetensors"} <= set(files)
    assert any(name.endswith(".safetensors") and "/" not in name for name in files)
    with mock.patch("huggingface_hub.HfApi") as api_class:
        api = api_class.return_value
        del api.upload_large_folder
        push_to_hub(copied, "me/model", token="hf_x")
    assert api.upload_folder.call_args.kwargs["allow_patterns"] == files


def test_align_dry_run_lists_what_push_would_upload(
    tmp_path: Path,
    tiny_llama: Path,
    prompt_files: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    base = tmp_path / "base"
    shutil.copytree(tiny_llama, base)
    (base / "notes.txt").write_text("private\n")
    args = align_args(base, prompt_files, tmp_path / "out", tmp_path / "ws")
    code, out, err = run_cli(
        [*args, "--dry-run", "--push-to-hub", "me/model", "--json"], monkeypatch, capsys
    )
    assert code == 0, err
    upload = json.loads(out)["upload"]
    assert upload == planned_upload(base)
    assert "notes.txt" not in upload and "swe_edit/edit.safetensors" in upload
    assert not (tmp_path / "out").exists() and not (tmp_path / "ws").exists()
