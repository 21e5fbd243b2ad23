"""Usage errors are the user's, not bugs: a missing or bad option, an unknown command or plain
`swe` print click's usage and one line naming the option, exit 2; bad YAML in --set, --candidates
or a recipe, an unwritable output or workspace folder and a truncated weight file print one line
naming the input (exit 1). Never the "unexpected ... report it" of a crash."""

from __future__ import annotations

import errno
import os
import pathlib
import shutil
from pathlib import Path

import pytest
from test_cli import assert_user_error, run_cli

from swe_cli.errors import SolveError
from swe_cli.settings import SolveSettings
from swe_cli.stages.select import parse_candidate

CRASH = "report it"


def _usage(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    assert CRASH not in err and "unexpected" not in err and "Traceback" not in err
    assert "Usage: swe" in err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def _model_args(model: Path, prompt_files: dict[str, Path]) -> list[str]:
    return [str(model), "--langs", "es,sw", "--harmful", str(prompt_files["harmful"])]


def test_plain_swe_shows_usage_and_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    code, out, err = run_cli([], monkeypatch, capsys)
    _usage(code, out + err, "align")


def test_unknown_command_names_the_closest(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    code, _, err = run_cli(["algn"], monkeypatch, capsys)
    _usage(code, err, "No such command 'algn'", "'align'")


def test_missing_output_names_the_option_and_what_it_takes(
    tiny_llama: Path,
    prompt_files: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    code, _, err = run_cli(["align", *_model_args(tiny_llama, prompt_files)], monkeypatch, capsys)
    _usage(code, err, "Usage: swe align", "Missing option", "'--output'", "Output folder")


def test_missing_harmful_names_the_option(
    tiny_llama: Path,
    tmp_path: Path,
    prompt_files: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    args = ["probe", str(tiny_llama), "-w", str(tmp_path / "ws"), "--langs", "es"]
    code, _, err = run_cli(
        [*args, "--harmless", str(prompt_files["harmless"])], monkeypatch, capsys
    )
    _usage(code, err, "Usage: swe probe", "Missing option '--harmful'", "Harmful prompts")
    assert not (tmp_path / "ws").exists()


@pytest.mark.parametrize(
    ("args", "option", "accepts"),
    [
        (["align", "M", "--langs", "es", "-o", "O", "--max-kl", "nan"], "'--max-kl'", ">= 0"),
        (["align", "M", "--langs", "es", "-o", "O", "--max-kl", "abc"], "'--max-kl'", "number"),
        (["apply", "-w", "WS", "-o", "O", "--as-lora", "--max-lora-rank", "0"],
         "'--max-lora-rank'", ">= 1"),
        (["solve", "-w", "WS", "--rank", "0"], "'--rank'", "greater than or equal to 1"),
    ],
)  # fmt: skip
def test_bad_option_value_names_the_option(
    args: list[str],
    option: str,
    accepts: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    args = [str(tmp_path / word) if word in {"M", "O", "WS"} else word for word in args]
    code, _, err = run_cli(args, monkeypatch, capsys)
    accepts = accepts.replace(">=", "greater than or equal to")
    _usage(code, err, f"Invalid value for {option}", accepts)
    assert list(tmp_path.iterdir()) == []  # checked before any work


@pytest.mark.parametrize("value", ["{a: 1}", "{a:", "[1, 2"])
def test_bad_yaml_in_set_names_the_field(
    value: str,
    tiny_llama: Path,
    tmp_path: Path,
    prompt_files: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    args = ["align", *_model_args(tiny_llama, prompt_files), "-o", str(tmp_path / "out")]
    result = run_cli([*args, "--set", f"solve.rank={value}", "--dry-run"], monkeypatch, capsys)
    assert_user_error(result, "solve.rank")
    assert CRASH not in result[2] and "recipes/" not in result[2].splitlines()[0]


def test_bad_yaml_in_a_candidate_names_the_candidate() -> None:
    base = SolveSettings(method="residual").resolve("cpu")
    with pytest.raises(SolveError, match=r"residual@1 rank=\{a:.*not valid YAML"):
        parse_candidate("residual@1 rank={a:", base)
    with pytest.raises(SolveError, match="residual@1 rank="):
        parse_candidate("residual@1 rank={a:1}", base)


@pytest.mark.parametrize("text", ["solve:\n  rank: {a: 1}\n", "solve:\n  rank: {a:\n"])
def test_bad_recipe_file_names_the_file(
    text: str,
    tiny_llama: Path,
    tmp_path: Path,
    prompt_files: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    recipe = tmp_path / "mine.yaml"
    recipe.write_text(text, encoding="utf-8")
    args = ["align", *_model_args(tiny_llama, prompt_files), "-o", str(tmp_path / "out")]
    result = run_cli([*args, "--recipe", str(recipe), "--dry-run"], monkeypatch, capsys)
    assert_user_error(result, str(recipe))


@pytest.fixture
def read_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder whose contents cannot be created, as on a read-only mount (chmod does not stop
    root, which runs the tests in CI containers)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    prefix = str(folder) + os.sep
    real_mkdir, real_open = pathlib.Path.mkdir, os.open

    def mkdir(self: Path, *args: object, **kwargs: object) -> None:
        if str(self).startswith(prefix):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        real_mkdir(self, *args, **kwargs)  # type: ignore[arg-type]

    def open_(path: object, *args: object, **kwargs: object) -> int:
        if str(path).startswith(prefix):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    monkeypatch.setattr(os, "open", open_)
    return folder


def test_read_only_workspace_names_the_folder(
    read_only: Path,
    tiny_llama: Path,
    prompt_files: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    args = ["probe", *_model_args(tiny_llama, prompt_files), "-w", str(read_only / "ws")]
    result = run_cli([*args, "--harmless", str(prompt_files["harmless"])], monkeypatch, capsys)
    assert_user_error(result, str(read_only), "Read-only file system")
    assert CRASH not in result[2]


def test_read_only_output_names_the_folder(
    read_only: Path,
    tiny_llama: Path,
    tmp_path: Path,
    prompt_files: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    args = ["align", *_model_args(tiny_llama, prompt_files), "-o", str(read_only / "out")]
    args += ["--harmless", str(prompt_files["harmless"]), "-w", str(tmp_path / "ws")]
    result = run_cli([*args, "--method", "residual", "--quiet"], monkeypatch, capsys)
    assert_user_error(result, str(read_only), "Read-only file system")
    assert CRASH not in result[2]


def test_truncated_weights_name_the_checkpoint(
    tiny_llama: Path,
    tmp_path: Path,
    prompt_files: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_llama, damaged)
    shard = sorted(damaged.glob("*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:5])
    args = [
        "eval",
        *_model_args(damaged, prompt_files),
        "--harmless",
        str(prompt_files["harmless"]),
    ]
    result = run_cli(args, monkeypatch, capsys)
    assert_user_error(result, str(damaged))
    assert "truncated" in result[2] and CRASH not in result[2]


def test_a_closed_stdout_pipe_is_no_crash() -> None:
    """`swe ... | head -1`: when the reader of stdout goes away mid-run the run ends quietly
    (exit 1, nothing on stderr), never as an "unexpected BrokenPipeError ... report it"."""
    import subprocess
    import sys

    child = (
        "import sys\n"
        "import importlib\n"
        "app = importlib.import_module('swe_cli.cli.app')\n"
        "@app.app.command('pipe-closed')\n"
        "def pipe_closed() -> None:\n"
        "    raise BrokenPipeError(32, 'Broken pipe')\n"
        "sys.argv = ['swe', 'pipe-closed']\n"
        "app.main()\n"
    )
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "unexpected" not in done.stderr and CRASH not in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
