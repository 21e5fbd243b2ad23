"""Session fixtures of the core pipeline tests: tiny real-architecture checkpoints, parallel prompt
files whose texts differ in length (so batching really pads), and a probed workspace that tests
copy before changing it. Everything lives under tmp_path_factory and is built once per session."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import random
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from common import MULTIJAIL, WORDS, make_tiny_checkpoint


def running_in_ci() -> bool:
    """CI services set CI=true; there the real-model tests must run, not skip."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def missing_test_resources() -> list[str]:
    """What the real-model and MultiJail tests need that this machine lacks (empty: nothing)."""
    from qwen import qwen_available
    from smollm2 import smollm2_available

    missing = []
    for available, name in ((smollm2_available, "SmolLM2"), (qwen_available, "Qwen")):
        ok, reason = available()
        if not ok:
            missing.append(f"{name} checkpoint: {reason}")
    if not MULTIJAIL.is_file():
        missing.append(f"MultiJail data set: no file {MULTIJAIL} (set SWE_SHARED_DIR)")
    for module, extra in (("peft", "lora"), ("accelerate", "scale")):
        if importlib.util.find_spec(module) is None:
            missing.append(f"{module}: pip install -e '.[{extra}]'")
    return missing


def pytest_sessionstart(session: pytest.Session) -> None:
    """Under CI=true a missing real-model package or data set fails the run at once, naming what
    is missing, instead of letting the tests that need it skip; locally they skip with a reason."""
    if running_in_ci():
        missing = missing_test_resources()
        if missing:
            pytest.exit("CI=true but missing: " + "; ".join(missing), returncode=3)


@pytest.fixture(scope="session", autouse=True)
def base_eval_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The base-eval cache of this session only: a test run measures every base model as a
    fresh CI machine does (no answers left by an earlier run, no write into the user's cache);
    within the session, a second gated run on the same base still reads the cache."""
    from swe_cli.stages import base_cache

    folder = tmp_path_factory.mktemp("base-eval")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(base_cache, "default_cache_dir", lambda: folder)
        yield folder


LANGS = ("en", "es", "sw")  # HRL first, then the target languages
TARGETS = ("es", "sw")
PROMPT_COUNT = 16

HARMFUL_WORDS = ["bomb", "poison", "weapon", "steal", "hack", "bomba", "veneno", "bomu", "sumu"]
HARMLESS_WORDS = ["cake", "bread", "garden", "letter", "friend", "pastel", "pan", "keki", "mkate"]


def write_varied_prompts(
    directory: Path, langs: tuple[str, ...] = LANGS, count: int = PROMPT_COUNT, seed: int = 0
) -> dict[str, Path]:
    """Parallel harmful (wide CSV) and harmless (long JSONL, with answers) sets; every text has
    2 to 9 words, so a batch of prompts is padded."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)

    def text(words: list[str]) -> str:
        return " ".join(rng.choices(words + WORDS[:6], k=rng.randint(2, 9)))

    harmful = directory / "harmful.csv"
    with harmful.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", *langs])
        for index in range(count):
            writer.writerow([str(index), *[text(HARMFUL_WORDS) for _ in langs]])
    harmless = directory / "harmless.jsonl"
    with harmless.open("w", encoding="utf-8") as handle:
        for index in range(count):
            for lang in langs:
                record = {
                    "id": str(index),
                    "lang": lang,
                    "text": text(HARMLESS_WORDS),
                    "answer": text(HARMLESS_WORDS),
                }
                handle.write(json.dumps(record) + "\n")
    return {"harmful": harmful, "harmless": harmless}


@pytest.fixture(scope="session")
def organism() -> Any:
    """The model organism of seed 0, built once under the swe cache and reused (slow tests)."""
    from swe_cli.organism import cached_organism

    return cached_organism(0)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """family -> path of a tiny sharded float32 checkpoint of that family (built once)."""
    root = tmp_path_factory.mktemp("checkpoints")
    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = make_tiny_checkpoint(root / family, family)
        return built[family]

    return get


@pytest.fixture(scope="session")
def tiny_llama(tiny_checkpoint: Callable[[str], Path]) -> Path:
    return tiny_checkpoint("llama")


@pytest.fixture(scope="session")
def prompt_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_varied_prompts(tmp_path_factory.mktemp("prompts"))


def probe_workspace(
    workspace_dir: Path,
    model_dir: Path,
    prompt_files: dict[str, Path],
    progress: Callable[[str, int, int], None] | None = None,
    shared: object = None,
    **config: object,
) -> object:
    """run_probe on the fixture prompt sets (all layers, en + es, sw unless overridden)."""
    from swe_cli.io.checkpoint import resolve_model
    from swe_cli.prompts import load_prompt_set
    from swe_cli.stages.probe import ProbeConfig, run_probe
    from swe_cli.workspace import Workspace

    harmful = load_prompt_set(prompt_files["harmful"], "harmful", list(LANGS))
    harmless = load_prompt_set(prompt_files["harmless"], "harmless", list(LANGS))
    options: dict[str, object] = {"langs": TARGETS, "batch_size": 4, **config}
    return run_probe(
        Workspace(workspace_dir),
        resolve_model(str(model_dir)),
        harmful,
        harmless,
        None,
        ProbeConfig(**options),  # type: ignore[arg-type]
        progress,
        shared=shared,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="session")
def probed_workspace(
    tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path, prompt_files: dict[str, Path]
) -> Path:
    """A workspace probed on the tiny llama (every layer, moments of every layer). Read-only:
    tests that change a workspace work on `workspace_copy`."""
    root = tmp_path_factory.mktemp("probed") / "ws"
    probe_workspace(root, tiny_llama, prompt_files)
    return root


@pytest.fixture()
def workspace_copy(probed_workspace: Path, tmp_path: Path) -> Path:
    """A private copy of the probed workspace."""
    target = tmp_path / "ws"
    shutil.copytree(probed_workspace, target)
    return target


@pytest.fixture
def one_thread() -> Iterator[None]:
    """On a shared 2-core machine a second busy core makes two-thread matmuls of a small model
    15-30x slower (measured: greedy 12 tokens 0.55 s with one thread, 16 s with two)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
