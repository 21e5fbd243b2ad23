"""`swe apply`: an edit applied to a checkpoint by streaming. Every file of the base is copied (or hard-linked)
into a temporary folder next to the output; only the edited rows are rewritten in place, at byte
offsets computed from the safetensors header; the written rows are read back and checked; the
folder is renamed into place. Memory is O(edited rows), never O(model), and the base is only
ever opened for reading. The copy runs in the kernel (copy_file_range) and starts before the edit
is loaded; rows are computed with numpy on the CPU (torch only for a GPU), so a run takes about as
long as a plain file copy and needs tens of megabytes."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from swe_cli.card import ModelCard, edit_card
from swe_cli.edit import (
    EDIT_FILE,
    EDITABLE_DTYPES,
    Edit,
    TensorEdit,
    edit_file_of,
    edit_layout,
    edit_sha256,
    load_edit,
    patched_row_bytes,
    save_edit,
    solved_edit,
)
from swe_cli.errors import CheckpointError, EditError
from swe_cli.hub import (
    CALLER_KEYS,
    CARD_FILE,
    EDIT_DIR,
    EVAL_FILE,
    PROVENANCE_FILE,
    REPLACED,
    artifact_provenance,
    complete_provenance,
    download_edit,
    public_source,
    workspace_provenance,
    write_provenance,
)
from swe_cli.io.checkpoint import (
    CheckpointLayout,
    ResolvedModel,
    checkpoint_layout,
    fingerprint,
    tensor_files,
)
from swe_cli.io.files import (
    Progress,
    Transfer,
    atomic_write_text,
    check_inside,
    human_size,
    move_into_place,
    sync_tree,
    temporary_folder,
)
from swe_cli.io.safetensors import (
    SafetensorsHeader,
    TensorEntry,
    read_header,
    read_row_bytes,
    rows_sha256,
    write_row_bytes,
)
from swe_cli.stages.device import resolve_device
from swe_cli.stages.output import check_output
from swe_cli.workspace import Workspace

BLOCK_BYTES = 16 * 1024 * 1024  # fp32 bytes of edited rows computed at once
COMPARE_CHUNK = 8 * 1024 * 1024
COPY_WORKERS = 2


@dataclass(frozen=True)
class ApplyResult:
    """What `apply` did; relative file names, sorted."""

    output: Path
    base: Path
    copied: tuple[str, ...]
    linked: tuple[str, ...]
    patched: tuple[str, ...]
    skipped: tuple[str, ...]  # base entries not carried over: hidden, weights in other formats
    tensors_edited: int
    rows_edited: int
    rows_checked: int
    bytes_copied: int
    edit_sha256: str
    device: str
    seconds: float
    warnings: tuple[str, ...] = ()

    def summary(self) -> dict[str, Any]:
        """JSON-ready (for --json)."""
        data = asdict(self)
        data["output"], data["base"] = str(self.output), str(self.base)
        return data


@dataclass(frozen=True)
class EditSource:
    """An edit already in memory, or an edit file still to load: planning needs only its header,
    so the copy can start before the deltas are read."""

    file: Path | None = None
    edit: Edit | None = None

    def tensor_names(self) -> list[str]:
        if self.edit is not None:
            return [item.name for item in self.edit.tensors]
        assert self.file is not None
        return sorted(edit_layout(self.file))

    def load(self, framework: str = "np") -> Edit:
        if self.edit is not None:
            return self.edit
        assert self.file is not None
        return load_edit(self.file, framework=framework)


@dataclass(frozen=True)
class Target:
    """One edited tensor, located in the base checkpoint."""

    item: TensorEdit
    entry: TensorEntry  # absolute offsets; identical in the copy, whose header is the base's
    file: str


# -- public entry points ------------------------------------------------------------------------
def apply_edit(
    edit: Edit,
    base_dir: Path,
    output: Path,
    *,
    provenance: dict[str, Any],
    card: ModelCard | None = None,
    device: str = "auto",
    link: bool = False,
    force: bool = False,
    progress: Progress | None = None,
    sync: bool = False,
) -> ApplyResult:
    """Write `output`: the checkpoint in `base_dir` with `edit` applied, plus README.md (card;
    default built from `provenance`), swe_edit.json (provenance) and swe_edit/edit.safetensors.

    device: "auto" (cuda when present), "cpu", "cuda" or "cuda:N". link: hard-link shards with no
    edited tensor. force: replace an existing output folder (only one that holds a model or an
    edit). sync: also fsync every file and folder before the final rename, so the output survives
    a power loss (costs the time to write the checkpoint to disk; `cp` and save_pretrained don't).
    Without it the output still appears only complete: after every byte is written and the
    edited rows are read back and checked."""
    return _apply(
        EditSource(edit=edit),
        Path(base_dir),
        Path(output),
        provenance=provenance,
        card=card,
        device=device,
        link=link,
        force=force,
        progress=progress,
        sync=sync,
    )


def apply_workspace(
    workspace: Workspace,
    output: Path,
    *,
    device: str = "auto",
    link: bool = False,
    force: bool = False,
    progress: Progress | None = None,
    sync: bool = False,
) -> ApplyResult:
    """`swe apply -w WS -o OUT`: apply the workspace's edit to the model it was computed on,
    with the provenance and eval table of the workspace, and record the apply stage."""
    manifest = workspace.manifest()
    base_dir = workspace.base_dir()
    check_output(
        Path(output), [("base model folder", base_dir), ("workspace", workspace.root)], force
    )
    workspace.check_writable()
    edit_file, edit_yaml = solved_edit(workspace)
    workspace.check_model(fingerprint(base_dir), manifest.model.id)
    provenance = workspace_provenance(manifest.data, edit_yaml)
    edit_hash = edit_sha256(load_edit(edit_file, framework="np"))
    card = ModelCard.for_provenance(provenance, base_dir, workspace.eval_report(edit_hash))
    card = replace(card, gate_note=workspace.gate_note(edit_hash, "`swe apply`"))
    result = _apply(
        EditSource(file=edit_file),
        base_dir,
        Path(output),
        provenance=provenance,
        card=card,
        device=device,
        link=link,
        force=force,
        progress=progress,
        sync=sync,
    )
    try:  # OUT is complete and in place: failing to record it is a warning, not a failure
        workspace.record_stage(
            "apply",
            {"output": str(result.output), "device": result.device, "link": link},
            {
                "edit_sha256": result.edit_sha256,
                "patched": list(result.patched),
                "rows": result.rows_edited,
            },
        )
    except OSError as error:
        note = f"{result.output} is complete, but the workspace could not record it ({error})"
        return replace(result, warnings=(*result.warnings, note))
    return result


def locate_edit(edit: str | Path) -> tuple[Path, Path]:
    """(edit.safetensors, the artifact folder holding it) of a saved edit: a folder written by
    `--edit-only`, a checkpoint written by `apply`, an edit.safetensors, or a Hub repo id of
    either (downloaded)."""
    source = Path(edit).expanduser()
    if not source.exists():
        if str(edit).startswith((".", "/", "~")) or str(edit).count("/") != 1:
            raise EditError(f"{edit}: no such edit folder or file", hint="check the path")
        source = download_edit(str(edit))
    return edit_file_of(source), source if source.is_dir() else source.parent


def apply_edit_artifact(
    edit: Path | str,
    base: Path | ResolvedModel,
    output: Path,
    *,
    device: str = "auto",
    link: bool = False,
    force: bool = False,
    progress: Progress | None = None,
    sync: bool = False,
) -> ApplyResult:
    """`swe apply --edit EDIT --base MODEL -o OUT`. EDIT is a folder written by `--edit-only`, a
    checkpoint written by `apply` (its swe_edit/), an edit.safetensors, or a Hub repo id of
    either. The base-row hashes decide whether the base fits; a different fingerprint (config or
    weight map) with matching rows is only a warning."""
    edit_file, artifact = locate_edit(edit)
    base_dir = base.path if isinstance(base, ResolvedModel) else Path(base)
    check_output(Path(output), [("base model folder", base_dir), ("edit folder", artifact)], force)
    check_inside(edit_file, artifact, EditError)
    provenance = artifact_provenance(edit_file, artifact)
    warnings: list[str] = []
    recorded = (provenance.get("base_model") or {}).get("fingerprint")
    actual = fingerprint(base_dir)
    if recorded and recorded != actual:
        warnings.append(
            f"{base_dir}: fingerprint {actual[:12]} differs from the edit's base "
            f"({str(recorded)[:12]}): config or weight map differ, the edited rows match"
        )
    provenance["applied_to"] = {
        "id": public_source(base.model_id) if isinstance(base, ResolvedModel) else base_dir.name,
        "fingerprint": actual,
    }
    report = edit_file.parent / EVAL_FILE
    if report.exists():
        check_inside(report, artifact, EditError)
    card = ModelCard.for_provenance(
        provenance, base_dir, report.read_text(encoding="utf-8") if report.exists() else None
    )
    return _apply(
        EditSource(file=edit_file),
        base_dir,
        Path(output),
        provenance=provenance,
        card=card,
        device=device,
        link=link,
        force=force,
        progress=progress,
        sync=sync,
        warnings=warnings,
    )


def export_edit(workspace: Workspace, output: Path, *, force: bool = False) -> Path:
    """`swe apply -w WS --edit-only -o EDIT_DIR`: the edit as a small pushable folder:
    edit.safetensors, swe_edit.json (provenance), README.md (card) and the eval table if any."""
    manifest = workspace.manifest()
    model_path = manifest.model.path
    protected = [("base model folder", model_path)] if model_path.is_dir() else []
    output = Path(output)
    check_output(output, [*protected, ("workspace", workspace.root)], force)
    edit_file, edit_yaml = solved_edit(workspace)
    edit = load_edit(edit_file, framework="np")
    provenance = complete_provenance(
        workspace_provenance(manifest.data, edit_yaml),
        edit,
        edit_sha256(edit),
        {"artifact": "edit"},
    )
    report = workspace.eval_report(provenance["edit"]["sha256"])
    card = ModelCard.for_provenance(provenance, model_path if model_path.is_dir() else None, report)
    card = replace(card, gate_note=workspace.gate_note(provenance["edit"]["sha256"], "`swe apply`"))
    temporary = temporary_folder(output)
    try:
        shutil.copyfile(edit_file, temporary / EDIT_FILE)
        write_provenance(temporary / PROVENANCE_FILE, provenance)
        atomic_write_text(temporary / CARD_FILE, edit_card(card).render(provenance, kind="edit"))
        if report:
            atomic_write_text(temporary / EVAL_FILE, report)
        sync_tree(temporary)
        move_into_place(temporary, output, force)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return output


# -- the apply pipeline -------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """Which base files are patched (copied, then rows rewritten), hard-linked or copied."""

    layout: CheckpointLayout
    headers: dict[str, SafetensorsHeader]
    where: dict[str, str]  # tensor name -> shard file
    patched: list[str]
    linked: list[str]
    copied: list[str]  # unchanged copies, patched shards included
    bytes_to_copy: int


def plan_apply(base_dir: Path, tensor_names: list[str], link: bool) -> Plan:
    """Read and check every shard header (never the weights) and decide what happens to each file."""
    layout = checkpoint_layout(base_dir)
    headers = {name: read_header(base_dir / name) for name in layout.weights}
    where = tensor_files(layout, headers)
    unknown = [name for name in tensor_names if name not in where]
    if unknown:
        raise EditError(
            f"{base_dir}: tensor '{unknown[0]}' of the edit is not in this checkpoint",
            hint="the edit was made for another architecture; apply it to its own base model",
        )
    patched = sorted({where[name] for name in tensor_names})
    linked = [name for name in layout.weights if link and name not in patched]
    copied = [name for name in (*layout.weights, *_carried(layout)) if name not in linked]
    size = sum((base_dir / name).stat().st_size for name in copied)
    return Plan(layout, headers, where, patched, linked, copied, size)


def _apply(
    source: EditSource,
    base_dir: Path,
    output: Path,
    *,
    provenance: dict[str, Any],
    card: ModelCard | None,
    device: str,
    link: bool,
    force: bool,
    progress: Progress | None,
    sync: bool,
    warnings: list[str] | None = None,
) -> ApplyResult:
    started = time.perf_counter()
    check_output(output, [("base model folder", base_dir)], force)
    plan = plan_apply(base_dir, source.tensor_names(), link)
    _check_space(output.parent, plan.bytes_to_copy)
    temporary = temporary_folder(output)
    try:
        with Transfer(COPY_WORKERS) as transfer:
            # patched shards first, so patching can start while the rest is still copying
            futures = {
                name: transfer.copy(base_dir / name, temporary / name) for name in plan.patched
            }
            futures |= {n: transfer.link(base_dir / n, temporary / n) for n in plan.linked}
            futures |= {
                n: transfer.copy(base_dir / n, temporary / n)
                for n in plan.copied
                if n not in futures
            }
            device = resolve_device(device)
            edit = source.load("np" if device == "cpu" else "pt")
            targets = locate_targets(edit, plan.headers, plan.where)
            for target in targets:
                check_base_rows(target)
            for name in plan.patched:
                transfer.wait([futures[name]])
                patch_file(temporary / name, [t for t in targets if t.file == name], device)
                if progress:
                    progress("patch (files)", plan.patched.index(name) + 1, len(plan.patched))
            final = complete_provenance(
                {k: v for k, v in provenance.items() if k in (*CALLER_KEYS, "applied_to")},
                edit,
                edit_sha256(edit),
                {"apply": {"device": device, "linked": bool(plan.linked), "patched": plan.patched}},
            )
            _write_metadata(temporary, source, edit, final, card, base_dir)
            transfer.wait(list(futures.values()), progress, plan.bytes_to_copy)
        checked = check_written(temporary, plan.layout, plan.headers, targets)
        if sync:
            sync_tree(temporary)
        move_into_place(temporary, output, force)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    fell_back = {name for name in plan.linked if not futures[name].result()}
    notes = list(warnings or [])
    if fell_back:
        notes.append(f"{len(fell_back)} shard(s) copied instead of hard-linked (other filesystem)")
    return ApplyResult(
        output=output,
        base=base_dir,
        copied=tuple(sorted({*plan.copied, *fell_back})),
        linked=tuple(sorted(set(plan.linked) - fell_back)),
        patched=tuple(plan.patched),
        skipped=plan.layout.skipped,
        tensors_edited=len(targets),
        rows_edited=edit.num_rows,
        rows_checked=checked,
        bytes_copied=transfer.done,
        edit_sha256=final["edit"]["sha256"],
        device=device,
        seconds=time.perf_counter() - started,
        warnings=tuple(notes),
    )


def locate_targets(
    edit: Edit, headers: dict[str, SafetensorsHeader], where: dict[str, str]
) -> list[Target]:
    """Each edited tensor with its base location; shape and dtype must be the edit's."""
    targets = []
    for item in edit.tensors:
        if item.name not in where:
            raise EditError(
                f"tensor '{item.name}' of the edit is not in the base checkpoint",
                hint="apply the edit to the model it was computed on",
            )
        entry = headers[where[item.name]].tensors[item.name]
        if entry.shape != tuple(item.shape) or entry.dtype != item.dtype:
            raise EditError(
                f"{entry.file}: '{item.name}' is {entry.dtype} {list(entry.shape)}, the edit "
                f"expects {item.dtype} {list(item.shape)}",
                hint="apply the edit to the model (and dtype) it was computed on",
            )
        if len(entry.shape) != 2:
            raise EditError(f"'{item.name}' is not a matrix", hint="only 2-D weights are edited")
        if entry.dtype not in EDITABLE_DTYPES:
            raise EditError(
                f"{entry.file}: '{item.name}' is {entry.dtype}, which cannot be edited",
                hint="supported: " + ", ".join(EDITABLE_DTYPES),
            )
        targets.append(Target(item, entry, where[item.name]))
    return targets


def check_base_rows(target: Target) -> None:
    """The base rows must hash to the edit's base_sha256: anything else is another model."""
    entry = target.entry
    actual = rows_sha256(entry, target.item.rows.tolist())
    if actual != target.item.base_sha256:
        raise EditError(
            f"{entry.file}: rows of '{entry.name}' do not match the edit's base "
            f"(sha256 {actual[:12]}, edit expects {target.item.base_sha256[:12]})",
            hint="the edit was computed on another model or revision; apply it to the base named "
            "in its swe_edit.json",
        )


def row_blocks(target: Target) -> Iterator[tuple[int, int]]:
    """(start, stop) positions into the edit's rows, so that one block's fp32 rows fit BLOCK_BYTES."""
    count = len(target.item.rows)
    step = max(1, BLOCK_BYTES // max(1, 4 * target.entry.shape[1]))
    for start in range(0, count, step):
        yield start, min(count, start + step)


def patch_file(path: Path, targets: list[Target], device: str) -> int:
    """Rewrite the edited rows of one copied shard in place; returns the rows written."""
    descriptor = os.open(path, os.O_RDWR)
    written = 0
    try:
        for target in targets:
            rows = target.item.rows.tolist()
            with target.entry.file.open("rb") as base:
                for start, stop in row_blocks(target):
                    block = target.item.block(start, stop)
                    old = read_row_bytes(base.fileno(), target.entry, rows[start:stop])
                    new = patched_row_bytes(block, old, device)
                    write_row_bytes(descriptor, target.entry, rows[start:stop], new)
                    written += stop - start
    finally:
        os.close(descriptor)
    return written


def check_written(
    folder: Path,
    layout: CheckpointLayout,
    headers: dict[str, SafetensorsHeader],
    targets: list[Target],
) -> int:
    """Read back what apply wrote: every shard has the base's size, patched shards the base's
    header bytes, and every edited row the expected value (recomputed on the CPU, so a GPU result
    is checked independently). Returns the rows checked."""
    for name in layout.weights:
        if (folder / name).stat().st_size != (layout.root / name).stat().st_size:
            raise CheckpointError(
                f"{folder / name}: size differs from the base after copying",
                hint="the disk may be full or failing",
            )
    checked = 0
    for name in sorted({t.file for t in targets}):
        length = headers[name].data_start
        with (folder / name).open("rb") as out, (layout.root / name).open("rb") as base:
            if out.read(length) != base.read(length):
                raise CheckpointError(
                    f"{folder / name}: header differs from the base after writing"
                )
    for target in targets:
        rows = target.item.rows.tolist()
        out_entry = replace(target.entry, file=folder / target.file)
        with target.entry.file.open("rb") as base, out_entry.file.open("rb") as out:
            for start, stop in row_blocks(target):
                old = read_row_bytes(base.fileno(), target.entry, rows[start:stop])
                expected = patched_row_bytes(target.item.block(start, stop), old, "cpu")
                if read_row_bytes(out.fileno(), out_entry, rows[start:stop]) != expected:
                    raise CheckpointError(
                        f"{out_entry.file}: rows of '{target.entry.name}' read back differently "
                        "from what was written",
                        hint="the disk or filesystem returned other bytes; check it and re-run",
                    )
                checked += stop - start
    return checked


def _carried(layout: CheckpointLayout) -> list[str]:
    """Non-weight files that go into the output unchanged (the index included)."""
    carried = [layout.index] if layout.index else []
    return carried + [
        name
        for name in layout.others
        if name not in REPLACED and not name.startswith(f"{EDIT_DIR}/")
    ]


def _write_metadata(
    folder: Path,
    source: EditSource,
    edit: Edit,
    provenance: dict[str, Any],
    card: ModelCard | None,
    base_dir: Path,
) -> None:
    (folder / EDIT_DIR).mkdir(exist_ok=True)
    if source.file is not None:  # the exact bytes the hashes were computed from
        shutil.copyfile(source.file, folder / EDIT_DIR / EDIT_FILE)
    else:
        save_edit(edit, folder / EDIT_DIR)
    write_provenance(folder / PROVENANCE_FILE, provenance)
    card = card or ModelCard.for_provenance(provenance, base_dir)
    atomic_write_text(folder / CARD_FILE, card.render(provenance))


# -- disk space ---------------------------------------------------------------------------------
def _check_space(folder: Path, needed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise CheckpointError(
            f"{folder}: {human_size(needed)} needed, {human_size(free)} free",
            hint="free disk space, choose another -o/--output, or pass --link to hard-link "
            "unedited shards",
        )
