"""One writer per workspace and per output: a second `swe` process that would write the same
folder exits 1 naming the holder's PID (or waits for it with SWE_WAIT_FOR_LOCK=1), and the lock
goes with its holder, even one killed with SIGKILL. Each case starts two real processes: a holder
that takes the lock as swe does, and the swe command line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


@contextmanager
def holder(kind: str, folder: Path, seconds: float = 120) -> Iterator[subprocess.Popen[str]]:
    """A separate process holding the lock of `folder` (kind: workspace or output) until killed
    or `seconds` pass."""
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from swe_cli.io.lock import lock_output, lock_workspace\n"
        f"lock = lock_workspace(Path({str(folder)!r}), create=True) if {kind!r} == 'workspace' "
        f"else lock_output(Path({str(folder)!r}))\n"
        "with lock:\n"
        "    print('held', flush=True)\n"
        f"    time.sleep({seconds})\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code], env=ENV, stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "held"
        yield process
    finally:
        process.kill()
        process.wait()


def swe(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "swe_cli.cli", *args],
        env=env or ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_busy(result: subprocess.CompletedProcess[str], what: str, pid: int) -> None:
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and what in errors[0] and f"PID {pid}" in errors[0], result.stderr
    assert "Traceback" not in result.stderr


def test_a_second_stage_on_a_workspace_in_use_exits_naming_the_holder(
    workspace_copy: Path,
) -> None:
    before = (workspace_copy / "workspace.yaml").read_bytes()
    with holder("workspace", workspace_copy) as process:
        for args in (
            ["localize", "-w", str(workspace_copy)],
            ["solve", "-w", str(workspace_copy), "--method", "residual"],
        ):
            assert_busy(swe(*args), f"workspace {workspace_copy}", process.pid)
    assert (workspace_copy / "workspace.yaml").read_bytes() == before


def test_a_second_probe_on_a_workspace_in_use_writes_nothing(
    tmp_path: Path, tiny_llama: Path, prompt_files: dict[str, Path]
) -> None:
    workspace = tmp_path / "ws"
    with holder("workspace", workspace) as process:
        result = swe(
            "probe",
            str(tiny_llama),
            "-w",
            str(workspace),
            "--langs",
            "es,sw",
            "--harmful",
            str(prompt_files["harmful"]),
            "--harmless",
            str(prompt_files["harmless"]),
        )
        assert_busy(result, f"workspace {workspace}", process.pid)
    assert not workspace.exists() or not any(workspace.iterdir())


def test_apply_to_an_output_in_use_exits_naming_the_holder(
    workspace_copy: Path, tmp_path: Path
) -> None:
    output = tmp_path / "out"
    with holder("output", output) as process:
        result = swe("apply", "-w", str(workspace_copy), "-o", str(output))
        assert_busy(result, f"output {output}", process.pid)
    assert not output.exists()


def test_align_on_an_output_in_use_exits_before_any_stage(
    tmp_path: Path, tiny_llama: Path, prompt_files: dict[str, Path]
) -> None:
    output, workspace = tmp_path / "out", tmp_path / "ws"
    with holder("output", output) as process:
        result = swe(
            "align",
            str(tiny_llama),
            "--langs",
            "es,sw",
            "-o",
            str(output),
            "-w",
            str(workspace),
            "--harmful",
            str(prompt_files["harmful"]),
            "--harmless",
            str(prompt_files["harmless"]),
            "--method",
            "residual",
        )
        assert_busy(result, f"output {output}", process.pid)
    assert not output.exists() and not (workspace / "workspace.yaml").exists()


def test_a_killed_holder_releases_its_lock(workspace_copy: Path) -> None:
    with holder("workspace", workspace_copy) as process:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        # the lock file stays, naming a dead PID: the kernel lock is gone with its holder
        result = swe("localize", "-w", str(workspace_copy))
    assert result.returncode == 0, result.stderr


def test_with_wait_the_second_writer_runs_after_the_holder(workspace_copy: Path) -> None:
    with holder("workspace", workspace_copy, seconds=3):
        start = time.monotonic()
        result = swe("localize", "-w", str(workspace_copy), env={**ENV, "SWE_WAIT_FOR_LOCK": "1"})
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - start > 1


def test_a_lock_is_reentrant_in_its_own_process(tmp_path: Path) -> None:
    from swe_cli.io.lock import lock_output, lock_workspace

    with (
        lock_workspace(tmp_path / "ws", create=True),
        lock_workspace(tmp_path / "ws"),
        lock_output(tmp_path / "out"),
        lock_output(tmp_path / "out"),
    ):
        pass
    with lock_workspace(tmp_path / "ws"):  # released: taken again
        pass


def test_candidate_folders_carry_the_pid(tmp_path: Path) -> None:
    from swe_cli.align import candidate_folder, fresh_candidate

    output = tmp_path / "out"
    assert candidate_folder(output).name == f".out.swe-candidate-{os.getpid()}"
    (tmp_path / ".out.swe-candidate").mkdir()  # left by a killed run of an older version
    (tmp_path / ".out.swe-candidate-1").mkdir()
    assert fresh_candidate(output) == candidate_folder(output)
    assert not (tmp_path / ".out.swe-candidate").exists()
    assert not (tmp_path / ".out.swe-candidate-1").exists()


def test_a_planted_link_or_a_shared_lock_folder_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Someone else's link in the lock folder must not make swe truncate a file of yours."""
    from swe_cli.errors import SweError
    from swe_cli.io.lock import lock_file, lock_workspace

    locks = tmp_path / "locks"
    monkeypatch.setenv("SWE_LOCK_DIR", str(locks))
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me\n")
    locks.mkdir(mode=0o700)
    lock_file(tmp_path / "ws").symlink_to(precious)
    with (
        pytest.raises(SweError, match="cannot create the lock file"),
        lock_workspace(tmp_path / "ws", create=True),
    ):
        pass
    assert precious.read_text() == "keep me\n"
    locks.chmod(0o777)
    with (
        pytest.raises(SweError, match="not a private folder"),
        lock_workspace(tmp_path / "other", create=True),
    ):
        pass
