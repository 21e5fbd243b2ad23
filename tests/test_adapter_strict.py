"""`swe verify ADAPTER` is as strict as for a checkpoint: every tampering the audit tried is a
failure (exit 1), an adapter carries the edit it was exported from so it verifies without a
workspace, and `swe eval --adapter` refuses a base the adapter does not verify against."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from common import make_tiny_checkpoint
from test_lora import export, mixed_edit

from swe_cli.stages.verify import verify_adapter

WEIGHTS = "adapter_model.safetensors"
B_KEY = "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"


@pytest.fixture(scope="module")
def adapter(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("adapters") / "adapter"
    export(mixed_edit(tiny_llama), tiny_llama, folder)
    return folder


def _config(change: dict) -> Callable[[Path], None]:
    def tamper(folder: Path) -> None:
        path = folder / "adapter_config.json"
        config = json.loads(path.read_text())
        config.update(change(config) if callable(change) else change)
        path.write_text(json.dumps(config))

    return tamper


def _scale_b(factor: float, drop_edit: bool) -> Callable[[Path], None]:
    def tamper(folder: Path) -> None:
        from safetensors.torch import load_file, save_file

        tensors = load_file(str(folder / WEIGHTS))
        tensors[B_KEY] = tensors[B_KEY] * factor
        save_file(tensors, str(folder / WEIGHTS))
        if drop_edit:
            shutil.rmtree(folder / "swe_edit")

    return tamper


def _plant(relative: str) -> Callable[[Path], None]:
    def tamper(folder: Path) -> None:
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_text("import os\n")

    return tamper


def _link_weights_outside(folder: Path) -> None:
    outside = folder.parent / f"{folder.name}-weights.safetensors"
    shutil.move(folder / WEIGHTS, outside)
    os.symlink(outside, folder / WEIGHTS)


def _alpha_pattern(config: dict) -> dict:
    module = config["target_modules"][0]
    return {"alpha_pattern": {**config["alpha_pattern"], module: 4 * config["r"]}}


CASES = {
    "alpha_pattern changed": (_config(_alpha_pattern), "'alpha_pattern'"),
    "use_rslora": (_config({"use_rslora": True}), "'use_rslora' is True"),
    "use_dora": (_config({"use_dora": True}), "'use_dora' is True"),
    "lora_dropout": (_config({"lora_dropout": 0.5}), "'lora_dropout'"),
    "an unknown forward key": (_config({"layer_replication": [[0, 2]]}), "'layer_replication'"),
    "another base named": (
        _config({"base_model_name_or_path": "meta-llama/Llama-3.1-8B"}),
        "is not the recorded base",
    ),
    "planted handler.py": (_plant("handler.py"), "handler.py: a file swe does not write"),
    "planted sub-folder": (_plant("extra/run.sh"), "extra/: a folder swe does not write"),
    "weights linked outside": (_link_weights_outside, "outside the adapter folder"),
    "tripled lora_B, edit removed": (_scale_b(3.0, drop_edit=True), "cannot verify the factors"),
    "tripled lora_B": (_scale_b(3.0, drop_edit=False), "more than the F32 rounding"),
    "nan lora_B": (_scale_b(float("nan"), drop_edit=False), "holds nan or inf"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_tampering_fails_verify(
    case: str, adapter: Path, tiny_llama: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "adapter"
    shutil.copytree(adapter, folder)
    assert verify_adapter(folder, tiny_llama).ok
    tamper, message = CASES[case]
    tamper(folder)
    problems = verify_adapter(folder, tiny_llama).problems
    assert any(message in problem for problem in problems), problems


def test_an_adapter_verifies_without_a_workspace_through_the_cli(
    adapter: Path, tiny_llama: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    from test_cli import run_cli

    moved = tmp_path / "downloaded"
    shutil.copytree(adapter, moved)  # elsewhere, as a download would be: nothing points back
    code, out, err = run_cli(
        ["verify", str(moved), "--base", str(tiny_llama), "--json"], monkeypatch, capsys
    )
    assert code == 0, err
    assert json.loads(out)["edit_checked"] is True
    shutil.rmtree(moved / "swe_edit")
    code, out, err = run_cli(
        ["verify", str(moved), "--base", str(tiny_llama), "--json"], monkeypatch, capsys
    )
    assert code == 1 and "cannot verify the factors" in err


def test_eval_refuses_an_adapter_on_another_base(
    adapter: Path, tmp_path: Path, prompt_files: dict[str, Path], monkeypatch, capsys
) -> None:
    from test_cli import assert_user_error, run_cli

    other = make_tiny_checkpoint(tmp_path / "other", "llama", seed=1)
    args = ["eval", str(other), "--adapter", str(adapter), "--langs", "es,sw"]
    args += ["--harmful", str(prompt_files["harmful"]), "--utility", "none", "--mc", "none"]
    args += ["--over-refusal", "none", "--max-new-tokens", "2"]
    assert_user_error(
        run_cli(args, monkeypatch, capsys), f"adapter {adapter} does not verify against"
    )
