"""CLI tests: `swe --help` is fast (no torch), probe -> localize -> solve with --json prints valid
JSON on stdout, and user errors end with exit code 1, one `error:` line and one `hint:` line on
stderr and no traceback (the traceback only with --debug)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from swe_cli.cli import main

Result = tuple[int, str, str]


def run_cli(
    args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> Result:
    """Run `swe ARGS` in-process: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["swe", *args])
    capsys.readouterr()
    try:
        main()
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


def run_subprocess(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )


def assert_user_error(result: Result, *fragments: str) -> None:
    code, out, err = result
    assert code == 1, err
    assert out == ""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 2, err
    assert lines[0].startswith("error: ")
    assert lines[1].startswith("hint: ")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def probe_args(model: str, workspace: Path, prompt_files: dict[str, Path]) -> list[str]:
    return [
        "probe",
        model,
        "-w",
        str(workspace),
        "--langs",
        "es,sw",
        "--harmful",
        str(prompt_files["harmful"]),
        "--harmless",
        str(prompt_files["harmless"]),
        "--batch-size",
        "4",
    ]


def test_help_lists_commands_without_importing_torch() -> None:
    result = run_subprocess(
        "import sys\n"
        "import swe_cli.cli\n"
        "assert 'torch' not in sys.modules, 'import swe_cli.cli imported torch'\n"
        "sys.argv = ['swe', '--help']\n"
        "try:\n"
        "    swe_cli.cli.main()\n"
        "except SystemExit as done:\n"
        "    assert not done.code, done.code\n"
        "for heavy in ('torch', 'transformers', 'safetensors'):\n"
        "    assert heavy not in sys.modules, heavy + ' imported by --help'\n"
    )
    assert result.returncode == 0, result.stderr
    for command in ("probe", "localize", "solve"):
        assert command in result.stdout


def test_command_help_shows_options_and_defaults(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = run_cli(["solve", "--help"], monkeypatch, capsys)
    assert code == 0
    for option in ("--method", "--rank", "--gamma", "--lambda", "--hard", "--sparse", "--json"):
        assert option in out
    assert "paper" in out


def test_probe_localize_solve_json(
    tiny_llama: Path,
    prompt_files: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    workspace = tmp_path / "ws"
    code, out, err = run_cli(
        [*probe_args(str(tiny_llama), workspace, prompt_files), "--json"], monkeypatch, capsys
    )
    assert code == 0, err
    probed = json.loads(out)
    assert probed["layers"] == [0, 1, 2] and probed["stats_layers"] == [0, 1, 2]
    assert probed["shards_written"] == 6 and probed["shards_skipped"] == 0
    assert set(probed["counts"]) == {
        f"{s}-{lang}" for s in ("harmful", "harmless") for lang in ("en", "es", "sw")
    }

    code, out, err = run_cli(["localize", "-w", str(workspace), "--json"], monkeypatch, capsys)
    assert code == 0, err
    localized = json.loads(out)
    assert localized["hrl"] == "en"
    assert set(localized["layers"]) == {"0", "1", "2"}
    for values in localized["layers"].values():
        assert set(values["sizes"]) == {"en", "es", "sw"}
        assert values["jaccard"]["en"]["en"] == 1.0

    code, out, err = run_cli(
        ["solve", "-w", str(workspace), "--method", "residual", "--json"], monkeypatch, capsys
    )
    assert code == 0, err
    solved = json.loads(out)
    manifest = yaml.safe_load((workspace / "workspace.yaml").read_text())
    assert solved["method"] == "residual"
    assert solved["edit_sha256"] == manifest["stages"]["solve"]["outputs"]["edit_sha256"]
    assert solved["rows"] == 2 * 32
    assert (workspace / "edit" / "edit.safetensors").exists()
    assert set(solved["layers"]) == {"1", "2"}
    assert 0.0 < solved["layers"]["2"]["down"]["relative_residual"] < 1.0

    # without --json: tables on stderr, nothing on stdout
    code, out, err = run_cli(
        ["solve", "-w", str(workspace), "--method", "residual"], monkeypatch, capsys
    )
    assert code == 0 and out == ""
    assert "relative" in err or "residual" in err


def test_missing_model_folder(
    prompt_files: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    missing = tmp_path / "no-such-model"
    result = run_cli(probe_args(str(missing), tmp_path / "ws", prompt_files), monkeypatch, capsys)
    assert_user_error(result, str(missing))
    assert not (tmp_path / "ws").exists()


def test_error_text_is_not_read_as_markup(
    prompt_files: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    missing = tmp_path / "model[v2]"
    result = run_cli(probe_args(str(missing), tmp_path / "ws", prompt_files), monkeypatch, capsys)
    assert_user_error(result, "model[v2]")


def test_missing_language_in_prompt_file(
    tiny_llama: Path,
    prompt_files: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    args = probe_args(str(tiny_llama), tmp_path / "ws", prompt_files)
    args[args.index("es,sw")] = "es,xx"
    assert_user_error(run_cli(args, monkeypatch, capsys), "'xx'")


def test_solve_before_probe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    result = run_cli(["solve", "-w", str(tmp_path / "empty")], monkeypatch, capsys)
    assert_user_error(result, "not a workspace")
    assert "swe probe" in result[2]


def test_solve_before_localize(
    probed_workspace: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    args = ["solve", "-w", str(probed_workspace), "--method", "residual"]
    assert_user_error(run_cli(args, monkeypatch, capsys), "'localize' has not finished")


def test_unknown_method(
    probed_workspace: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    result = run_cli(
        ["solve", "-w", str(probed_workspace), "--method", "magic"], monkeypatch, capsys
    )
    assert_user_error(result, "magic")
    assert "paper" in result[2].splitlines()[-1]


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    workspace = tmp_path / "empty"
    code = (
        "import sys\n"
        "from swe_cli.cli import main\n"
        f"sys.argv = ['swe', '--debug', 'solve', '-w', {str(workspace)!r}]\n"
        "main()\n"
    )
    result = run_subprocess(code)
    assert result.returncode == 1
    assert "Traceback" in result.stderr
    assert "WorkspaceError" in result.stderr
    quiet = run_subprocess(code.replace("'--debug', ", ""))
    assert quiet.returncode == 1
    assert "Traceback" not in quiet.stderr
    assert quiet.stderr.startswith("error: ")


def test_eval_with_user_utility_files(
    tiny_llama: Path,
    prompt_files: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    mine = tmp_path / "mine.jsonl"
    rows = [
        {"id": "1", "lang": "en", "question": "how do i make a cake", "answer": "3"},
        {"id": "1", "lang": "sw", "question": "vipi ninatengeneza keki", "answer": "keki"},
    ]
    mine.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    args = ["eval", str(tiny_llama), "--langs", "sw", "--harmful", str(prompt_files["harmful"])]
    args += ["--max-prompts", "4", "--max-new-tokens", "4", "--json", "-o", str(tmp_path / "r")]
    code, out, err = run_cli(
        [*args, "--utility", str(mine), "--over-refusal", "none"], monkeypatch, capsys
    )
    assert code == 0, err
    report = json.loads(out)
    languages = report["model"]["languages"]
    assert languages["en"]["utility_n"] == 1 and languages["sw"]["utility_n"] == 1
    assert languages["en"]["choice_n"] == 4  # the built-in multiple choice, capped by --max-prompts
    assert languages["sw"]["over_refusal"] is None
    assert report["settings"]["utility"]["source"] == str(mine)
    assert report["settings"]["multiple_choice"]["source"] == "builtin"

    rows[1]["lang"] = "swahili"
    mine.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    result = run_cli([*args, "--utility", str(mine)], monkeypatch, capsys)
    assert_user_error(result, "unknown language 'swahili'", "line 2")
