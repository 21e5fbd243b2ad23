"""Adding an edit method is one file and one registry line (docs/adding-a-method.md): a method
written in a temporary module and registered by one line solves a workspace through `swe solve`,
is listed with its description in `swe solve --help`, and is a `swe select` candidate (named, or
from its share of the default spread)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_cli import run_cli

from swe_cli.edit import load_edit
from swe_cli.methods import METHODS, Registered
from swe_cli.settings import LocalizeConfig, SelectSettings, SolveConfig, SolveSettings
from swe_cli.stages.localize import run_localize
from swe_cli.stages.select import candidate_configs, default_candidates, parse_candidate
from swe_cli.stages.solve import run_solve
from swe_cli.workspace import Workspace

METHOD_FILE = '''
"""Half the residual edit: the residual method with its target halved."""

from swe_cli.methods.residual import ResidualMethod


class HalfMethod(ResidualMethod):
    name = "half"

    def target(self, data, config, reference=None):
        return 0.5 * super().target(data, config, reference)

    def candidates(self, num_layers):
        return (f"half@{num_layers - 1} keep_hrl=true",)
'''
# the one registry line
REGISTRATION = 'Registered("half_method:HalfMethod", "half the residual edit (a test method)")'


@pytest.fixture()
def half(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "methods"
    folder.mkdir()
    (folder / "half_method.py").write_text(METHOD_FILE, encoding="utf-8")
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setitem(METHODS, "half", eval(REGISTRATION, {"Registered": Registered}))
    return folder


def test_the_new_method_solves_through_swe_solve(
    half: Path,
    workspace_copy: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    workspace = Workspace(workspace_copy)
    run_localize(workspace, LocalizeConfig(tau_mag=0.5, tau_stat=0.2))
    run_solve(workspace, SolveConfig(method="residual", layers=(1, 2)))
    full = load_edit(workspace.edit_dir / "edit.safetensors")
    code, _, err = run_cli(
        ["solve", "-w", str(workspace_copy), "--method", "half", "--layers", "1,2", "-q"],
        monkeypatch,
        capsys,
    )
    assert code == 0, err
    assert workspace.require_stage("solve").params["method"] == "half"
    halved = load_edit(workspace.edit_dir / "edit.safetensors")
    assert [t.name for t in halved.tensors] == [t.name for t in full.tensors]
    for mine, reference in zip(halved.tensors, full.tensors, strict=True):
        # the solve is linear in its target; float32 deltas of a float64 solve
        scale = float(reference.delta.abs().max())
        assert scale > 0
        torch.testing.assert_close(mine.delta, 0.5 * reference.delta, rtol=1e-4, atol=1e-5 * scale)


def test_the_new_method_is_listed_in_solve_help(half: Path) -> None:
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(half)!r})\n"
        "from swe_cli.methods import METHODS, Registered\n"
        f"METHODS['half'] = {REGISTRATION}\n"
        "from swe_cli.cli import main\n"
        "sys.argv = ['swe', 'solve', '--help']\n"
        "main()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.replace("│", " ").split())
    assert "half (half the residual edit (a test method))" in text
    assert "residual (down_proj of several layers" in text


def test_the_new_method_is_a_select_candidate(half: Path) -> None:
    base = SolveSettings(method="auto").resolve()
    config = parse_candidate("half@2 strength=2", base)
    assert config.method == "half" and config.layers == (2,) and config.strength == 2
    assert default_candidates(24)[-1] == "half@23 keep_hrl=true"
    spread = candidate_configs(SelectSettings(), base, 24)
    assert [c.method for c in spread].count("half") == 1
