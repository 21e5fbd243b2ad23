"""`swe align` (all stages in one workspace), `swe apply`/`verify` through the CLI, and exit codes."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from test_cli import Result, run_cli


def align_args(
    model: Path, prompt_files: dict[str, Path], output: Path, workspace: Path
) -> list[str]:
    """A random tiny model refuses nothing, so `swe select` (method auto, the generic recipe's)
    would find no edit worth making: these tests pin the gate-row method (a later --method
    overrides it)."""
    return [
        "align", str(model), "--langs", "es,sw", "-o", str(output), "-w", str(workspace),
        "--harmful", str(prompt_files["harmful"]), "--harmless", str(prompt_files["harmless"]),
        "--general", "", "--set", "probe.batch_size=4", "--method", "paper",
    ]  # fmt: skip


def run(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> Result:
    return run_cli(args, monkeypatch, capsys)


@pytest.fixture(scope="module")
def aligned(
    tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path, prompt_files: dict[str, Path]
) -> dict:
    """One align run shared by the tests below (module-scoped, so run through main() once)."""
    import sys

    from swe_cli.cli import main

    root = tmp_path_factory.mktemp("align")
    output, workspace = root / "out", root / "ws"
    argv = sys.argv
    sys.argv = [
        "swe",
        *align_args(tiny_llama, prompt_files, output, workspace),
        "--json",
        "--method",
        "residual",
    ]
    try:
        with pytest.raises(SystemExit) as done:
            main()
    finally:
        sys.argv = argv
    assert done.value.code == 0
    return {"output": output, "workspace": workspace, "root": root}


def test_align_writes_a_verified_checkpoint(
    aligned: dict, tiny_llama: Path, monkeypatch, capsys
) -> None:
    output = aligned["output"]
    assert (output / "model.safetensors.index.json").exists()
    provenance = json.loads((output / "swe_edit.json").read_text())
    assert provenance["languages"] == ["en", "es", "sw"]
    assert provenance["solver"]["method"] == "residual"
    code, out, _ = run(
        ["verify", str(output), "--base", str(tiny_llama), "--json"], monkeypatch, capsys
    )
    assert code == 0
    summary = json.loads(out)
    assert summary["ok"] is True and summary["tensors_edited"] >= 1


def test_align_records_every_stage_and_the_recipe(aligned: dict) -> None:
    import yaml

    manifest = yaml.safe_load((aligned["workspace"] / "workspace.yaml").read_text())
    for stage in ("probe", "localize", "solve", "apply"):
        assert manifest["stages"][stage]["status"] == "done", stage
    assert manifest["stages"]["solve"]["params"]["method"] == "residual"
    assert manifest["stages"]["probe"]["params"]["batch_size"] == 4


def test_verify_exits_1_on_a_changed_byte(
    aligned: dict, tiny_llama: Path, monkeypatch, capsys
) -> None:
    import shutil

    broken = aligned["root"] / "broken"
    shutil.copytree(aligned["output"], broken)
    index = json.loads((broken / "model.safetensors.index.json").read_text())["weight_map"]
    shard = broken / index["model.embed_tokens.weight"]
    data = bytearray(shard.read_bytes())
    (header_size,) = struct.unpack("<Q", data[:8])
    data[8 + header_size + 1] ^= 0xFF
    shard.write_bytes(bytes(data))
    code, out, err = run(
        ["verify", str(broken), "--base", str(tiny_llama), "--json"], monkeypatch, capsys
    )
    assert code == 1
    summary = json.loads(out)
    assert summary["ok"] is False
    assert any("model.embed_tokens.weight" in problem for problem in summary["problems"])


def test_align_refuses_an_existing_output_before_any_work(
    tmp_path: Path, tiny_llama: Path, prompt_files: dict[str, Path], monkeypatch, capsys
) -> None:
    output, workspace = tmp_path / "out", tmp_path / "ws"
    output.mkdir()
    code, _, err = run(align_args(tiny_llama, prompt_files, output, workspace), monkeypatch, capsys)
    assert code == 1
    assert "already exists" in err and "--force" in err
    assert not workspace.exists()


def test_align_dry_run_writes_nothing(
    tmp_path: Path, tiny_llama: Path, prompt_files: dict[str, Path], monkeypatch, capsys
) -> None:
    output, workspace = tmp_path / "out", tmp_path / "ws"
    code, out, _ = run(
        [*align_args(tiny_llama, prompt_files, output, workspace), "--dry-run", "--json"],
        monkeypatch,
        capsys,
    )
    assert code == 0
    plan = json.loads(out)
    assert plan["dry_run"] is True
    assert plan["stages"] == ["probe", "localize", "solve", "apply"]
    assert plan["recipe"]["solve"]["method"] == "paper"
    assert not output.exists() and not workspace.exists()


def test_align_bad_recipe_override_is_one_line(
    tmp_path: Path, tiny_llama: Path, prompt_files: dict[str, Path], monkeypatch, capsys
) -> None:
    args = [
        *align_args(tiny_llama, prompt_files, tmp_path / "o", tmp_path / "w"),
        "--set",
        "solve.rnk=3",
    ]
    code, _, err = run(args, monkeypatch, capsys)
    assert code == 1
    assert "solve.rnk" in err.splitlines()[0]


def test_apply_edit_only_then_apply_to_base(
    aligned: dict, tiny_llama: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    edit_dir, again = tmp_path / "edit", tmp_path / "again"
    code, _, err = run(
        ["apply", "-w", str(aligned["workspace"]), "--edit-only", "-o", str(edit_dir)],
        monkeypatch,
        capsys,
    )
    assert code == 0, err
    assert (edit_dir / "edit.safetensors").stat().st_size < 1_000_000
    code, _, err = run(
        [
            "apply",
            "--edit",
            str(edit_dir),
            "--base",
            str(tiny_llama),
            "-o",
            str(again),
            "--device",
            "cpu",
        ],
        monkeypatch,
        capsys,
    )
    assert code == 0, err
    index = json.loads((again / "model.safetensors.index.json").read_text())["weight_map"]
    for shard in set(index.values()):
        assert (again / shard).read_bytes() == (aligned["output"] / shard).read_bytes()
    code, _, err = run(
        ["apply", "-w", str(aligned["workspace"]), "-o", str(again)], monkeypatch, capsys
    )
    assert code == 1 and "exists" in err
