"""The edit artifact: per edited checkpoint tensor, the row indices, optional column indices,
float32 deltas and the sha256 of the original rows' bytes (so an edit refuses a different base).

On disk it is one safetensors file (`edit.safetensors`) whose metadata carries the format version,
the base model identity and each tensor's shape and dtype; it is kilobytes to megabytes."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swe_cli.errors import EditError
from swe_cli.workspace import load_tensors, save_tensors

EDIT_FILE = "edit.safetensors"
EDIT_FORMAT = "swe-edit/1"


@dataclass(frozen=True)
class TensorEdit:
    """New value of rows `rows` (and columns `cols`, or whole rows) = base + delta, in fp32."""

    name: str  # checkpoint tensor name, e.g. model.layers.3.mlp.gate_proj.weight
    rows: Any  # torch.int64 [k]
    delta: Any  # torch.float32 [k, len(cols) or number of columns]
    base_sha256: str  # sha256 of the original rows' raw bytes, rows in the order of `rows`
    shape: tuple[int, ...]  # full tensor shape in the base checkpoint
    dtype: str  # safetensors dtype string of the base tensor (BF16, F16, F32)
    cols: Any | None = None  # torch.int64 [c] or None for full rows

    def full_delta(self) -> Any:
        """The delta expanded to full rows [k, shape[1]]."""
        import torch

        if self.cols is None:
            return self.delta
        full = torch.zeros(len(self.rows), self.shape[1], dtype=torch.float32)
        full[:, self.cols] = self.delta
        return full


@dataclass(frozen=True)
class Edit:
    tensors: tuple[TensorEdit, ...]
    metadata: dict[str, str] = field(
        default_factory=dict
    )  # base model id, revision, fingerprint, method

    @property
    def num_rows(self) -> int:
        return sum(len(t.rows) for t in self.tensors)


def save_edit(edit: Edit, directory: Path) -> Path:
    """Write edit.safetensors atomically into `directory`; returns its path."""
    import torch

    tensors: dict[str, Any] = {}
    layout: dict[str, Any] = {}
    for item in edit.tensors:
        tensors[f"{item.name}::rows"] = item.rows.to(torch.int64)
        tensors[f"{item.name}::delta"] = item.delta.to(torch.float32)
        if item.cols is not None:
            tensors[f"{item.name}::cols"] = item.cols.to(torch.int64)
        layout[item.name] = {
            "shape": list(item.shape),
            "dtype": item.dtype,
            "base_sha256": item.base_sha256,
        }
    metadata = {
        **edit.metadata,
        "format": EDIT_FORMAT,
        "tensors": json.dumps(layout, sort_keys=True),
    }
    path = Path(directory) / EDIT_FILE
    save_tensors(path, tensors, metadata)
    return path


def load_edit(directory_or_file: Path) -> Edit:
    """Read an edit from a folder (edit.safetensors inside) or from the file itself."""
    path = Path(directory_or_file)
    if path.is_dir():
        path = path / EDIT_FILE
    tensors, metadata = load_tensors(path)
    if metadata.get("format") != EDIT_FORMAT:
        raise EditError(
            f"{path}: not a swe edit (format {metadata.get('format')!r})",
            hint="pass the edit folder written by `swe solve` or `swe apply --edit-only`",
        )
    layout = json.loads(metadata.pop("tensors"))
    items = []
    for name in sorted(layout):
        spec = layout[name]
        try:
            items.append(
                TensorEdit(
                    name=name,
                    rows=tensors[f"{name}::rows"],
                    delta=tensors[f"{name}::delta"],
                    cols=tensors.get(f"{name}::cols"),
                    base_sha256=str(spec["base_sha256"]),
                    shape=tuple(int(s) for s in spec["shape"]),
                    dtype=str(spec["dtype"]),
                )
            )
        except KeyError as missing:
            raise EditError(
                f"{path}: entry {missing} missing for '{name}'", hint="the edit is damaged"
            ) from None
    edit = Edit(tuple(items), {k: v for k, v in metadata.items() if k != "format"})
    validate_edit(edit, path)
    return edit


def validate_edit(edit: Edit, source: Path | str) -> None:
    for item in edit.tensors:
        width = item.shape[1] if item.cols is None else len(item.cols)
        if item.delta.shape != (len(item.rows), width):
            raise EditError(f"{source}: delta of '{item.name}' has shape {list(item.delta.shape)}")
        if len(item.rows) and (int(item.rows.min()) < 0 or int(item.rows.max()) >= item.shape[0]):
            raise EditError(f"{source}: row index out of range for '{item.name}'")
        if len(set(item.rows.tolist())) != len(item.rows):
            raise EditError(f"{source}: duplicate row indices for '{item.name}'")


def edit_sha256(edit: Edit) -> str:
    """Content hash of an edit (names, indices, deltas, base hashes); stable across writes."""
    digest = hashlib.sha256()
    for item in sorted(edit.tensors, key=lambda t: t.name):
        digest.update(item.name.encode())
        digest.update(item.base_sha256.encode())
        digest.update(item.rows.contiguous().numpy().tobytes())
        if item.cols is not None:
            digest.update(item.cols.contiguous().numpy().tobytes())
        digest.update(item.delta.contiguous().numpy().tobytes())
    return digest.hexdigest()
