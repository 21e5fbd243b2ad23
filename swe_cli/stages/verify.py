"""`swe verify`: check an edited checkpoint or a LoRA adapter against its base. A checkpoint,
tensor by tensor: untouched tensors (and headers, padding, non-weight files) must be
byte-identical, the edited rows must equal base + delta cast to the dtype, unedited rows of
edited tensors must be unchanged, and the index and headers must agree (memory stays O(one chunk
+ edited rows)). An adapter: its config, factor shapes and recorded hashes, and with the edit
it was exported from, base + B A against the rows `swe apply` writes. Content differences are
collected as problems, not raised: the report says everything that is wrong."""

from __future__ import annotations

import filecmp
import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

from swe_cli.edit import EDIT_FILE, Edit, as_numpy, edit_sha256, load_edit, patched_row_bytes
from swe_cli.errors import CheckpointError, EditError
from swe_cli.hub import CARD_FILE, EDIT_DIR, EVAL_CHART, PROVENANCE_FILE, REPLACED
from swe_cli.io.checkpoint import (
    CheckpointLayout,
    checkpoint_layout,
    load_index,
    locate,
    tensor_files,
)
from swe_cli.io.files import MiB, Progress, inside, link_roots
from swe_cli.io.safetensors import (
    SafetensorsHeader,
    read_header,
    read_row_bytes,
    rows_sha256,
    runs,
)
from swe_cli.stages.apply import COMPARE_CHUNK, Target, row_blocks
from swe_cli.stages.export import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_WEIGHTS_FILE,
    Adapter,
    config_for_ranks,
    file_sha256,
    read_adapter,
)
from swe_cli.stages.factor import base_rows, compact_product, module_of, reconstruction_error

MAX_PROBLEMS_PER_FILE = 20


@dataclass(frozen=True)
class VerifyReport:
    output: Path
    base: Path
    problems: tuple[str, ...]
    files_checked: int
    tensors_checked: int
    tensors_identical: int
    tensors_edited: int
    rows_checked: int
    edit_sha256: str | None

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "output": str(self.output),
            "base": str(self.base),
            "problems": list(self.problems),
            "files_checked": self.files_checked,
            "tensors_checked": self.tensors_checked,
            "tensors_identical": self.tensors_identical,
            "tensors_edited": self.tensors_edited,
            "rows_checked": self.rows_checked,
            "edit_sha256": self.edit_sha256,
        }


@dataclass
class _Tally:
    problems: list[str] = field(default_factory=list)
    files: int = 0
    tensors: int = 0
    identical: int = 0
    edited: int = 0
    rows: int = 0
    bytes_done: int = 0


def verify_checkpoint(
    output: Path, base_dir: Path, edit: Edit | None = None, *, progress: Progress | None = None
) -> VerifyReport:
    """Check OUT against the base. `edit` None: use the edit stored in OUT/swe_edit/ (and check it
    against OUT/swe_edit.json). Raises only when OUT or the base cannot be read as checkpoints."""
    output, base_dir = Path(output), Path(base_dir)
    tally = _Tally()
    edit = _edit_for(output, edit, tally)
    base_layout, out_layout = checkpoint_layout(base_dir), checkpoint_layout(output)
    base_headers = {name: read_header(base_dir / name) for name in base_layout.weights}
    where = tensor_files(base_layout, base_headers)
    _check_files(base_layout.weights, out_layout.weights, tally)
    if base_layout.index != out_layout.index:
        tally.problems.append(
            f"{output}: index layout differs (base {base_layout.index}, output {out_layout.index})"
        )
    out_headers = _out_headers(output, out_layout.weights, tally)
    _check_index(output, out_layout.index, out_headers, base_layout.index, base_dir, tally)
    targets = _targets(edit, base_headers, where, tally)
    total = sum((output / name).stat().st_size for name in out_headers)
    for name, out_header in out_headers.items():
        if name not in base_headers:
            continue
        file_targets = {t.item.name: t for t in targets if t.file == name}
        _compare_file(out_header, base_headers[name], file_targets, tally)
        tally.files += 1
        if progress:
            progress("verify (MiB)", tally.bytes_done // MiB, total // MiB)
    _check_other_files(base_dir, output, base_layout.others, tally)
    _check_foreign_files(output, base_layout, tally)
    return VerifyReport(
        output=output,
        base=base_dir,
        problems=tuple(tally.problems),
        files_checked=tally.files,
        tensors_checked=tally.tensors,
        tensors_identical=tally.identical,
        tensors_edited=tally.edited,
        rows_checked=tally.rows,
        edit_sha256=edit_sha256(edit),
    )


def _edit_for(output: Path, edit: Edit | None, tally: _Tally) -> Edit:
    """The edit to check against, and a consistency check of what OUT says about its edit."""
    stored_file = output / EDIT_DIR / EDIT_FILE
    stored = load_edit(stored_file, framework="np") if stored_file.exists() else None
    if edit is None and stored is None:
        raise EditError(
            f"{output}: no {EDIT_DIR}/{EDIT_FILE} and no edit given",
            hint="pass -w WS, the workspace whose edit made this checkpoint",
        )
    edit = edit if edit is not None else stored
    assert edit is not None
    expected = edit_sha256(edit)
    if stored is not None and edit_sha256(stored) != expected:
        tally.problems.append(f"{stored_file}: not the edit given (sha256 differs)")
    provenance_file = output / PROVENANCE_FILE
    if provenance_file.exists():
        try:
            recorded = json.loads(provenance_file.read_text(encoding="utf-8"))["edit"]["sha256"]
        except (OSError, ValueError, KeyError, TypeError):
            tally.problems.append(f"{provenance_file}: unreadable or has no edit.sha256")
        else:
            if recorded != expected:
                tally.problems.append(f"{provenance_file}: records another edit (sha256 differs)")
    return edit


def _check_files(base: tuple[str, ...], out: tuple[str, ...], tally: _Tally) -> None:
    for name in sorted(set(base) - set(out)):
        tally.problems.append(f"weight file {name} of the base is missing from the output")
    for name in sorted(set(out) - set(base)):
        tally.problems.append(f"weight file {name} of the output is not in the base")


def _out_headers(
    output: Path, names: tuple[str, ...], tally: _Tally
) -> dict[str, SafetensorsHeader]:
    headers = {}
    for name in names:
        try:
            headers[name] = read_header(output / name)
        except CheckpointError as error:
            tally.problems.append(error.message)
    return headers


def _check_index(
    output: Path,
    out_index: str | None,
    out_headers: dict[str, SafetensorsHeader],
    base_index: str | None,
    base_dir: Path,
    tally: _Tally,
) -> None:
    """The output's index must be the base's and must agree with the output's own headers."""
    if not out_index:
        return
    try:
        index = load_index(output)
    except CheckpointError as error:
        tally.problems.append(error.message)
        return
    if base_index and index != load_index(base_dir):
        tally.problems.append(f"{output / out_index}: weight map differs from the base's")
    stored = {name: file for file, h in out_headers.items() for name in h.tensors}
    for name in sorted(set(index) | set(stored)):
        if index.get(name) != stored.get(name):
            tally.problems.append(
                f"{output / out_index}: '{name}' indexed in {index.get(name)}, "
                f"stored in {stored.get(name)}"
            )
            break


def _targets(
    edit: Edit, headers: dict[str, SafetensorsHeader], where: dict[str, str], tally: _Tally
) -> list[Target]:
    """The edited tensors located in the base; a base that is not the edit's is a problem."""
    targets = []
    for item in edit.tensors:
        if item.name not in where:
            tally.problems.append(f"edited tensor '{item.name}' is not in the base")
            continue
        entry = headers[where[item.name]].tensors[item.name]
        if entry.shape != tuple(item.shape) or entry.dtype != item.dtype:
            tally.problems.append(
                f"edited tensor '{item.name}' is {entry.dtype} {list(entry.shape)} in the base, "
                f"the edit expects {item.dtype} {list(item.shape)}"
            )
            continue
        target = Target(item, entry, where[item.name])
        if rows_sha256(entry, item.rows.tolist()) != item.base_sha256:
            tally.problems.append(
                f"{entry.file}: rows of '{item.name}' are not the edit's base rows "
                "(this base is not the model the edit was made for)"
            )
            continue
        targets.append(target)
    return targets


def _compare_file(
    out: SafetensorsHeader, base: SafetensorsHeader, targets: dict[str, Target], tally: _Tally
) -> None:
    problems_before = len(tally.problems)
    tally.tensors += len(out.tensors)
    if os.path.samefile(out.path, base.path):  # hard-linked by `apply --link`
        tally.identical += len(out.tensors) - len(targets)
        for name in targets:
            tally.problems.append(f"{out.path}: '{name}' is edited but the shard is the base file")
        return
    size, base_size = out.path.stat().st_size, base.path.stat().st_size
    if size != base_size:
        tally.problems.append(f"{out.path}: {size} bytes, the base shard has {base_size}")
        return
    with out.path.open("rb") as out_file, base.path.open("rb") as base_file:
        pair = (out_file.fileno(), base_file.fileno())
        if not _same(*pair, 0, base.data_start, tally):
            tally.problems.append(f"{out.path}: header differs from the base shard")
            return
        cursor = base.data_start
        for entry in sorted(base.tensors.values(), key=lambda e: e.begin):
            if not _same(*pair, cursor, entry.begin, tally):
                tally.problems.append(f"{out.path}: padding before '{entry.name}' differs")
            cursor = entry.end
            if entry.name in targets:
                _compare_edited(*pair, targets[entry.name], out.path, tally)
            elif _same(*pair, entry.begin, entry.end, tally):
                tally.identical += 1
            else:
                tally.problems.append(f"{out.path}: untouched tensor '{entry.name}' differs")
            if len(tally.problems) - problems_before >= MAX_PROBLEMS_PER_FILE:
                tally.problems.append(f"{out.path}: more differences not listed")
                return
        if not _same(*pair, cursor, base_size, tally):
            tally.problems.append(f"{out.path}: bytes after the last tensor differ")


def _compare_edited(out: int, base: int, target: Target, path: Path, tally: _Tally) -> None:
    """Unedited rows byte-identical, edited rows equal to base + delta cast to the dtype."""
    entry, item = target.entry, target.item
    tally.edited += 1
    rows = item.rows.tolist()
    size = entry.row_bytes
    untouched_ok = True
    cursor = 0
    for _, first, length in runs(sorted(rows)):
        untouched_ok &= _same(
            out, base, entry.begin + cursor * size, entry.begin + first * size, tally
        )
        cursor = first + length
    untouched_ok &= _same(out, base, entry.begin + cursor * size, entry.end, tally)
    if not untouched_ok:
        tally.problems.append(f"{path}: unedited rows of '{entry.name}' differ from the base")
    out_entry = replace(entry, file=path)
    for start, stop in row_blocks(target):
        old = read_row_bytes(base, entry, rows[start:stop])
        expected = patched_row_bytes(item.block(start, stop), old, "cpu")
        actual = read_row_bytes(out, out_entry, rows[start:stop])
        tally.rows += stop - start
        if actual != expected:
            bad = next(
                rows[start + i]
                for i in range(stop - start)
                if actual[i * size : (i + 1) * size] != expected[i * size : (i + 1) * size]
            )
            tally.problems.append(f"{path}: '{entry.name}' row {bad} is not base + delta")
            return


def _same(out: int, base: int, start: int, stop: int, tally: _Tally) -> bool:
    """Byte equality of [start, stop) in two open files, read in chunks."""
    offset = start
    while offset < stop:
        count = min(COMPARE_CHUNK, stop - offset)
        if os.pread(out, count, offset) != os.pread(base, count, offset):
            return False
        offset += count
        tally.bytes_done += count
    return True


def _check_other_files(
    base_dir: Path, output: Path, others: tuple[str, ...], tally: _Tally
) -> None:
    """Config, tokenizer, chat template, ... must be copied unchanged (README and swe's own
    files excepted)."""
    for name in others:
        if name in REPLACED or name.startswith(f"{EDIT_DIR}/"):
            continue
        target = output / name
        if not target.is_file():
            tally.problems.append(f"{target}: missing (the base has it)")
        elif not filecmp.cmp(base_dir / name, target, shallow=False):
            tally.problems.append(f"{target}: differs from the base's {name}")


def _check_foreign_files(output: Path, base_layout: CheckpointLayout, tally: _Tally) -> None:
    """Every entry of OUT must be a file of the base that apply carries over, or one swe writes:
    transformers would load a planted model.safetensors, pytorch_model.bin or modeling_*.py
    instead of (or beside) the verified shards. Links are never written by apply."""
    carried = [base_layout.index] if base_layout.index else []
    carried += [n for n in base_layout.others if n not in REPLACED and not n.startswith(EDIT_DIR)]
    allowed = {
        *base_layout.weights,
        *carried,
        CARD_FILE,
        PROVENANCE_FILE,
        f"{EDIT_DIR}/{EDIT_FILE}",
        EVAL_CHART,
    }
    folders = {parent.as_posix() for name in allowed for parent in PurePosixPath(name).parents}
    for folder, directories, files in os.walk(output):
        relative = Path(folder).relative_to(output)
        for name in sorted(directories):
            entry = (relative / name).as_posix()
            if (Path(folder) / name).is_symlink():
                tally.problems.append(f"{output / entry}: a symbolic link, not written by swe")
            elif entry not in folders:
                tally.problems.append(f"{output / entry}/: a folder the base does not have")
        directories[:] = [d for d in directories if (relative / d).as_posix() in folders]
        for name in sorted(files):
            entry = (relative / name).as_posix()
            if (Path(folder) / name).is_symlink():
                tally.problems.append(f"{output / entry}: a symbolic link, not written by swe")
            elif entry not in allowed:
                tally.problems.append(
                    f"{output / entry}: not a file of the base or of swe (a planted file?)"
                )


# -- LoRA adapters --------------------------------------------------------------------------
@dataclass(frozen=True)
class AdapterReport:
    """What `verify_adapter` found; problems are collected, not raised."""

    adapter: Path
    base: Path
    problems: tuple[str, ...]
    modules_checked: int
    rank: int
    max_reconstruction_error: float | None  # None without an edit to compare against
    edit_sha256: str | None

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "kind": "lora",
            "output": str(self.adapter),
            "base": str(self.base),
            "problems": list(self.problems),
            "modules_checked": self.modules_checked,
            "rank": self.rank,
            "max_reconstruction_error": self.max_reconstruction_error,
            "edit_checked": self.max_reconstruction_error is not None,
            "edit_sha256": self.edit_sha256,
        }


ADAPTER_FILES = (
    ADAPTER_CONFIG_FILE,
    ADAPTER_WEIGHTS_FILE,
    PROVENANCE_FILE,
    CARD_FILE,
    f"{EDIT_DIR}/{EDIT_FILE}",
)
# adapter_config.json keys that do not change the forward pass: every other key must be exactly
# what swe writes
NAME_KEYS = ("base_model_name_or_path", "revision", "inference_mode", "init_lora_weights")


def adapter_edit_file(folder: Path) -> Path:
    """Where an adapter carries the edit it was exported from."""
    return Path(folder) / EDIT_DIR / EDIT_FILE


def recorded_edit(folder: Path) -> Edit | None:
    """The edit carried inside the adapter folder (swe_edit/edit.safetensors), None when absent
    or a link leaving the folder (verify_adapter reports both)."""
    path = adapter_edit_file(folder)
    if not path.is_file() or not inside(path, link_roots(Path(folder))):
        return None
    return load_edit(path)


def check_adapter_files(folder: Path) -> list[str]:
    """Every file accounted for: the ones swe writes, no other file or folder, no link leaving
    the folder (a Hub cache snapshot's links into its blobs are fine)."""
    folder, problems = Path(folder), []
    roots = link_roots(folder)
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if path.is_symlink() and not inside(path, roots):
            problems.append(f"{relative}: a link to {path.resolve()}, outside the adapter folder")
        elif path.is_dir():
            if relative != EDIT_DIR:
                problems.append(f"{relative}/: a folder swe does not write into an adapter")
        elif relative not in ADAPTER_FILES:
            problems.append(f"{relative}: a file swe does not write into an adapter")
    for required in (ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, PROVENANCE_FILE):
        if not (folder / required).is_file():
            problems.append(f"{required}: missing")
    return problems


def verify_adapter(folder: Path, base_dir: Path, edit: Edit | None = None) -> AdapterReport:
    """Check an adapter folder against its base and the edit it was exported from (`edit`, else
    the one it carries): as strict as a checkpoint, so a pass means the forward pass is base +
    the edit.

    Every file is one swe writes; adapter_config.json is exactly what swe writes for these
    factors (every key that changes the forward pass: rank and alpha patterns, rslora, dora,
    targets, ...), naming the recorded base; shapes fit the base tensors; the weights file's
    sha256 and the base rows B touches match swe_edit.json; the edit's sha256 is the one recorded,
    it touches the same tensors, B A is zero outside its rows and columns, and base + B A cast to
    the base dtype equals the rows `swe apply` writes, within the dtype's rounding. No edit to
    compare with is a problem (cannot verify), never a pass."""
    folder, base_dir = Path(folder), Path(base_dir)
    problems = check_adapter_files(folder)
    if any("outside the adapter folder" in problem for problem in problems):
        return _report(folder, base_dir, problems, None, None)  # read nothing through the link
    adapter = read_adapter(folder)
    lora = adapter.provenance.get("lora") or {}
    recorded = {module["module"]: module for module in lora.get("modules") or []}
    problems += _check_config(adapter)
    digest = file_sha256(folder / ADAPTER_WEIGHTS_FILE)
    if lora.get("adapter_sha256") != digest:
        problems.append(f"{folder}: {ADAPTER_WEIGHTS_FILE} differs from the one swe wrote (sha256)")
    for module, (A, B) in adapter.factors.items():
        problems += _check_module(base_dir, module, A, B, recorded.get(module))
        if not (bool(A.isfinite().all()) and bool(B.isfinite().all())):
            problems.append(f"'{module}': lora_A or lora_B holds nan or inf")
    worst = None
    edit = edit if edit is not None else recorded_edit(folder)
    if edit is None:
        problems.append(
            f"cannot verify the factors: no edit inside the adapter ({EDIT_DIR}/{EDIT_FILE}) "
            "and none given (-w WORKSPACE)"
        )
    else:
        worst, edit_problems = _check_against_edit(adapter, base_dir, edit)
        problems += edit_problems
    return _report(folder, base_dir, problems, adapter, worst)


def _report(
    folder: Path, base_dir: Path, problems: list[str], adapter: Adapter | None, worst: Any
) -> AdapterReport:
    factors = adapter.factors if adapter is not None else {}
    ranks = [int(A.shape[0]) for A, _ in factors.values()]
    return AdapterReport(
        adapter=folder,
        base=base_dir,
        problems=tuple(problems),
        modules_checked=len(factors),
        rank=max(ranks, default=0),
        max_reconstruction_error=worst,
        edit_sha256=((adapter.provenance if adapter else {}).get("edit") or {}).get("sha256"),
    )


def _check_config(adapter: Adapter) -> list[str]:
    config, problems = adapter.config, []
    if config.get("peft_type") != "LORA":
        problems.append(f"{adapter.folder}: peft_type is {config.get('peft_type')!r}, not LORA")
    if not adapter.factors:
        return [*problems, f"{adapter.folder}: the adapter holds no factors"]
    expected = config_for_ranks(
        {module: int(A.shape[0]) for module, (A, _) in adapter.factors.items()}, ""
    )
    for key in sorted(set(config) | set(expected)):
        if key not in NAME_KEYS and key != "peft_type" and config.get(key) != expected.get(key):
            problems.append(
                f"{ADAPTER_CONFIG_FILE}: '{key}' is {config.get(key)!r}; swe writes "
                f"{expected.get(key)!r} for these factors (it changes the forward pass)"
            )
    base = adapter.provenance.get("base_model") or {}
    names = {str(value) for value in (base.get("hub_id"), base.get("id")) if value}
    if str(config.get("base_model_name_or_path")) not in names:
        problems.append(
            f"{ADAPTER_CONFIG_FILE}: base_model_name_or_path "
            f"{config.get('base_model_name_or_path')!r} is not the recorded base "
            f"({', '.join(sorted(names)) or 'none recorded'})"
        )
    return problems


def _check_module(
    base_dir: Path, module: str, A: Any, B: Any, recorded: dict[str, Any] | None
) -> list[str]:
    try:
        entry = locate(base_dir, f"{module}.weight")
    except Exception as error:  # noqa: BLE001 - a missing tensor is a finding, not a crash
        return [f"'{module}': {getattr(error, 'message', error)}"]
    out_features, in_features = entry.shape
    if tuple(A.shape) != (A.shape[0], in_features) or tuple(B.shape) != (out_features, A.shape[0]):
        return [
            f"'{module}': factors {list(B.shape)} x {list(A.shape)} do not fit the base "
            f"weight {list(entry.shape)}"
        ]
    if recorded is None:
        return [f"'{module}': not recorded in {PROVENANCE_FILE}"]
    rows = B.abs().sum(dim=1).nonzero().flatten().tolist()
    if hashlib.sha256(base_rows(entry, rows)).hexdigest() != recorded.get("base_rows_sha256"):
        return [
            f"'{module}': the base rows the adapter changes differ from the ones it was exported "
            "against (another base model or revision)"
        ]
    return []


def _check_against_edit(adapter: Adapter, base_dir: Path, edit: Edit) -> tuple[float, list[str]]:
    import torch

    problems, worst = [], 0.0
    recorded = (adapter.provenance.get("edit") or {}).get("sha256")
    actual = edit_sha256(edit)
    if recorded and recorded != actual:
        problems.append(
            f"the edit (sha256 {actual[:12]}) is not the one the adapter was exported from "
            f"({recorded[:12]})"
        )
    edited = {module_of(item.name): item for item in edit.tensors}
    for module in sorted(set(adapter.factors) - set(edited)):
        problems.append(f"'{module}': has LoRA factors but the edit does not change it")
    for module, item in sorted(edited.items()):
        if module not in adapter.factors:
            if float(abs(as_numpy(item.delta)).max(initial=0.0)) != 0.0:
                problems.append(f"'{module}': edited, but the adapter has no factors for it")
            continue
        A, B = adapter.factors[module]
        rows = torch.as_tensor(as_numpy(item.rows), dtype=torch.int64)
        outside_rows = torch.ones(B.shape[0], dtype=torch.bool)
        outside_rows[rows] = False
        outside_cols = torch.zeros(A.shape[1], dtype=torch.bool)
        if item.cols is not None:
            outside_cols[:] = True
            outside_cols[torch.as_tensor(as_numpy(item.cols), dtype=torch.int64)] = False
        if B[outside_rows].any() or A[:, outside_cols].any():
            problems.append(f"'{module}': the adapter changes entries outside the edited ones")
        entry = locate(base_dir, item.name)
        base_bytes = base_rows(entry, rows.tolist())
        try:
            error, within = reconstruction_error(item, base_bytes, compact_product(item, A, B))
        except EditError as failure:  # e.g. factors holding nan: base + B A is not finite
            problems.append(f"'{module}': {failure.message}")
            continue
        worst = max(worst, error)
        if not within:
            problems.append(
                f"'{module}': base + B A differs from the edited rows by up to {error:.3g}, "
                f"more than the {item.dtype} rounding"
            )
    return worst, problems
