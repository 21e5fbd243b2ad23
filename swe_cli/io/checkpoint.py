"""Read-only access to a Hugging Face checkpoint on disk: locate it, parse safetensors headers,
read single rows at their byte offsets, and fingerprint it. Nothing here loads a whole model."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from swe_cli.errors import CheckpointError, SweError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
MAX_HEADER_BYTES = 100 * 1024 * 1024

DTYPE_SIZES: dict[str, int] = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a safetensors file; begin/end are absolute byte offsets in the file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int
    file: Path

    @property
    def row_bytes(self) -> int:
        columns = 1
        for size in self.shape[1:]:
            columns *= size
        return columns * DTYPE_SIZES[self.dtype]


@dataclass(frozen=True)
class SafetensorsHeader:
    path: Path
    header_size: int
    tensors: dict[str, TensorEntry]
    metadata: dict[str, str]

    @property
    def data_start(self) -> int:
        return 8 + self.header_size


def read_header(path: Path) -> SafetensorsHeader:
    """Parse and validate a safetensors header; every defect is a CheckpointError naming the file."""
    try:
        file_size = path.stat().st_size
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise CheckpointError(
                    f"{path}: file too short for a safetensors header",
                    hint="the shard is truncated; re-download the checkpoint",
                )
            (header_size,) = struct.unpack("<Q", prefix)
            if header_size > MAX_HEADER_BYTES or 8 + header_size > file_size:
                raise CheckpointError(
                    f"{path}: header length {header_size} is larger than the file ({file_size} bytes)",
                    hint="the shard is truncated or corrupted; re-download the checkpoint",
                )
            raw = handle.read(header_size)
    except OSError as error:
        raise CheckpointError(
            f"{path}: cannot read ({error.strerror})", hint="check the path"
        ) from None
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("not an object")
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        reason = "nested too deeply" if isinstance(error, RecursionError) else str(error)
        raise CheckpointError(
            f"{path}: safetensors header is not valid JSON ({reason})",
            hint="the shard is corrupted; re-download the checkpoint",
        ) from None
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(
            f"{path}: safetensors __metadata__ is not a map of strings",
            hint="the file is corrupted or was not written by a safetensors library",
        )
    data_start = 8 + header_size
    tensors = {
        name: _entry(path, name, spec, data_start, file_size) for name, spec in header.items()
    }
    _check_contiguous(path, tensors, data_start, file_size - data_start)
    return SafetensorsHeader(path, header_size, tensors, dict(metadata))


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _entry(path: Path, name: str, spec: Any, data_start: int, file_size: int) -> TensorEntry:
    """One header entry, with the types the safetensors library requires (no coercion)."""
    valid = (
        isinstance(spec, dict)
        and isinstance(spec.get("dtype"), str)
        and isinstance(spec.get("shape"), list)
        and all(_is_count(size) for size in spec["shape"])
        and isinstance(spec.get("data_offsets"), list)
        and len(spec["data_offsets"]) == 2
        and all(_is_count(offset) for offset in spec["data_offsets"])
    )
    if not valid:
        raise CheckpointError(
            f"{path}: header entry for '{name}' is malformed",
            hint="the shard is corrupted; re-download the checkpoint",
        )
    dtype, shape = spec["dtype"], tuple(spec["shape"])
    begin, end = spec["data_offsets"]
    if dtype not in DTYPE_SIZES:
        raise CheckpointError(f"{path}: tensor '{name}' has unsupported dtype {dtype}")
    expected = DTYPE_SIZES[dtype]
    for size in shape:
        expected *= size
    if end < begin or end - begin != expected or data_start + end > file_size:
        raise CheckpointError(
            f"{path}: offsets of tensor '{name}' ({begin}..{end}) do not fit its shape or the file",
            hint="the shard is truncated or corrupted; re-download the checkpoint",
        )
    return TensorEntry(name, dtype, shape, data_start + begin, data_start + end, path)


def _check_contiguous(
    path: Path, tensors: dict[str, TensorEntry], data_start: int, data_size: int
) -> None:
    """As the safetensors library requires: tensors tile the data section exactly, in offset
    order, with no overlap, no gap and nothing after the last one."""
    cursor, previous = 0, None
    for entry in sorted(tensors.values(), key=lambda e: (e.begin, e.end)):
        begin = entry.begin - data_start
        if begin != cursor:
            what = f"overlaps '{previous}'" if begin < cursor else "leaves a gap before it"
            raise CheckpointError(
                f"{path}: offsets of tensor '{entry.name}' ({begin}..{entry.end - data_start}) "
                f"do not fit the file: it {what}",
                hint="the shard is corrupted or hostile; re-download the checkpoint",
            )
        cursor, previous = entry.end - data_start, entry.name
    if cursor != data_size:
        raise CheckpointError(
            f"{path}: the tensors end at byte {cursor} of a {data_size}-byte data section "
            "(truncated, or extra bytes after the last tensor)",
            hint="the shard is truncated or corrupted; re-download the checkpoint",
        )


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


def link_roots(folder: Path) -> list[Path]:
    """Where links inside `folder` may point: the folder itself and, for a Hugging Face cache
    snapshot (models--org--name/snapshots/<commit>), the repo's blobs folder."""
    roots = [folder.resolve()]
    if folder.parent.name == "snapshots":
        roots.append((folder.parent.parent / "blobs").resolve())
    return roots


def inside(path: Path, roots: Sequence[Path]) -> bool:
    """True when `path`, with every link resolved, lies inside one of `roots`."""
    target = path.resolve()
    return any(target == root or root in target.parents for root in roots)


def check_inside(path: Path, folder: Path, error: type[SweError] = CheckpointError) -> None:
    """Refuse a file that is (or sits under) a link leaving `folder`: it would be read, copied
    into an output and pushed to the Hub as if it were part of the model."""
    if not inside(path, link_roots(folder)):
        raise error(
            f"{path}: symbolic link to {path.resolve()}, outside {folder}; refusing to read it",
            hint="replace the link with the file itself, or remove it",
        )


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


def read_row_bytes(entry: TensorEntry, rows: Sequence[int]) -> list[bytes]:
    """Raw bytes of the given rows, in the given order; memory is O(rows)."""
    out: list[bytes] = []
    row_bytes = entry.row_bytes
    path = entry.file
    with path.open("rb") as handle:
        for row in rows:
            if not 0 <= row < entry.shape[0]:
                raise CheckpointError(
                    f"{path}: row {row} out of range for '{entry.name}' {list(entry.shape)}"
                )
            handle.seek(entry.begin + row * row_bytes)
            chunk = handle.read(row_bytes)
            if len(chunk) != row_bytes:
                raise CheckpointError(f"{path}: truncated inside tensor '{entry.name}'")
            out.append(chunk)
    return out


def rows_sha256(chunks: Sequence[bytes]) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def read_rows(model_dir: Path, tensor_name: str, rows: Sequence[int]) -> tuple[Any, str, str]:
    """(rows as a float32 torch tensor [k, cols], checkpoint dtype, sha256 of the raw row bytes)."""
    entry = locate(model_dir, tensor_name)
    chunks = read_row_bytes(entry, rows)
    return (
        bytes_to_float32(b"".join(chunks), entry.dtype, len(rows)),
        entry.dtype,
        rows_sha256(chunks),
    )


def bytes_to_float32(data: bytes, dtype: str, num_rows: int) -> Any:
    import torch

    torch_dtype = torch_dtype_of(dtype)
    flat = torch.frombuffer(bytearray(data), dtype=torch_dtype) if data else torch.empty(0)
    return flat.reshape(num_rows, -1).to(torch.float32)


def torch_dtype_of(dtype: str) -> Any:
    import torch

    table = {
        "F64": torch.float64,
        "F32": torch.float32,
        "F16": torch.float16,
        "BF16": torch.bfloat16,
    }
    if dtype not in table:
        raise CheckpointError(f"dtype {dtype} cannot be edited", hint="supported: F32, F16, BF16")
    return table[dtype]


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


def fsync_directory(path: Path) -> None:
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
