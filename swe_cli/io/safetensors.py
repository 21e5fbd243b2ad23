"""The safetensors format at the byte level: parse and validate a header (as strictly as the
safetensors library), and read or write single rows of a tensor at their byte offsets, one pread
or pwrite per run of consecutive rows. Memory is O(rows read), never O(tensor)."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swe_cli.errors import CheckpointError

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


# -- rows -----------------------------------------------------------------------------------------
READ_CHUNK = 16 * 1024 * 1024  # bytes read at once while hashing a long run of rows


def runs(rows: Sequence[int]) -> Iterator[tuple[int, int, int]]:
    """(position in rows, first row, length) of the runs of consecutive rows, in the given order."""
    position = 0
    while position < len(rows):
        length = 1
        while position + length < len(rows) and rows[position + length] == rows[position] + length:
            length += 1
        yield position, rows[position], length
        position += length


def _check_run(entry: TensorEntry, first: int, length: int) -> None:
    if first < 0 or first + length > entry.shape[0]:
        raise CheckpointError(
            f"{entry.file}: row {first} out of range for '{entry.name}' {list(entry.shape)}",
            hint="the edit or workspace does not match this checkpoint",
        )


def _pread(descriptor: int, entry: TensorEntry, count: int, offset: int) -> bytes:
    chunk = os.pread(descriptor, count, offset)
    if len(chunk) != count:
        raise CheckpointError(
            f"{entry.file}: truncated inside tensor '{entry.name}'",
            hint="the shard is truncated; re-download the checkpoint",
        )
    return chunk


def read_row_bytes(descriptor: int, entry: TensorEntry, rows: Sequence[int]) -> bytes:
    """Raw bytes of the rows of `entry`, in the given order, from an open file."""
    size = entry.row_bytes
    parts = []
    for _, first, length in runs(rows):
        _check_run(entry, first, length)
        parts.append(_pread(descriptor, entry, length * size, entry.begin + first * size))
    return b"".join(parts)


def write_row_bytes(descriptor: int, entry: TensorEntry, rows: Sequence[int], data: bytes) -> None:
    """Write `data` (the rows' raw bytes, in the given order) over the rows of `entry`."""
    size = entry.row_bytes
    view = memoryview(data)
    for position, first, length in runs(rows):
        _check_run(entry, first, length)
        chunk = view[position * size : (position + length) * size]
        offset = entry.begin + first * size
        while chunk:
            written = os.pwrite(descriptor, chunk, offset)
            chunk, offset = chunk[written:], offset + written


def rows_sha256(entry: TensorEntry, rows: Sequence[int]) -> str:
    """sha256 of the rows' raw bytes in the given order (what an edit records of its base rows),
    read in bounded chunks."""
    digest = hashlib.sha256()
    size = entry.row_bytes
    step = max(1, READ_CHUNK // max(1, size))
    with entry.file.open("rb") as handle:
        for _, first, length in runs(list(rows)):
            _check_run(entry, first, length)
            for start in range(first, first + length, step):
                count = min(step, first + length - start)
                digest.update(
                    _pread(handle.fileno(), entry, count * size, entry.begin + start * size)
                )
    return digest.hexdigest()


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
