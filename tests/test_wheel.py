"""What a user installs: the distribution's name, the packages and data files a built wheel holds,
and `swe` run from a wheel installed into a fresh virtual environment (as pipx or uv tool do)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

import swe_cli

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
RECIPES = sorted(path.name for path in (ROOT / "recipes").glob("*.yaml"))
DATA = sorted(
    path.name
    for path in (ROOT / "swe_cli" / "data").iterdir()
    if path.suffix in {".yaml", ".jsonl"}
)


def test_distribution_name_is_the_one_every_hint_names() -> None:
    assert PYPROJECT["project"]["name"] == swe_cli.DISTRIBUTION == "swe-multilingual-safety"
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    # the old name is an unrelated package on PyPI: nothing may tell a user to install it
    taken = re.compile("swe" + r"-cli\b")
    offenders = [
        name
        for name in tracked
        if name != "CHANGELOG.md"
        and (ROOT / name).is_file()
        and taken.search((ROOT / name).read_text(encoding="utf-8", errors="replace"))
    ]
    assert offenders == []


def test_every_package_folder_is_listed_for_the_wheel() -> None:
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    folders = {
        ".".join(path.parent.relative_to(ROOT).parts)
        for path in (ROOT / "swe_cli").rglob("*")
        if path.suffix in {".py", ".yaml", ".jsonl"} and "__pycache__" not in path.parts
    }
    assert folders <= listed, sorted(folders - listed)
    assert PYPROJECT["tool"]["setuptools"]["package-dir"] == {"swe_cli.recipes": "recipes"}
    assert not (ROOT / "swe_cli" / "recipes").exists()  # recipes/ holds the only copy


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv (reusing this environment's torch through --system-site-packages, no
    downloads) with swe installed from a wheel built from this checkout."""
    root = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PIP_NO_INDEX"] = "1"  # nothing may be downloaded
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    subprocess.run([*build, "-q", "-w", str(root / "dist"), str(ROOT)], env=env, check=True)
    (wheel,) = (root / "dist").glob("swe_multilingual_safety-*.whl")
    venv = root / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", str(venv)], env=env, check=True
    )
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps"]
    subprocess.run([*pip, str(wheel)], env=env, check=True, cwd=root)
    return venv


def _run(venv: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        list(args), env=env, cwd=venv.parent, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_the_wheel_ships_every_recipe_and_data_file(wheel_env: Path) -> None:
    script = (
        "import json, swe_cli\n"
        "from importlib import resources\n"
        "from swe_cli.recipe import builtin_recipes\n"
        "data = resources.files('swe_cli') / 'data'\n"
        "print(json.dumps({'package': swe_cli.__file__, 'sources': [r.source for r in builtin_recipes()],\n"
        "  'recipes': sorted(r.source.rsplit('/', 1)[-1] for r in builtin_recipes()),\n"
        "  'data': sorted(p.name for p in data.iterdir() if p.name.endswith(('.yaml', '.jsonl')))}))"
    )
    result = _run(wheel_env, str(wheel_env / "bin" / "python"), "-c", script)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["package"].startswith(str(wheel_env)), found  # the wheel's copy, not this checkout
    assert all(source.startswith(str(wheel_env)) for source in found["sources"]), found
    assert found["recipes"] == RECIPES
    assert found["data"] == DATA


@pytest.mark.slow
def test_swe_from_the_wheel_picks_the_organism_recipe(
    wheel_env: Path, organism: Any, tmp_path: Path
) -> None:
    swe = str(wheel_env / "bin" / "swe")
    model = str(organism.path / "model")
    plan = _run(wheel_env, swe, "align", model, "--langs", organism.lrls[0], "-o", str(tmp_path / "out"),
                "--dry-run", "--json")  # fmt: skip
    assert plan.returncode == 0, plan.stderr
    summary = json.loads(plan.stdout)
    assert summary["recipe"]["name"] == "organism"
    assert summary["harmless"].startswith(str(wheel_env))  # the built-in data file, from the wheel
    demo = _run(wheel_env, swe, "demo", "--help")
    assert demo.returncode == 0 and "demo" in demo.stdout
