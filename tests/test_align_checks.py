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


def test_harmless_languages_the_run_leaves_out_are_reported(
    tmp_path: Path, tiny_llama: Path, prompt_files: dict[str, Path], monkeypatch, capsys
) -> None:
    """fr has harmless prompts but no harmful ones (it cannot be a target); es is in both files
    but not asked for. Each is named with its reason, and the summary lists them."""
    harmless = tmp_path / "harmless.jsonl"
    lines = prompt_files["harmless"].read_text(encoding="utf-8").splitlines()
    extra = [
        json.dumps({"id": str(i), "lang": "fr", "text": f"une question {i}"}) for i in range(3)
    ]
    harmless.write_text("\n".join([*lines, *extra]) + "\n", encoding="utf-8")
    args = [
        "probe", str(tiny_llama), "-w", str(tmp_path / "ws"), "--langs", "sw",
        "--harmful", str(prompt_files["harmful"]), "--harmless", str(harmless),
        "--batch-size", "4",
    ]  # fmt: skip
    code, out, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    said = " ".join(err.split())
    assert (
        "harmless prompts in fr are not used: the harmful set has no prompts in that language, "
        "so it cannot be a target" in said
    )
    assert "harmless prompts in es are not used: not in --langs" in said
    args[args.index("-w") + 1] = str(tmp_path / "ws2")
    code, out, err = run_cli([*args, "--json"], monkeypatch, capsys)
    assert code == 0, err
    assert json.loads(out)["unused_harmless_langs"] == ["es", "fr"]
