"""align's checks on its input model: a model without a chat template is refused before any work,
and a model that rarely refuses in the HRL gets a warning (there is little refusal to copy)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from test_align import align_args
from test_cli import assert_user_error, run_cli


def test_a_model_without_chat_template_is_refused_before_any_work(
    tmp_path: Path, tiny_llama: Path, prompt_files: dict[str, Path], monkeypatch, capsys
) -> None:
    model = tmp_path / "base-model"
    shutil.copytree(tiny_llama, model)
    (model / "chat_template.jinja").unlink(missing_ok=True)
    config_path = model / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.pop("chat_template", None)
    config_path.write_text(json.dumps(config))
    workspace = tmp_path / "ws"
    result = run_cli(
        align_args(model, prompt_files, tmp_path / "out", workspace), monkeypatch, capsys
    )
    assert_user_error(result, "has no chat template")
    assert not workspace.exists() and not (tmp_path / "out").exists()


def test_low_hrl_refusal_is_warned_and_recorded(
    tmp_path: Path, tiny_llama: Path, prompt_files: dict[str, Path], monkeypatch, capsys
) -> None:
    """The tiny random model never refuses: probe records 0.0 and align says so."""
    workspace = tmp_path / "ws"
    code, out, err = run_cli(
        [
            *align_args(tiny_llama, prompt_files, tmp_path / "out", workspace),
            "--method",
            "residual",
        ],
        monkeypatch,
        capsys,
    )
    assert code == 0, err
    assert "warning: the model refused 0% of the en harmful prompts checked" in " ".join(
        err.split()
    )
    manifest = (workspace / "workspace.yaml").read_text()
    assert "hrl_refusal: 0.0" in manifest
