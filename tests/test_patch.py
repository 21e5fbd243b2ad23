"""Apply tests compare bytes: every untouched tensor and non-weight file of the output is
byte-identical to the base, edited rows equal base + delta cast to the dtype, transformers loads
the output and its logits equal those of the base patched in memory. Faults (corrupted shards,
failures mid-write, an existing output, a foreign base) leave no output and no temporary folder,
and the base is never modified (hash and mtime checked after every test)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from common import make_tiny_checkpoint

from swe_cli.architectures import adapter_for
from swe_cli.edit import (
    Edit,
    TensorEdit,
    edit_sha256,
    load_edit,
    save_edit,
    tensor_edit_from_base,
)
from swe_cli.errors import CheckpointError, EditError, SweError
from swe_cli.io.checkpoint import INDEX_NAME, SINGLE_NAME, checkpoint_layout, load_index
from swe_cli.stages.apply import (
    EDIT_DIR,
    PROVENANCE_FILE,
    ApplyResult,
    apply_edit,
    apply_edit_artifact,
    apply_workspace,
    export_edit,
)
from swe_cli.stages.verify import verify_checkpoint
from swe_cli.workspace import Workspace

# name -> (family, dtype, sharded)
BASES: dict[str, tuple[str, torch.dtype, bool]] = {
    "llama": ("llama", torch.bfloat16, True),
    "qwen2": ("qwen2", torch.float16, True),
    "gemma2": ("gemma2", torch.float32, True),
    "phi3": ("phi3", torch.bfloat16, True),
    "llama-single": ("llama", torch.float32, False),
}
INTERMEDIATE = 48
_BUILT: dict[str, Path] = {}
_STATE: dict[str, dict[str, tuple[str, int, int]]] = {}  # snapshot of each base when built
_ROOT: list[Path] = []


def base_checkpoint(name: str, root: Path, seed: int = 0) -> Path:
    """A tiny checkpoint, built once per session (shared by the apply and verify tests)."""
    key = f"{name}-{seed}"
    if key not in _BUILT:
        family, dtype, sharded = BASES[name]
        shard_size = 6_000 * dtype.itemsize  # several shards, some with no edited tensor
        _BUILT[key] = make_tiny_checkpoint(
            root / key,
            family,
            dtype=dtype,
            max_shard_size=shard_size if sharded else None,
            seed=seed,
        )
        _STATE[key] = snapshot(_BUILT[key])
    return _BUILT[key]


def edit_spec(name: str) -> list[tuple[str, list[int], list[int] | None]]:
    """Edited tensors spread over layers (and shards): gate rows of layer 0, up rows of layer 1,
    down_proj rows of layer 2 restricted to a few neuron columns (the sparse residual form)."""
    family = BASES[name][0]
    adapter = adapter_for(family)
    gate, gate_offset = adapter.tensor(0, "gate", INTERMEDIATE)
    up, up_offset = adapter.tensor(1, "up", INTERMEDIATE)
    down, _ = adapter.tensor(2, "down", INTERMEDIATE)
    return [
        (gate, [gate_offset + row for row in (1, 5, 6, 7, 20)], None),
        (up, [up_offset + row for row in (47, 0, 3)], None),
        (down, list(range(32)), [3, 4, 10]),
    ]


def make_edit(base_dir: Path, name: str, seed: int = 0, scale: float = 0.05) -> Edit:
    generator = torch.Generator().manual_seed(seed)
    items = []
    for tensor, rows, cols in edit_spec(name):
        width = len(cols) if cols is not None else 32
        delta = torch.randn(len(rows), width, generator=generator) * scale
        items.append(tensor_edit_from_base(base_dir, tensor, rows, delta, cols))
    return Edit(tuple(items), {"base_model": name, "method": "test"})


def snapshot(folder: Path) -> dict[str, tuple[str, int, int]]:
    """sha256, mtime and size of every file under a folder."""
    return {
        path.relative_to(folder).as_posix(): (
            hashlib.sha256(path.read_bytes()).hexdigest(),
            path.stat().st_mtime_ns,
            path.stat().st_size,
        )
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="session")
def bases_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not _ROOT:
        _ROOT.append(tmp_path_factory.mktemp("patch-bases"))
    return _ROOT[0]


@pytest.fixture(autouse=True)
def bases_untouched(bases_root: Path) -> Iterator[None]:
    """Every shared base checkpoint is as it was built (content and mtime) after each test."""
    yield
    for key, path in _BUILT.items():
        assert snapshot(path) == _STATE[key], f"base {key} was modified"


def provenance_for(name: str) -> dict[str, Any]:
    return {
        "base_model": {"id": f"tiny/{name}", "hub_id": None, "fingerprint": "x"},
        "languages": ["en", "sw"],
        "solver": {"method": "test", "params": {"rank": 4}},
    }


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def tensors_of(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint, read with the safetensors library (independent of swe)."""
    from safetensors import safe_open

    out: dict[str, torch.Tensor] = {}
    for file in checkpoint_layout(folder).weights:
        with safe_open(str(folder / file), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118
                out[key] = handle.get_tensor(key)
    return out


def raw(tensor: torch.Tensor) -> bytes:
    return tensor.contiguous().view(torch.uint8).numpy().tobytes()


def expected_tensor(base: torch.Tensor, item: TensorEdit) -> torch.Tensor:
    """Independent computation: (base rows in fp32 + delta) cast to the dtype."""
    new = base.clone()
    rows = item.rows
    if item.cols is None:
        new[rows] = (base[rows].float() + item.delta).to(base.dtype)
    else:
        index = (rows[:, None], item.cols[None, :])
        new[index] = (base[index].float() + item.delta).to(base.dtype)
    return new


# -- the main property, on every tiny architecture ------------------------------------------------
@pytest.mark.parametrize("name", list(BASES))
def test_apply_is_byte_exact_and_loads(name: str, bases_root: Path, tmp_path: Path) -> None:
    base = base_checkpoint(name, bases_root)
    edit = make_edit(base, name)
    layout = checkpoint_layout(base)
    where = {t: f for f in layout.weights for t in tensors_of_file(base / f)}
    edited_files = {where[item.name] for item in edit.tensors}
    if BASES[name][2]:
        assert len(edited_files) >= 2, "edited tensors should sit in different shards"
        assert set(layout.weights) - edited_files, "some shards should hold no edited tensor"
    out = tmp_path / "out"
    calls: list[tuple[str, int, int]] = []
    result = apply_edit(
        edit,
        base,
        out,
        provenance=provenance_for(name),
        device="cpu",
        progress=lambda *a: calls.append(a),
    )
    assert isinstance(result, ApplyResult)
    assert set(result.patched) == edited_files
    assert result.rows_edited == result.rows_checked == edit.num_rows
    assert {label for label, _, _ in calls} >= {"patch (files)", "copy (MiB)"}

    # non-weight files and the index: byte-identical; unedited shards: byte-identical files
    for other in layout.others:
        if other != "README.md":
            assert (out / other).read_bytes() == (base / other).read_bytes(), other
    if layout.index:
        assert (out / INDEX_NAME).read_bytes() == (base / INDEX_NAME).read_bytes()
    else:
        assert not (out / INDEX_NAME).exists() and (out / SINGLE_NAME).exists()
    for file in layout.weights:
        if file not in edited_files:
            assert (out / file).read_bytes() == (base / file).read_bytes(), file
        assert (out / file).stat().st_size == (base / file).stat().st_size

    # tensors: untouched ones identical, edited ones = base + delta cast, other rows unchanged
    before, after = tensors_of(base), tensors_of(out)
    assert before.keys() == after.keys()
    edited = {item.name: item for item in edit.tensors}
    for key, tensor in before.items():
        assert after[key].dtype == tensor.dtype and after[key].shape == tensor.shape
        if key not in edited:
            assert raw(after[key]) == raw(tensor), key
            continue
        item = edited[key]
        assert raw(after[key]) == raw(expected_tensor(tensor, item)), key
        untouched = torch.ones(tensor.shape[0], dtype=torch.bool)
        untouched[item.rows] = False
        assert raw(after[key][untouched]) == raw(tensor[untouched])
        assert not torch.equal(after[key][item.rows], tensor[item.rows])

    # metadata files and an independent full verification
    assert (out / "README.md").exists() and (out / PROVENANCE_FILE).exists()
    assert load_edit(out / EDIT_DIR).num_rows == edit.num_rows
    report = verify_checkpoint(out, base)
    assert report.ok, report.problems
    assert report.tensors_edited == len(edit.tensors)
    assert leftovers(tmp_path) == []

    # transformers loads the output; its logits are the base's patched in memory, not the base's
    _check_logits(base, out, edit, BASES[name][1])


def tensors_of_file(path: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return list(handle.keys())


def _check_logits(base: Path, out: Path, edit: Edit, dtype: torch.dtype) -> None:
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([[1, 9, 14, 22, 30, 41, 7, 5]])
    reference = AutoModelForCausalLM.from_pretrained(base, dtype=dtype).eval()
    edited = AutoModelForCausalLM.from_pretrained(out, dtype=dtype).eval()
    with torch.no_grad():
        original = reference(ids).logits
        parameters = dict(reference.named_parameters())
        for item in edit.tensors:
            parameter = parameters[item.name]
            parameter.copy_(expected_tensor(parameter.detach(), item))
        patched = reference(ids).logits
        result = edited(ids).logits
    assert torch.equal(result, patched)
    assert not torch.equal(result, original)


# -- options ------------------------------------------------------------------------------------
def test_link_hard_links_unedited_shards(bases_root: Path, tmp_path: Path) -> None:
    base = base_checkpoint("llama", bases_root)
    edit = make_edit(base, "llama")
    result = apply_edit(edit, base, tmp_path / "out", provenance={}, device="cpu", link=True)
    assert result.linked and result.patched
    for file in result.linked:
        assert os.path.samefile(tmp_path / "out" / file, base / file)
    for file in result.patched:
        assert not os.path.samefile(tmp_path / "out" / file, base / file)
    assert verify_checkpoint(tmp_path / "out", base).ok


def test_fsync_option_writes_the_same_checkpoint(bases_root: Path, tmp_path: Path) -> None:
    base = base_checkpoint("llama", bases_root)
    edit = make_edit(base, "llama")
    apply_edit(edit, base, tmp_path / "plain", provenance={}, device="cpu")
    apply_edit(edit, base, tmp_path / "durable", provenance={}, device="cpu", sync=True)
    assert weights_bytes(tmp_path / "durable") == weights_bytes(tmp_path / "plain")
    assert verify_checkpoint(tmp_path / "durable", base).ok


def test_existing_output_needs_force(bases_root: Path, tmp_path: Path) -> None:
    base = base_checkpoint("llama", bases_root)
    edit = make_edit(base, "llama")
    out = tmp_path / "out"
    apply_edit(edit, base, out, provenance={}, device="cpu")
    (out / "marker.txt").write_text("old")
    with pytest.raises(CheckpointError, match="already exists") as caught:
        apply_edit(edit, base, out, provenance={}, device="cpu")
    assert "--force" in caught.value.hint
    assert (out / "marker.txt").exists()
    apply_edit(edit, base, out, provenance={}, device="cpu", force=True)
    assert not (out / "marker.txt").exists() and verify_checkpoint(out, base).ok
    assert leftovers(tmp_path) == []


def test_force_never_deletes_an_unrelated_folder_or_the_base(
    bases_root: Path, tmp_path: Path
) -> None:
    base = base_checkpoint("llama", bases_root)
    edit = make_edit(base, "llama")
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(CheckpointError, match="not a model or edit folder"):
        apply_edit(edit, base, precious, provenance={}, device="cpu", force=True)
    assert (precious / "thesis.tex").exists()
    for target in (base, base / "sub", base.parent):
        with pytest.raises(CheckpointError, match="overlaps the base"):
            apply_edit(edit, base, target, provenance={}, device="cpu", force=True)


def test_cuda_asked_but_missing_is_an_error(bases_root: Path, tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    base = base_checkpoint("llama", bases_root)
    with pytest.raises(SweError, match="CUDA"):
        apply_edit(make_edit(base, "llama"), base, tmp_path / "out", provenance={}, device="cuda")
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_rows_equal_cpu_rows(bases_root: Path, tmp_path: Path) -> None:
    for name in ("llama", "qwen2", "gemma2"):
        base = base_checkpoint(name, bases_root)
        edit = make_edit(base, name)
        on_gpu = apply_edit(edit, base, tmp_path / f"{name}-gpu", provenance={}, device="auto")
        assert on_gpu.device == "cuda" and on_gpu.rows_checked == edit.num_rows
        apply_edit(edit, base, tmp_path / f"{name}-cpu", provenance={}, device="cpu")
        for file in checkpoint_layout(base).weights:
            gpu = (tmp_path / f"{name}-gpu" / file).read_bytes()
            assert gpu == (tmp_path / f"{name}-cpu" / file).read_bytes()


# -- refusals -----------------------------------------------------------------------------------
def test_foreign_base_is_refused(bases_root: Path, tmp_path: Path) -> None:
    base = base_checkpoint("llama", bases_root)
    other = base_checkpoint("llama", bases_root, seed=1)  # same architecture, other weights
    with pytest.raises(EditError, match="do not match the edit") as caught:
        apply_edit(make_edit(base, "llama"), other, tmp_path / "out", provenance={}, device="cpu")
    assert "another model or revision" in caught.value.hint
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_edit_for_other_tensors_or_shapes_is_refused(bases_root: Path, tmp_path: Path) -> None:
    base = base_checkpoint("llama", bases_root)
    item = make_edit(base, "llama").tensors[0]
    renamed = Edit(
        (TensorEdit(**{**item.__dict__, "name": "model.layers.9.mlp.gate_proj.weight"}),)
    )
    with pytest.raises(EditError, match="not in this checkpoint"):
        apply_edit(renamed, base, tmp_path / "out", provenance={}, device="cpu")
    reshaped = Edit((TensorEdit(**{**item.__dict__, "shape": (64, 32)}),))
    with pytest.raises(EditError, match="expects"):
        apply_edit(reshaped, base, tmp_path / "out", provenance={}, device="cpu")
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_overflowing_delta_is_refused(bases_root: Path, tmp_path: Path) -> None:
    base = base_checkpoint("qwen2", bases_root)  # float16: max 65504
    edit = make_edit(base, "qwen2", scale=1e6)
    with pytest.raises(EditError, match="not finite"):
        apply_edit(edit, base, tmp_path / "out", provenance={}, device="cpu")
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


# -- damaged base checkpoints -------------------------------------------------------------------
def _corrupt(shard: Path, kind: str) -> None:
    data = bytearray(shard.read_bytes())
    (length,) = struct.unpack("<Q", data[:8])
    if kind == "header-length":
        data[:8] = struct.pack("<Q", len(data) * 4)
    elif kind == "json":
        data[8:20] = b"{not json!!!"
    elif kind == "offsets":
        header = json.loads(data[8 : 8 + length])
        header.pop("__metadata__", None)  # room for the longer offsets
        name = next(iter(header))
        begin, end = header[name]["data_offsets"]
        header[name]["data_offsets"] = [begin + 10**6, end + 10**6]
        text = json.dumps(header, separators=(",", ":")).encode()
        assert len(text) <= length
        data[8 : 8 + length] = text.ljust(length)
    elif kind == "truncated":
        del data[-100:]
    shard.write_bytes(bytes(data))


@pytest.mark.parametrize("kind", ["header-length", "json", "offsets", "truncated"])
def test_damaged_shard_is_a_clear_error(kind: str, bases_root: Path, tmp_path: Path) -> None:
    base = tmp_path / "base"
    shutil.copytree(base_checkpoint("llama", bases_root), base)
    edit = make_edit(base, "llama")
    shard = base / sorted(checkpoint_layout(base).weights)[-1]
    _corrupt(shard, kind)
    damaged = snapshot(base)
    with pytest.raises(CheckpointError) as caught:
        apply_edit(edit, base, tmp_path / "out", provenance={}, device="cpu")
    assert shard.name in caught.value.message and caught.value.hint
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []
    assert snapshot(base) == damaged


# -- failures mid-write -------------------------------------------------------------------------
def test_failure_while_patching_leaves_nothing(
    bases_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import swe_cli.stages.apply as patch

    base = base_checkpoint("llama", bases_root)
    real = patch.write_row_bytes
    calls = []

    def failing(*args: Any) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("injected failure")
        real(*args)

    monkeypatch.setattr(patch, "write_row_bytes", failing)
    with pytest.raises(RuntimeError, match="injected"):
        apply_edit(make_edit(base, "llama"), base, tmp_path / "out", provenance={}, device="cpu")
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_failure_while_copying_keeps_the_previous_output(
    bases_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import swe_cli.io.files as files

    base = base_checkpoint("llama", bases_root)
    edit = make_edit(base, "llama")
    out = tmp_path / "out"
    apply_edit(edit, base, out, provenance={}, device="cpu")
    previous = snapshot(out)
    real = files.copy_stream
    calls = []

    def failing(*args: Any) -> None:
        calls.append(1)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        real(*args)

    monkeypatch.setattr(files, "copy_stream", failing)
    with pytest.raises(OSError, match="No space"):
        apply_edit(edit, base, out, provenance={}, device="cpu", force=True)
    assert snapshot(out) == previous and leftovers(tmp_path) == []


def test_stale_temporary_folder_of_a_dead_run_is_removed(bases_root: Path, tmp_path: Path) -> None:
    stale = tmp_path / ".out.swe-999999999-abc.tmp"
    stale.mkdir()
    (stale / "half.safetensors").write_bytes(b"x")
    base = base_checkpoint("llama", bases_root)
    apply_edit(make_edit(base, "llama"), base, tmp_path / "out", provenance={}, device="cpu")
    assert leftovers(tmp_path) == []


# -- which files travel -------------------------------------------------------------------------
def test_other_weight_formats_and_hidden_entries_are_not_carried(
    bases_root: Path, tmp_path: Path
) -> None:
    base = tmp_path / "base"
    shutil.copytree(base_checkpoint("llama", bases_root), base)
    (base / "pytorch_model.bin").write_bytes(b"unedited weights")
    (base / "original").mkdir()
    (base / "original" / "consolidated.safetensors").write_bytes(b"unedited weights")
    (base / "original" / "params.json").write_text("{}")
    (base / ".git").mkdir()
    (base / ".git" / "HEAD").write_text("ref")
    (base / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    (base / "README.md").write_text("---\nlicense: apache-2.0\n---\n# base card\n")
    result = apply_edit(
        make_edit(base, "llama"), base, tmp_path / "out", provenance={}, device="cpu"
    )
    out = tmp_path / "out"
    assert set(result.skipped) == {
        "pytorch_model.bin",
        "original/consolidated.safetensors",
        ".git/",
    }
    assert not (out / "pytorch_model.bin").exists() and not (out / ".git").exists()
    assert (out / "original" / "params.json").exists() and (out / ".gitattributes").exists()
    assert (out / "README.md").read_text() != (base / "README.md").read_text()
    assert "license: apache-2.0" in (out / "README.md").read_text()
    assert verify_checkpoint(out, base).ok


# -- workspace, edit artifact, round trips ------------------------------------------------------
def make_workspace(root: Path, base: Path, name: str, with_eval: bool = True) -> Workspace:
    from swe_cli.io.checkpoint import fingerprint

    workspace = Workspace(root)
    workspace.bind_model(
        {
            "id": str(base),
            "path": str(base),
            "revision": None,
            "commit": None,
            "fingerprint": fingerprint(base),
            "model_type": BASES[name][0],
            "dtype": "auto",
        }
    )
    manifest = workspace.load()
    manifest["langs"], manifest["hrl"] = ["es", "sw"], "en"
    workspace.save(manifest)
    edit = make_edit(base, name)
    save_edit(edit, workspace.edit_dir)
    summary = {
        "method": "paper",
        "layers": {0: {"neurons": 5}, 1: {"neurons": 3}, 2: {"neurons": 3}},
    }
    (workspace.edit_dir / "edit.yaml").write_text(yaml.safe_dump(summary))
    workspace.record_stage("solve", {"method": "paper", "rank": 32, "gamma": 1.0}, {"rows": 40})
    if with_eval:
        from swe_cli.report import EvalReport, LanguageResult, ModelResult
        from swe_cli.report_files import write_report

        def result(name: str, asr: float) -> ModelResult:
            return ModelResult(name, (LanguageResult(lang="sw", n=10, asr=asr, degenerate_rate=0),))

        workspace.eval_dir.mkdir(parents=True)
        edited = workspace.root / "out"  # report.md names the models' folders, a card must not
        report = EvalReport(
            result(str(edited), 0.1), result(str(base), 0.9), "pattern", "heldout", ("sw",)
        )
        write_report(report, workspace.eval_dir)
        assert str(edited) in (workspace.eval_dir / "report.md").read_text()
        # as `swe eval -w` records it: the table belongs to this edit
        workspace.record_stage("eval", {}, {"edit_sha256": edit_sha256(edit)})
    return workspace


def weights_bytes(folder: Path) -> dict[str, bytes]:
    return {f: (folder / f).read_bytes() for f in checkpoint_layout(folder).weights}


def test_workspace_apply_export_and_reapply(bases_root: Path, tmp_path: Path) -> None:
    base = base_checkpoint("llama", bases_root)
    workspace = make_workspace(tmp_path / "ws", base, "llama")
    out = tmp_path / "out"
    result = apply_workspace(workspace, out, device="cpu")
    assert verify_checkpoint(out, base).ok
    provenance = json.loads((out / PROVENANCE_FILE).read_text())
    assert provenance["languages"] == ["en", "es", "sw"]
    assert provenance["layers"] == [0, 1, 2]
    assert provenance["neurons"] == {"0": 5, "1": 3, "2": 3}
    assert provenance["solver"]["params"]["rank"] == 32
    assert provenance["edit"]["sha256"] == result.edit_sha256
    assert provenance["tool"]["name"] == "swe"
    card = (out / "README.md").read_text()
    assert "| sw | 10 | 90.0% | 10.0% |" in card and "- **ASR base / edited**:" in card
    assert str(tmp_path) not in card  # the eval section names no local path
    assert workspace.load()["stages"]["apply"]["outputs"]["edit_sha256"] == result.edit_sha256

    # the edit alone: small, pushable, and it re-creates the same checkpoint
    edit_dir = tmp_path / "edit"
    export_edit(workspace, edit_dir)
    assert {p.name for p in edit_dir.iterdir()} == {
        "edit.safetensors",
        PROVENANCE_FILE,
        "README.md",
        "eval_report.md",
    }
    assert sum(p.stat().st_size for p in edit_dir.iterdir()) < 100_000
    with pytest.raises(CheckpointError, match="already exists"):
        export_edit(workspace, edit_dir)
    again = apply_edit_artifact(edit_dir, base, tmp_path / "again", device="cpu")
    assert again.edit_sha256 == result.edit_sha256 and not again.warnings
    assert weights_bytes(tmp_path / "again") == weights_bytes(out)
    reapplied = json.loads((tmp_path / "again" / PROVENANCE_FILE).read_text())
    assert reapplied["languages"] == provenance["languages"]
    assert "| sw | 10 | 90.0% | 10.0% |" in (tmp_path / "again" / "README.md").read_text()

    # an edited checkpoint carries its edit: it can be re-applied from there too
    from_out = apply_edit_artifact(out, base, tmp_path / "from-out", device="cpu")
    assert weights_bytes(tmp_path / "from-out") == weights_bytes(out)
    assert from_out.edit_sha256 == result.edit_sha256

    # ...but never onto another base
    other = base_checkpoint("llama", bases_root, seed=1)
    with pytest.raises(EditError, match="do not match"):
        apply_edit_artifact(edit_dir, other, tmp_path / "wrong", device="cpu")
    assert not (tmp_path / "wrong").exists()


def test_workspace_base_from_the_hub_when_its_folder_is_gone(
    bases_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A workspace made on a Hub model whose snapshot folder was cleaned up fetches it again."""
    import swe_cli.io.checkpoint as checkpoint
    from swe_cli.io.checkpoint import ResolvedModel

    base = base_checkpoint("llama", bases_root)
    workspace = make_workspace(tmp_path / "ws", base, "llama", with_eval=False)
    manifest = workspace.load()
    manifest["model"].update(id="org/tiny", path=str(tmp_path / "gone"), commit="abc123")
    workspace.save(manifest)
    asked = []

    def fake_resolve(model: str, revision: str | None = None) -> ResolvedModel:
        asked.append((model, revision))
        return ResolvedModel(model, base, revision, revision)

    monkeypatch.setattr(checkpoint, "resolve_model", fake_resolve)
    apply_workspace(workspace, tmp_path / "out", device="cpu")
    assert asked == [("org/tiny", "abc123")]
    assert verify_checkpoint(tmp_path / "out", base).ok
    card = (tmp_path / "out" / "README.md").read_text()
    assert "base_model: org/tiny" in card and "base_model_relation: finetune" in card


def test_workspace_of_a_changed_base_is_refused(bases_root: Path, tmp_path: Path) -> None:
    from swe_cli.errors import WorkspaceError

    base = tmp_path / "base"
    shutil.copytree(base_checkpoint("llama", bases_root), base)
    workspace = make_workspace(tmp_path / "ws", base, "llama", with_eval=False)
    config = json.loads((base / "config.json").read_text())
    config["rms_norm_eps"] = 1e-3
    (base / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        WorkspaceError, match="now has fingerprint .*: its weights or config changed"
    ):
        apply_workspace(workspace, tmp_path / "out", device="cpu")
    assert not (tmp_path / "out").exists()


def test_index_that_disagrees_with_shards_is_refused(bases_root: Path, tmp_path: Path) -> None:
    base = tmp_path / "base"
    shutil.copytree(base_checkpoint("llama", bases_root), base)
    index = json.loads((base / INDEX_NAME).read_text())
    weights = load_index(base)
    name = next(iter(weights))
    other = next(f for f in set(weights.values()) if f != weights[name])
    index["weight_map"][name] = other
    (base / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="indexed in"):
        apply_edit(make_edit(base, "llama"), base, tmp_path / "out", provenance={}, device="cpu")


# -- the row arithmetic -------------------------------------------------------------------------
TORCH_DEVICES = ["cpu:0", *(["cuda"] if torch.cuda.is_available() else [])]


@pytest.mark.parametrize("device", TORCH_DEVICES)
@pytest.mark.parametrize("dtype", ["BF16", "F16", "F32"])
def test_numpy_rows_equal_torch_rows(dtype: str, device: str) -> None:
    """The CPU path (numpy) and the device path (torch; any device name but "cpu") give the same
    bytes: ties, subnormals, signed zeros, values near the dtype's limits and a wide range of
    magnitudes included."""
    from swe_cli.edit import patched_row_bytes
    from swe_cli.io.safetensors import torch_dtype_of

    torch_dtype = torch_dtype_of(dtype)
    generator = torch.Generator().manual_seed(0)
    magnitude = 10.0 ** (torch.rand(256, 96, generator=generator) * 8 - 6)  # 1e-6 .. 1e2
    base = (torch.randn(256, 96, generator=generator) * magnitude).to(torch_dtype)
    tiny = torch.finfo(torch_dtype).tiny
    base[0, :8] = torch.tensor([0.0, -0.0, tiny, -tiny, tiny / 4, 1.0, -1.0, 3.0]).to(torch_dtype)
    base[1, :4] = torch.finfo(torch_dtype).max / 2
    delta = torch.randn(256, 96, generator=generator) * magnitude / 10
    delta[0, :8] = torch.tensor([0.0, 0.0, -tiny, tiny, tiny / 8, 2.0**-9, -(2.0**-9), 2.0**-8])
    delta[2] = 2.0**-12 * torch.arange(96)  # many exact ties once rounded
    rows = torch.arange(256).flip(0)
    data = base[rows].contiguous().view(torch.uint8).numpy().tobytes()
    for cols in (None, torch.tensor([5, 1, 90, 3])):
        item = TensorEdit(
            name="w",
            rows=rows,
            delta=delta[rows] if cols is None else delta[rows][:, cols],
            base_sha256="",
            shape=(256, 96),
            dtype=dtype,
            cols=cols,
        )
        on_cpu = patched_row_bytes(item, data, "cpu")
        assert on_cpu == patched_row_bytes(item, data, device)
        assert on_cpu == raw(expected_tensor(base, item)[rows])


def test_cpu_apply_does_not_import_torch(bases_root: Path, tmp_path: Path) -> None:
    """Apply and verify on the CPU are numpy only: tens of megabytes, no torch start-up."""
    import subprocess
    import sys

    base = base_checkpoint("llama", bases_root)
    save_edit(make_edit(base, "llama"), tmp_path / "edit")
    script = (
        "import sys\n"
        "from swe_cli.stages.apply import apply_edit_artifact\n"
        "from swe_cli.stages.verify import verify_checkpoint\n"
        "apply_edit_artifact(sys.argv[1], sys.argv[2], sys.argv[3], device='cpu')\n"
        "assert verify_checkpoint(sys.argv[3], sys.argv[2]).ok\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    command = [sys.executable, "-c", script, str(tmp_path / "edit"), str(base), str(tmp_path / "o")]
    subprocess.run(command, check=True)
