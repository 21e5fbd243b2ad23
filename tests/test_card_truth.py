"""What a model card claims must be true of the checkpoint beside it: an eval table only when that
eval measured this very edit, and the shipping gate's decision whenever there was one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from test_patch import base_checkpoint, bases_root, make_workspace  # noqa: F401

from swe_cli.edit import edit_sha256, load_edit, save_edit
from swe_cli.stages.apply import apply_workspace, export_edit
from swe_cli.workspace import Workspace

TABLE = "| sw | 10 | 90.0% | 10.0% |"  # the card row of make_workspace's eval report


def _resolve_again(workspace: Workspace) -> str:
    """Another edit in the workspace, as a re-run of `swe solve` with another method leaves it."""
    from dataclasses import replace

    edit = load_edit(workspace.edit_dir)
    other = replace(edit, tensors=tuple(replace(t, delta=t.delta * 2) for t in edit.tensors))
    save_edit(other, workspace.edit_dir)
    (workspace.edit_dir / "edit.yaml").write_text(yaml.safe_dump({"method": "residual"}))
    workspace.record_stage("solve", {"method": "residual"}, {"rows": other.num_rows})
    return edit_sha256(other)


def test_an_eval_of_another_edit_is_not_shown(bases_root: Path, tmp_path: Path) -> None:  # noqa: F811
    base = base_checkpoint("llama", bases_root)
    workspace = make_workspace(tmp_path / "ws", base, "llama")
    _resolve_again(workspace)
    apply_workspace(workspace, tmp_path / "out", device="cpu")
    card = (tmp_path / "out" / "README.md").read_text()
    assert "Method: `residual`" in card and TABLE not in card
    export_edit(workspace, tmp_path / "edit")
    assert not (tmp_path / "edit" / "eval_report.md").exists()
    assert TABLE not in (tmp_path / "edit" / "README.md").read_text()


def test_an_eval_of_this_edit_is_shown(bases_root: Path, tmp_path: Path) -> None:  # noqa: F811
    base = base_checkpoint("llama", bases_root)
    workspace = make_workspace(tmp_path / "ws", base, "llama")
    apply_workspace(workspace, tmp_path / "out", device="cpu")
    assert TABLE in (tmp_path / "out" / "README.md").read_text()


def test_a_refused_edit_applied_by_hand_says_so_in_its_card(
    bases_root: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    base = base_checkpoint("llama", bases_root)
    workspace = make_workspace(tmp_path / "ws", base, "llama")
    digest = edit_sha256(load_edit(workspace.edit_dir))
    reasons = ["mean KL 0.3 exceeds --max-kl 0.1"]
    workspace.record_stage(
        "gate",
        {"enforced": True},
        {"passed": False, "reasons": reasons, "note": "x", "edit_sha256": digest},
    )
    apply_workspace(workspace, tmp_path / "out", device="cpu")
    card = (tmp_path / "out" / "README.md").read_text()
    assert (
        "Shipping gate: **failed** (mean KL 0.3 exceeds --max-kl 0.1); written anyway by "
        "`swe apply`." in card
    )
    _resolve_again(workspace)  # the decision was about the old edit
    apply_workspace(workspace, tmp_path / "again", device="cpu")
    assert "Shipping gate" not in (tmp_path / "again" / "README.md").read_text()


def test_align_records_the_gate_decision_and_apply_carries_it(
    tmp_path: Path,
    tiny_llama: Path,
    prompt_files: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    from test_align import align_args
    from test_cli import run_cli

    output, workspace = tmp_path / "out", tmp_path / "ws"
    args = [*align_args(tiny_llama, prompt_files, output, workspace), "--method", "residual"]
    args += ["--eval", "--set", "eval.max_new_tokens=4", "--max-kl", "0", "--quiet"]
    code, _, err = run_cli(args, monkeypatch, capsys)
    assert code == 1 and "shipping gate" in err
    manifest = Workspace(workspace).load()
    gate = manifest["stages"]["gate"]["outputs"]
    digest = edit_sha256(load_edit(workspace / "edit"))
    assert gate["passed"] is False and gate["edit_sha256"] == digest
    assert any("exceeds --max-kl 0" in reason for reason in gate["reasons"])
    assert manifest["stages"]["eval"]["outputs"]["edit_sha256"] == digest

    code, _, err = run_cli(
        ["apply", "-w", str(workspace), "-o", str(output), "--quiet"], monkeypatch, capsys
    )
    assert code == 0, err
    card = (output / "README.md").read_text()
    assert "Shipping gate: **failed**" in card and "written anyway by `swe apply`" in card
    assert json.loads((output / "swe_edit.json").read_text())["edit"]["sha256"] == digest
