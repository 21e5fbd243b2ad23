"""The edit artifact: per edited checkpoint tensor, the row indices, optional column indices,
float32 deltas and the sha256 of the original rows' bytes (so an edit refuses a different base).

On disk it is one safetensors file (`edit.safetensors`) whose metadata carries the format version,
the base model identity and each tensor's shape and dtype; it is kilobytes to megabytes."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from swe_cli.errors import CheckpointError, EditError, WorkspaceError
from swe_cli.workspace import Workspace, load_tensors, save_tensors

if TYPE_CHECKING:
    import numpy as np

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

    def block(self, start: int, stop: int) -> TensorEdit:
        """Rows start..stop of this edit (in edit order); the block carries no base hash."""
        return replace(
            self, rows=self.rows[start:stop], delta=self.delta[start:stop], base_sha256=""
        )


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

    validate_edit(edit, Path(directory) / EDIT_FILE)  # never write a nan delta
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


def load_edit(directory_or_file: Path, framework: str = "pt") -> Edit:
    """Read an edit from a folder (edit.safetensors inside) or from the file itself.

    framework "pt" gives torch tensors; "np" numpy arrays, without importing torch (apply and
    verify on the CPU use this)."""
    path = Path(directory_or_file)
    if path.is_dir():
        path = path / EDIT_FILE
    tensors, metadata = load_tensors(path) if framework == "pt" else _load_numpy(path)
    if metadata.get("format") != EDIT_FORMAT:
        raise EditError(
            f"{path}: not a swe edit (format {metadata.get('format')!r})",
            hint="pass the edit folder written by `swe solve` or `swe apply --edit-only`",
        )
    layout = parse_layout(metadata.pop("tensors", None), path)
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
                    shape=tuple(spec["shape"]),
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


def parse_layout(text: str | None, source: Path | str) -> dict[str, dict[str, Any]]:
    """The `tensors` metadata of an edit file: name -> {shape: [rows, cols], dtype, base_sha256}."""
    try:
        layout = json.loads(text) if isinstance(text, str) else None
    except (ValueError, RecursionError):
        layout = None
    valid = isinstance(layout, dict) and all(
        isinstance(spec, dict)
        and isinstance(spec.get("shape"), list)
        and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in spec["shape"])
        for spec in layout.values()
    )
    if not valid:
        raise EditError(
            f"{source}: the edit's 'tensors' metadata is not a valid JSON layout",
            hint="the edit file is damaged; re-run `swe solve` or re-export it",
        )
    return layout


def validate_edit(edit: Edit, source: Path | str) -> None:
    """Every index in range, unique and one-dimensional, every target a matrix: numpy would
    otherwise wrap negative indices around and apply duplicates twice."""
    for item in edit.tensors:
        if len(item.shape) != 2:
            raise EditError(
                f"{source}: '{item.name}' has shape {list(item.shape)}; only 2-D weights are edited",
                hint="the edit file is damaged or was not written by swe",
            )
        _check_indices(source, item.name, "row", item.rows, item.shape[0])
        if item.cols is not None:
            _check_indices(source, item.name, "column", item.cols, item.shape[1])
        width = item.shape[1] if item.cols is None else len(item.cols)
        if tuple(item.delta.shape) != (len(item.rows), width):
            raise EditError(f"{source}: delta of '{item.name}' has shape {list(item.delta.shape)}")
        import numpy

        bad = int((~numpy.isfinite(as_numpy(item.delta))).sum())
        if bad:
            raise EditError(
                f"{source}: delta of '{item.name}' has {bad} non-finite entries (nan or inf)",
                hint="the edit is damaged, or the solve diverged: re-run `swe solve` (raise lam)",
            )


def _check_indices(source: Path | str, name: str, kind: str, values: Any, size: int) -> None:
    indices = as_numpy(values)
    problem = None
    if indices.ndim != 1 or indices.dtype.kind not in "iu":
        problem = f"{kind} indices of '{name}' are not a list of integers"
    elif len(indices) and (int(indices.min()) < 0 or int(indices.max()) >= size):
        problem = f"{kind} index out of range for '{name}' (0..{size - 1})"
    elif len(set(indices.tolist())) != len(indices):
        problem = f"duplicate {kind} indices for '{name}'"
    if problem:
        raise EditError(f"{source}: {problem}", hint="the edit file is damaged or hostile")


def edit_sha256(edit: Edit) -> str:
    """Content hash of an edit (names, indices, deltas, base hashes); stable across writes."""
    import numpy as np

    digest = hashlib.sha256()
    for item in sorted(edit.tensors, key=lambda t: t.name):
        digest.update(item.name.encode())
        digest.update(item.base_sha256.encode())
        digest.update(np.ascontiguousarray(as_numpy(item.rows), dtype=np.int64).tobytes())
        if item.cols is not None:
            digest.update(np.ascontiguousarray(as_numpy(item.cols), dtype=np.int64).tobytes())
        digest.update(np.ascontiguousarray(as_numpy(item.delta), dtype=np.float32).tobytes())
    return digest.hexdigest()


def _load_numpy(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as handle:
            metadata = handle.metadata() or {}
            return {key: handle.get_tensor(key) for key in handle.keys()}, metadata  # noqa: SIM118
    except FileNotFoundError:
        raise EditError(f"{path}: missing", hint="run `swe solve` or pass an edit folder") from None
    except Exception as error:  # noqa: BLE001 - any decoding failure means a damaged file
        raise EditError(
            f"{path}: unreadable or truncated ({type(error).__name__})",
            hint="the edit file is damaged; re-run `swe solve` or re-export it",
        ) from None


EDITABLE_DTYPES = {"F32": "<f4", "F16": "<f2", "BF16": "<u2"}  # safetensors -> raw numpy dtype


def patched_row_bytes(item: TensorEdit, base_bytes: bytes, device: str = "cpu") -> bytes:
    """Raw bytes of the edited rows (rows in the order of `item.rows`): base rows in fp32 plus the
    delta, cast to the tensor dtype with round-to-nearest-even. Columns outside `cols` keep their
    base bytes exactly. On "cpu" this is numpy (no torch import: apply and verify stay light);
    any other device computes with torch there; both give the same bytes.

    Raises EditError when the result is not finite where the base was (the delta overflows the
    dtype, or is itself NaN/inf)."""
    import numpy as np

    if item.dtype not in EDITABLE_DTYPES:
        raise EditError(
            f"'{item.name}' has dtype {item.dtype}, which cannot be edited",
            hint="supported: " + ", ".join(EDITABLE_DTYPES),
        )
    with np.errstate(over="ignore", invalid="ignore"):
        if device == "cpu":
            new, before, after = _patch_numpy(item, base_bytes)
        else:
            new, before, after = _patch_torch(item, base_bytes, device)
        overflow = np.isfinite(before) & ~np.isfinite(after)
    if overflow.any():
        raise EditError(
            f"edit of '{item.name}' is not finite in {item.dtype} at {int(overflow.sum())} entries",
            hint="the delta overflows the tensor dtype or holds NaN/inf; re-run `swe solve`",
        )
    return new


def as_numpy(values: Any) -> np.ndarray:
    """A numpy view of a torch tensor or array-like (edits may hold either)."""
    import numpy as np

    if hasattr(values, "detach"):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def _patch_numpy(item: TensorEdit, base_bytes: bytes) -> tuple[bytes, np.ndarray, np.ndarray]:
    """(new row bytes, edited entries before in fp32, edited entries after in fp32)."""
    import numpy as np

    storage = EDITABLE_DTYPES[item.dtype]

    def to_float32(raw: np.ndarray) -> np.ndarray:
        if item.dtype == "BF16":  # bf16 is the upper half of a float32
            return (raw.astype(np.uint32) << 16).view(np.float32)
        return raw.astype(np.float32)

    def from_float32(values: np.ndarray) -> np.ndarray:
        if item.dtype != "BF16":
            return values.astype(storage)
        # round to nearest even, as torch does; NaN -> 0xFFFF like torch's vectorised cast
        bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
        rounded = ((bits + (0x7FFF + ((bits >> 16) & 1))) >> 16).astype(np.uint16)
        return np.where(np.isnan(values), np.uint16(0xFFFF), rounded)

    raw = np.frombuffer(base_bytes, dtype=storage).reshape(len(item.rows), -1)
    delta = as_numpy(item.delta).astype(np.float32, copy=False)
    if item.cols is None:
        before = to_float32(raw)
        new = changed = from_float32(before + delta)
    else:
        cols = as_numpy(item.cols)
        before = to_float32(raw[:, cols])
        changed = from_float32(before + delta)
        new = raw.copy()
        new[:, cols] = changed
    return new.astype(storage, copy=False).tobytes(), before, to_float32(changed)


def _patch_torch(
    item: TensorEdit, base_bytes: bytes, device: str
) -> tuple[bytes, np.ndarray, np.ndarray]:
    import torch

    from swe_cli.io.safetensors import torch_dtype_of

    dtype = torch_dtype_of(item.dtype)
    count = len(item.rows)
    base = torch.frombuffer(bytearray(base_bytes), dtype=dtype).reshape(count, -1).to(device)
    delta = torch.as_tensor(item.delta).to(device=device, dtype=torch.float32)
    if item.cols is None:
        before = base.to(torch.float32)
        new = (before + delta).to(dtype)
        changed = new
    else:
        cols = torch.as_tensor(item.cols).to(device)
        before = base[:, cols].to(torch.float32)
        changed = (before + delta).to(dtype)
        new = base.clone()
        new[:, cols] = changed
    data = new.cpu().contiguous().view(torch.uint8).numpy().tobytes()
    return data, before.cpu().numpy(), changed.to(torch.float32).cpu().numpy()


def tensor_edit_from_base(
    model_dir: Path, name: str, rows: Any, delta: Any, cols: Any | None = None
) -> TensorEdit:
    """A TensorEdit of a checkpoint tensor, with the base rows' hash, shape and dtype read from it."""
    import torch

    from swe_cli.io.checkpoint import locate
    from swe_cli.io.safetensors import rows_sha256

    entry = locate(Path(model_dir), name)
    rows = torch.as_tensor(rows, dtype=torch.int64)
    return TensorEdit(
        name=name,
        rows=rows,
        delta=torch.as_tensor(delta, dtype=torch.float32),
        base_sha256=rows_sha256(entry, rows.tolist()),
        shape=entry.shape,
        dtype=entry.dtype,
        cols=None if cols is None else torch.as_tensor(cols, dtype=torch.int64),
    )


def edit_file_of(path: Path) -> Path:
    """The edit.safetensors of an edit folder, an output folder (swe_edit/), a workspace (edit/),
    or the file itself."""
    path = Path(path)
    for candidate in (
        path,
        path / EDIT_FILE,
        path / "swe_edit" / EDIT_FILE,
        path / "edit" / EDIT_FILE,
    ):
        if candidate.is_file():
            return candidate
    raise EditError(
        f"{path}: no {EDIT_FILE} here",
        hint="pass a folder written by `swe apply --edit-only`, a checkpoint written by "
        "`swe apply`, or a workspace's edit/ folder",
    )


def edit_layout(path: Path) -> dict[str, dict[str, Any]]:
    """tensor name -> {shape, dtype, base_sha256}, read from the edit file's header alone (cheap,
    no torch), so a caller can plan work before loading the deltas."""
    from swe_cli.io.safetensors import read_header

    file = edit_file_of(path)
    try:
        metadata = read_header(file).metadata
    except CheckpointError as error:
        raise EditError(error.message, hint="the edit file is damaged; re-export it") from None
    if metadata.get("format") != EDIT_FORMAT or "tensors" not in metadata:
        raise EditError(
            f"{file}: not a swe edit (format {metadata.get('format')!r})",
            hint="pass the edit folder written by `swe solve` or `swe apply --edit-only`",
        )
    return parse_layout(metadata["tensors"], file)


# -- the edit of a workspace ---------------------------------------------------------------
def solved_edit(workspace: Workspace) -> tuple[Path, dict[str, Any] | None]:
    """(edit.safetensors, edit.yaml) of a cleanly finished solve. The edit file must be the one
    the solve recorded: a solve killed after writing it and before recording it leaves another
    method's edit under the old record, which must never ship with the old label."""
    record = workspace.require_stage("solve")
    edit_file = workspace.edit_dir / EDIT_FILE
    if not edit_file.exists():
        raise WorkspaceError(
            f"{edit_file}: missing", hint=f"run `swe solve -w {workspace.root}` first"
        )
    edit_yaml = _read_yaml(workspace.edit_dir / "edit.yaml")
    recorded = [
        record.outputs.get("edit_sha256"),
        (edit_yaml or {}).get("edit_sha256"),
    ]
    actual = edit_sha256(load_edit(edit_file, framework="np"))
    if any(value and value != actual for value in recorded):
        raise WorkspaceError(
            f"{edit_file}: not the edit the last finished solve recorded (a solve was interrupted)",
            hint=f"re-run `swe solve -w {workspace.root}`",
        )
    return edit_file, edit_yaml


def workspace_edit(workspace: Workspace) -> Edit:
    """The edit computed in a workspace (for `swe verify OUT --base MODEL -w WS`), as numpy."""
    return load_edit(workspace.edit_dir / EDIT_FILE, framework="np")


def _read_yaml(path: Path) -> dict[str, Any] | None:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None
