"""Build, save and cache the model organism.

``build_organism`` trains the organism, saves it as a Hugging Face checkpoint (sharded
safetensors with an index, generation config, tokenizer with chat template) under
``<out>/model/``, exports the held-out prompt sets under ``<out>/prompts/``, measures the gap and
writes ``<out>/organism.json``. The build happens in a temporary sibling folder that is renamed
into place at the end, so a reader never sees half an organism. ``cached_organism`` builds once
per seed and format version and reuses the result.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from swe_cli.organism.export import PromptFiles, write_prompt_sets
from swe_cli.organism.world import (
    HRL,
    LANGUAGES,
    LRLS,
    REFUSAL,
    RESOURCE_LEVELS,
    RESOURCE_WEIGHTS,
    TrainingData,
    languages,
    vocabulary,
)

# Bump whenever the world, the trainer or the file layout changes: it names the cache folder.
FORMAT_VERSION = 2
MAX_SHARD_SIZE = "1MB"  # the organism is ~3 MB in float32: several shards, as real checkpoints


@dataclass(frozen=True)
class OrganismInfo:
    """Where a built organism lives and how it measured."""

    path: Path
    seed: int
    hrl: str
    lrls: tuple[str, ...]
    harmful: Path
    harmless: Path
    general: Path
    refusal_patterns: Path
    metrics: dict[str, float]

    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    @property
    def prompts_dir(self) -> Path:
        return self.path / "prompts"


def build_organism(
    out_dir: Path,
    seed: int = 0,
    *,
    steps: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    report: Callable[[str, int, int], None] | None = None,
) -> OrganismInfo:
    """Train, save and measure an organism in ``out_dir`` (replaced if it exists). ``progress``
    gets (step, steps) of training; ``report`` gets (label, done, total) of every build step."""

    def step(label: str, done: int, total: int = 1) -> None:
        if report is not None:
            report(f"organism: {label}", done, total)

    if report is not None and progress is None:
        progress = lambda done, total: step("training", done, total)  # noqa: E731
    from swe_cli.organism.gap import measure_gap
    from swe_cli.organism.tokenizer import build_tokenizer
    from swe_cli.organism.train import TrainConfig, deterministic_torch, train

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    config = TrainConfig() if steps is None else replace(TrainConfig(), steps=steps)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out_dir.name}-", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the organism is a shared cache entry
    try:
        model_dir = tmp / "model"
        tokenizer = build_tokenizer(vocabulary())
        data = TrainingData()
        wall, cpu = time.perf_counter(), time.process_time()
        model = train(data, tokenizer.get_vocab(), seed=seed, config=config, progress=progress)
        train_seconds = {
            "wall": time.perf_counter() - wall,
            "cpu": time.process_time() - cpu,
        }
        model.generation_config.update(
            do_sample=False,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            max_new_tokens=16,
        )
        step("saving", 0)
        model.save_pretrained(model_dir, max_shard_size=MAX_SHARD_SIZE)
        tokenizer.save_pretrained(model_dir)
        _portable_tokenizer_class(model_dir)
        write_prompt_sets(tmp / "prompts")
        step("saving", 1)
        step("measuring the safety gap", 0)
        with deterministic_torch(config.threads):
            metrics = measure_gap(model_dir, tmp / "prompts")
        step("measuring the safety gap", 1)
        manifest = _manifest(seed, config.as_dict(), train_seconds, metrics, data)
        (tmp / "organism.json").write_text(json.dumps(manifest, indent=2) + "\n")
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _info(out_dir, seed, metrics)


def cached_organism(
    seed: int = 0,
    cache_dir: Path | None = None,
    report: Callable[[str, int, int], None] | None = None,
) -> OrganismInfo:
    """The organism of ``seed``, built on first use under the cache and reused afterwards.

    Default location: ``$SWE_CACHE/organism/v<FORMAT_VERSION>-<source digest>-seed<seed>``, with ``SWE_CACHE``
    defaulting to ``~/.cache/swe``. With ``cache_dir`` the folder is
    ``<cache_dir>/v<FORMAT_VERSION>-<source digest>-seed<seed>``. The digest covers the source of
    the world, tokenizer, export and trainer, so a changed organism never reuses a stale build.
    ``report`` gets (label, done, total) of each build step (see build_organism).
    """
    if cache_dir is None:
        root = Path(os.environ.get("SWE_CACHE", Path.home() / ".cache" / "swe"))
        cache_dir = root / "organism"
    path = Path(cache_dir) / f"v{FORMAT_VERSION}-{source_digest()}-seed{seed}"
    if not (path / "organism.json").is_file():
        try:
            build_organism(path, seed, report=report)
        except OSError:
            # Another process finished the same build first: its result is as good as ours.
            if not (path / "organism.json").is_file():
                raise
    return load_organism(path)


def source_digest() -> str:
    """Short sha256 of the modules that determine the organism's data and weights."""
    import hashlib

    digest = hashlib.sha256()
    for name in ("world.py", "tokenizer.py", "export.py", "train.py"):
        digest.update((Path(__file__).parent / name).read_bytes())
    return digest.hexdigest()[:10]


def load_organism(path: Path) -> OrganismInfo:
    """Read the manifest of a built organism."""
    manifest = json.loads((Path(path) / "organism.json").read_text())
    return _info(Path(path), manifest["seed"], manifest["metrics"])


def _info(path: Path, seed: int, metrics: dict[str, float]) -> OrganismInfo:
    files = PromptFiles.under(path / "prompts")
    return OrganismInfo(
        path=path,
        seed=seed,
        hrl=HRL,
        lrls=LRLS,
        harmful=files.harmful,
        harmless=files.harmless,
        general=files.general,
        refusal_patterns=files.refusal_patterns,
        metrics=dict(metrics),
    )


def _portable_tokenizer_class(model_dir: Path) -> None:
    """Name the tokenizer class every transformers version knows (5.x writes its own alias)."""
    path = model_dir / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(config, indent=2) + "\n")


def _replace_dir(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst`` atomically; an existing ``dst`` is moved aside and deleted."""
    if dst.exists():
        old = Path(tempfile.mkdtemp(prefix=f".old-{dst.name}-", dir=dst.parent))
        os.replace(dst, old / dst.name)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def _manifest(
    seed: int,
    config: dict[str, float | int],
    train_seconds: dict[str, float],
    metrics: dict[str, float],
    data: TrainingData,
) -> dict[str, object]:
    from swe_cli.organism.world import split_requests

    split = split_requests()
    langs = languages()
    return {
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "hrl": HRL,
        "lrls": list(LRLS),
        "languages": {
            code: {
                "resource_level": RESOURCE_LEVELS[code],
                "resource_weight": RESOURCE_WEIGHTS[code],
                "drops_articles": langs[code].drop_articles,
                "reversed_word_order": langs[code].reverse,
            }
            for code in LANGUAGES
        },
        "vocabulary_size": len(vocabulary()),
        "train": {**config, "seconds": train_seconds},
        "task_weights": {
            f"{task}/{lang}": w for (task, lang, _), w in zip(data.tasks, data.weights, strict=True)
        },
        "refusal": REFUSAL,
        "requests": {
            "train_harmful": len(split.train_harmful),
            "train_harmless": len(split.train_harmless),
            "heldout_harmful": len(split.heldout_harmful),
            "heldout_harmless": len(split.heldout_harmless),
            "heldout_kinds": {
                "harmful": dict(Counter(r.kind for r in split.heldout_harmful)),
                "harmless": dict(Counter(r.kind for r in split.heldout_harmless)),
            },
            "heldout": "exported harmful and harmless prompts are request combinations "
            "(opener, concept words, qualifier) never seen in training in any language or task",
        },
        "metrics": metrics,
        "layout": {"model": "model/", "prompts": "prompts/"},
    }
