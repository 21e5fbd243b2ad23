"""A Hugging Face checkpoint folder on disk, read-only: resolve a model argument to a folder,
classify its files, read its index and shard headers, locate a tensor, read rows of it, and
fingerprint it. Nothing here loads a whole model."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from swe_cli.errors import CheckpointError
from swe_cli.io.files import check_inside, inside, link_roots
from swe_cli.io.safetensors import (
    SafetensorsHeader,
    TensorEntry,
    bytes_to_float32,
    read_header,
    read_row_bytes,
)

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a checkpoint, from its index or the single-file layout."""
    index = model_dir / INDEX_NAME
    if index.exists():
        return sorted({model_dir / name for name in load_index(model_dir).values()})
    single = model_dir / SINGLE_NAME
    if single.exists():
        return [single]
    raise CheckpointError(
        f"{model_dir}: no {INDEX_NAME} or {SINGLE_NAME}",
        hint="swe needs a safetensors checkpoint (convert .bin checkpoints with transformers first)",
    )


def load_index(model_dir: Path) -> dict[str, str]:
    """tensor name -> shard file name, from model.safetensors.index.json. Every shard must be a
    relative path inside the model folder: an index is never a way to read files elsewhere."""
    path = model_dir / INDEX_NAME
    try:
        weight_map = json.loads(path.read_text(encoding="utf-8"))["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        raise CheckpointError(
            f"{path}: unreadable or has no weight_map", hint="re-download the checkpoint"
        ) from None
    for name, file in weight_map.items():
        relative = PurePosixPath(file) if isinstance(file, str) else None
        if relative is None or not file or relative.is_absolute() or ".." in relative.parts:
            raise CheckpointError(
                f"{path}: weight_map entry '{name}' points outside the model folder ({file!r})",
                hint="the index is damaged or hostile; re-download the checkpoint",
            )
    return {str(name): str(file) for name, file in weight_map.items()}


# Weights in formats other than this checkpoint's safetensors: carrying them into an edited copy
# would ship the unedited model beside the edited one, so layouts list them as skipped.
OTHER_WEIGHT_SUFFIXES = (
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".h5",
    ".msgpack",
    ".gguf",
    ".onnx",
    ".tflite",
    ".ot",
    ".npz",
    ".safetensors",
)
KEPT_HIDDEN = (".gitattributes",)


@dataclass(frozen=True)
class CheckpointLayout:
    """The files of a model folder, as relative POSIX paths, sorted."""

    root: Path
    weights: tuple[str, ...]  # the safetensors files the checkpoint loads from
    index: str | None  # model.safetensors.index.json, or None for a single-file checkpoint
    others: tuple[str, ...]  # config, tokenizer, chat template, generation config, licence, ...
    skipped: tuple[str, ...]  # hidden entries and weights in other formats (not part of a copy)


def checkpoint_layout(model_dir: Path) -> CheckpointLayout:
    """Classify every file under a model folder. Symlinked files count as files when they stay
    inside the folder (or point into the blobs of a Hub cache snapshot); any other link is an
    error, so nothing outside the model is ever copied into an output."""
    model_dir = Path(model_dir)
    weights = tuple(path.name for path in weight_files(model_dir))
    index = INDEX_NAME if (model_dir / INDEX_NAME).exists() else None
    others: list[str] = []
    skipped: list[str] = []
    for folder, directories, files in os.walk(model_dir):
        relative_folder = Path(folder).relative_to(model_dir)
        for directory in sorted(directories):
            if directory.startswith(".") or (Path(folder) / directory).is_symlink():
                skipped.append((relative_folder / directory).as_posix() + "/")
        directories[:] = sorted(
            d for d in directories if not d.startswith(".") and not (Path(folder) / d).is_symlink()
        )
        for name in sorted(files):
            relative = (relative_folder / name).as_posix()
            if relative in weights or relative == index:
                continue
            hidden = name.startswith(".") and name not in KEPT_HIDDEN
            if hidden or name.lower().endswith(OTHER_WEIGHT_SUFFIXES):
                skipped.append(relative)
            else:
                others.append(relative)
    roots = link_roots(model_dir)
    for relative in (*weights, *([index] if index else []), *others):
        if not inside(model_dir / relative, roots):
            check_inside(model_dir / relative, model_dir)
    return CheckpointLayout(
        model_dir, weights, index, tuple(sorted(others)), tuple(sorted(skipped))
    )


def tensor_index(model_dir: Path) -> dict[str, TensorEntry]:
    """Every tensor of the checkpoint with its absolute location, read from the shard headers."""
    entries: dict[str, TensorEntry] = {}
    for path in weight_files(model_dir):
        entries.update(read_header(path).tensors)
    return entries


def tensor_files(layout: CheckpointLayout, headers: dict[str, SafetensorsHeader]) -> dict[str, str]:
    """tensor name -> shard file, from the headers; the index must agree with them."""
    where: dict[str, str] = {}
    for file, header in headers.items():
        for name in header.tensors:
            if name in where:
                raise CheckpointError(
                    f"{layout.root}: tensor '{name}' is stored in both {where[name]} and {file}",
                    hint="the checkpoint is inconsistent; re-download it",
                )
            where[name] = file
    if layout.index:
        index = load_index(layout.root)
        wrong = sorted(n for n in set(index) | set(where) if index.get(n) != where.get(n))
        if wrong:
            raise CheckpointError(
                f"{layout.root / layout.index}: tensor '{wrong[0]}' is indexed in "
                f"{index.get(wrong[0])} but stored in {where.get(wrong[0])}",
                hint="the index does not match the shards; re-download the checkpoint",
            )
    return where


def locate(model_dir: Path, tensor_name: str) -> TensorEntry:
    """The header entry (with its shard file) holding one tensor."""
    index = model_dir / INDEX_NAME
    if index.exists():
        file = load_index(model_dir).get(tensor_name)
        candidates = [model_dir / file] if file else []
    else:
        candidates = weight_files(model_dir)
    for path in candidates:
        entry = read_header(path).tensors.get(tensor_name)
        if entry is not None:
            return entry
    raise CheckpointError(
        f"{model_dir}: tensor '{tensor_name}' not found in the checkpoint",
        hint="the model does not match the workspace or edit",
    )


def read_rows(model_dir: Path, tensor_name: str, rows: Sequence[int]) -> tuple[Any, str, str]:
    """(rows as a float32 torch tensor [k, cols], checkpoint dtype, sha256 of the raw row bytes)."""
    entry = locate(model_dir, tensor_name)
    with entry.file.open("rb") as handle:
        data = read_row_bytes(handle.fileno(), entry, rows)
    return (
        bytes_to_float32(data, entry.dtype, len(rows)),
        entry.dtype,
        hashlib.sha256(data).hexdigest(),
    )


def load_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise CheckpointError(
            f"{path}: missing or not valid JSON", hint="pass a Hugging Face model folder or Hub id"
        ) from None


FINGERPRINT_SAMPLE_BYTES = 4096


def fingerprint(model_dir: Path) -> str:
    """sha256 over the canonical config, the weight map (names, dtypes, shapes) and the first
    4 KiB of every tensor's data: cheap (kilobytes read per tensor), and different for another
    architecture and for another model of the same architecture (a fine-tune, another seed)."""
    digest = hashlib.sha256()
    config = load_config(model_dir)
    for volatile in ("_name_or_path", "transformers_version"):
        config.pop(volatile, None)
    digest.update(json.dumps(config, sort_keys=True).encode())
    entries = sorted(tensor_index(model_dir).items())
    handles: dict[Path, Any] = {}
    try:
        for name, entry in entries:
            digest.update(f"{name}|{entry.dtype}|{list(entry.shape)}\n".encode())
            handle = handles.get(entry.file) or handles.setdefault(
                entry.file, entry.file.open("rb")
            )
            handle.seek(entry.begin)
            digest.update(handle.read(min(FINGERPRINT_SAMPLE_BYTES, entry.end - entry.begin)))
    except OSError as error:
        raise CheckpointError(f"{model_dir}: cannot read weights ({error.strerror})") from None
    finally:
        for handle in handles.values():
            handle.close()
    return digest.hexdigest()


def check_model_folder(model_dir: Path) -> None:
    """What transformers would read from a model folder stays inside it: the index names shards
    in the folder, and no file (or indexed shard) is a link leaving it."""
    if (model_dir / INDEX_NAME).exists():
        for file in sorted(set(load_index(model_dir).values())):
            check_inside(model_dir / file, model_dir)
    roots = link_roots(model_dir)
    for folder, directories, files in os.walk(model_dir):
        directories[:] = [d for d in directories if not d.startswith(".")]
        for name in files:
            path = Path(folder) / name
            if path.is_symlink() and not inside(path, roots):
                check_inside(path, model_dir)


@dataclass(frozen=True)
class ResolvedModel:
    """A model argument resolved to a local folder (a local path, or a Hub snapshot)."""

    model_id: str
    path: Path
    revision: str | None
    commit: str | None


HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken", "*.md"]


def resolve_model(model: str, revision: str | None = None) -> ResolvedModel:
    """A local folder is used as is; anything else is a Hub repo id fetched with huggingface_hub
    (token from HF_TOKEN or the usual login; cache from HF_HOME)."""
    local = Path(model).expanduser()
    if local.exists():
        if not (local / "config.json").exists():
            raise CheckpointError(
                f"{local}: no config.json", hint="pass a Hugging Face model folder or a Hub id"
            )
        check_model_folder(local)
        return ResolvedModel(str(model), local.resolve(), revision, None)
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise CheckpointError(f"{model}: no such folder", hint="check the path")
    try:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(model, revision=revision, allow_patterns=HUB_PATTERNS))
    except Exception as error:  # noqa: BLE001 - every hub failure becomes one user error
        raise CheckpointError(
            f"cannot fetch '{model}' from the Hugging Face Hub ({type(error).__name__})",
            hint="check the model id, network and HF_TOKEN, or pass a local folder",
        ) from None
    check_model_folder(path)
    return ResolvedModel(
        model, path, revision, path.name if path.parent.name == "snapshots" else None
    )
