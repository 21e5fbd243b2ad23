"""The edit as LoRA factors: every edited weight's delta D (zero outside the edited rows and
columns) factored exactly as D = B A by a thin SVD of its small delta block in float64, truncated
at the numerical rank, and the reconstruction error of base + B A in the base dtype against the
rows `swe apply` writes. stages/export.py writes the factors as a PEFT adapter."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from swe_cli.edit import EDITABLE_DTYPES, Edit, TensorEdit, as_numpy, patched_row_bytes
from swe_cli.errors import EditError, LoraError
from swe_cli.io.checkpoint import locate
from swe_cli.io.safetensors import TensorEntry, bytes_to_float32, read_row_bytes

DEFAULT_MAX_RANK = 64


# Slack on top of one unit in the last place of the base dtype: B A is a float32 product of r
# terms, so it can differ from the float32 delta by a few float32 ulps of the delta's scale.
PRODUCT_ULPS = 16


@dataclass(frozen=True)
class LoraFactor:
    """One edited weight as LoRA factors: delta = B @ A (B zero outside `rows`, A outside `cols`)."""

    tensor: str  # checkpoint tensor name, e.g. model.layers.3.mlp.down_proj.weight
    module: str  # module path, e.g. model.layers.3.mlp.down_proj
    A: Any  # torch.float32 [rank, in]
    B: Any  # torch.float32 [out, rank]
    rank: int
    rows: int  # edited rows
    cols: int | None  # edited columns (None: whole rows)
    dtype: str  # base dtype (safetensors name)
    largest_singular_value: float
    largest_dropped_singular_value: float  # 0.0 when nothing was dropped
    factor_error: float  # max |B A - delta| over the edited entries, float32
    reconstruction_error: float  # max |cast(base + B A) - patched rows|, in float32 units
    within_rounding: bool  # every entry within the base dtype's rounding of the patched value
    base_rows_sha256: str  # sha256 of the base rows where B is not zero, ascending

    def summary(self) -> dict[str, Any]:
        return {
            "tensor": self.tensor,
            "module": self.module,
            "rank": self.rank,
            "rows": self.rows,
            "cols": self.cols,
            "dtype": self.dtype,
            "largest_singular_value": self.largest_singular_value,
            "largest_dropped_singular_value": self.largest_dropped_singular_value,
            "factor_error": self.factor_error,
            "reconstruction_error": self.reconstruction_error,
            "within_rounding": self.within_rounding,
            "base_rows_sha256": self.base_rows_sha256,
        }


def module_of(tensor_name: str) -> str:
    """The module a weight tensor belongs to (PEFT targets modules, checkpoints name tensors)."""
    if not tensor_name.endswith(".weight"):
        raise LoraError(
            f"'{tensor_name}' is not a module weight",
            hint="only edits of Linear weights (*.weight) can be exported as LoRA",
        )
    return tensor_name[: -len(".weight")]


def numerical_rank(singular_values: Any, shape: tuple[int, int]) -> int:
    """Singular values above s_max * max(shape) * eps(float32) (numpy's matrix_rank rule for a
    float32 matrix: the deltas are stored in float32, so anything below is their rounding)."""
    import numpy as np

    if len(singular_values) == 0 or float(singular_values[0]) == 0.0:
        return 0
    tolerance = float(singular_values[0]) * max(shape) * float(np.finfo(np.float32).eps)
    return int((singular_values > tolerance).sum())


def factor_tensor_edit(item: TensorEdit, base_bytes: bytes, max_rank: int) -> LoraFactor:
    """LoRA factors of one edited tensor; `base_bytes` are its base rows in the edit's row order.

    Raises LoraError when the delta's numerical rank exceeds `max_rank`."""
    import torch

    module = module_of(item.name)
    out_features, in_features = item.shape
    delta = torch.as_tensor(as_numpy(item.delta), dtype=torch.float32)
    U, S, Vh = torch.linalg.svd(delta.to(torch.float64), full_matrices=False)
    rank = numerical_rank(S.numpy(), tuple(delta.shape))
    if rank > max_rank:
        raise LoraError(
            f"'{item.name}': the delta has rank {rank}, above the LoRA rank limit {max_rank}",
            hint=f"pass --max-lora-rank {rank} (the adapter grows with the rank), or solve "
            "with a lower --rank",
        )
    root = S[:rank].sqrt()
    rows = torch.as_tensor(as_numpy(item.rows), dtype=torch.int64)
    B = torch.zeros(out_features, rank, dtype=torch.float32)
    B[rows] = (U[:, :rank] * root).to(torch.float32)
    A = torch.zeros(rank, in_features, dtype=torch.float32)
    block = (root[:, None] * Vh[:rank]).to(torch.float32)
    if item.cols is None:
        A[:] = block
    else:
        A[:, torch.as_tensor(as_numpy(item.cols), dtype=torch.int64)] = block
    product = compact_product(item, A, B)
    error, within = reconstruction_error(item, base_bytes, product)
    touched = B.abs().sum(dim=1).nonzero().flatten()
    return LoraFactor(
        tensor=item.name,
        module=module,
        A=A,
        B=B,
        rank=rank,
        rows=len(item.rows),
        cols=None if item.cols is None else len(item.cols),
        dtype=item.dtype,
        largest_singular_value=float(S[0]) if len(S) else 0.0,
        largest_dropped_singular_value=float(S[rank]) if rank < len(S) else 0.0,
        factor_error=float((product - delta).abs().max()) if delta.numel() else 0.0,
        reconstruction_error=error,
        within_rounding=within,
        base_rows_sha256=_base_rows_sha256(item, base_bytes, touched.tolist()),
    )


def compact_product(item: TensorEdit, A: Any, B: Any) -> Any:
    """(B A) restricted to the edit's rows and columns, in float32 as PEFT computes it."""
    import torch

    rows = torch.as_tensor(as_numpy(item.rows), dtype=torch.int64)
    left = B[rows]
    right = A if item.cols is None else A[:, torch.as_tensor(as_numpy(item.cols))]
    return left @ right


def reconstruction_error(item: TensorEdit, base_bytes: bytes, product: Any) -> tuple[float, bool]:
    """(max |cast(base + product) - cast(base + delta)| in float32 units over the edited rows,
    whether every entry is within the dtype's rounding); cast(base + delta) are the bytes
    `swe apply` writes. Allowed per entry: one ulp of the base dtype, plus a few float32 ulps
    of the delta's scale for the float32 product B A."""
    import numpy as np

    patched = _rows_float32(item, patched_row_bytes(item, base_bytes))
    if patched.size == 0:
        return 0.0, True
    candidate = replace(item, delta=np.ascontiguousarray(as_numpy(product), dtype=np.float32))
    rebuilt = _rows_float32(item, patched_row_bytes(candidate, base_bytes))
    error = np.abs(rebuilt - patched)
    delta_scale = float(np.abs(as_numpy(item.delta)).max(initial=0.0))
    allowed = (
        _ulp(patched, item.dtype) + PRODUCT_ULPS * float(np.finfo(np.float32).eps) * delta_scale
    )
    return float(error.max()), bool((error <= allowed).all())


def _rows_float32(item: TensorEdit, data: bytes) -> Any:
    return bytes_to_float32(data, item.dtype, len(item.rows)).numpy()


def _ulp(values: Any, dtype: str) -> Any:
    """One unit in the last place of `values` (float32 array) in the checkpoint dtype."""
    import numpy as np

    if dtype == "F16":
        return np.spacing(np.abs(values).astype(np.float16)).astype(np.float32)
    spacing = np.spacing(np.abs(values).astype(np.float32))
    return spacing * 65536.0 if dtype == "BF16" else spacing  # bf16 keeps 16 fewer bits


def _base_rows_sha256(item: TensorEdit, base_bytes: bytes, rows: list[int]) -> str:
    """sha256 of the base rows `rows` (ascending), taken from the edit-ordered `base_bytes`."""
    width = len(base_bytes) // max(1, len(item.rows))
    position = {int(row): index for index, row in enumerate(as_numpy(item.rows).tolist())}
    digest = hashlib.sha256()
    for row in sorted(rows):
        digest.update(base_bytes[position[row] * width : (position[row] + 1) * width])
    return digest.hexdigest()


def base_rows(entry: TensorEntry, rows: list[int]) -> bytes:
    """Raw bytes of `rows` of a base tensor, in the given order."""
    with entry.file.open("rb") as handle:
        return read_row_bytes(handle.fileno(), entry, rows)


def factor_edit(
    edit: Edit, base_dir: Path, max_rank: int = DEFAULT_MAX_RANK
) -> tuple[LoraFactor, ...]:
    """The LoRA factors of every edited tensor, after checking that `base_dir` is the edit's base
    (shape, dtype, base-row hashes). Tensors whose delta is zero get no factor."""
    factors = []
    for item in edit.tensors:
        entry = locate(Path(base_dir), item.name)
        if entry.shape != tuple(item.shape) or entry.dtype != item.dtype or len(entry.shape) != 2:
            raise EditError(
                f"{entry.file}: '{item.name}' is {entry.dtype} {list(entry.shape)}, the edit "
                f"expects {item.dtype} {list(item.shape)}",
                hint="export the edit against the model (and dtype) it was computed on",
            )
        if item.dtype not in EDITABLE_DTYPES:
            raise EditError(
                f"'{item.name}' is {item.dtype}, which cannot be edited",
                hint="supported: " + ", ".join(EDITABLE_DTYPES),
            )
        data = base_rows(entry, as_numpy(item.rows).tolist())
        if hashlib.sha256(data).hexdigest() != item.base_sha256:
            raise EditError(
                f"{entry.file}: rows of '{item.name}' do not match the edit's base",
                hint="the edit was computed on another model or revision; pass the base named "
                "in its swe_edit.json",
            )
        factor = factor_tensor_edit(item, data, max_rank)
        if factor.rank:
            factors.append(factor)
    if not factors:
        raise LoraError("the edit changes nothing: every delta is zero", hint="re-run `swe solve`")
    return tuple(factors)
