"""`verify_checkpoint` accepts exactly what apply writes and names every kind of difference: a
changed untouched tensor, an edited row that is not base + delta, a changed unedited row of an
edited tensor, a changed header, index or non-weight file, a missing or extra shard, a foreign
base, and provenance that records another edit."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from test_patch import base_checkpoint, bases_root, bases_untouched, make_edit  # noqa: F401

from swe_cli.edit import Edit, TensorEdit
from swe_cli.errors import EditError
from swe_cli.io.checkpoint import INDEX_NAME, checkpoint_layout, locate
from swe_cli.io.safetensors import read_header
from swe_cli.stages.apply import EDIT_DIR, PROVENANCE_FILE, apply_edit
from swe_cli.stages.verify import verify_checkpoint


@pytest.fixture(scope="module")
def applied(
    tmp_path_factory: pytest.TempPathFactory,
    bases_root: Path,  # noqa: F811
) -> tuple[Path, Path, Edit]:
    """(base, output, edit) for the tiny bf16 llama; tests work on copies of the output."""
    base = base_checkpoint("llama", bases_root)
    edit = make_edit(base, "llama")
    output = tmp_path_factory.mktemp("verify") / "out"
    apply_edit(edit, base, output, provenance={}, device="cpu")
    return base, output, edit


@pytest.fixture()
def copy(applied: tuple[Path, Path, Edit], tmp_path: Path) -> Path:
    target = tmp_path / "out"
    shutil.copytree(applied[1], target)
    return target


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_accepts_what_apply_wrote(applied: tuple[Path, Path, Edit]) -> None:
    base, output, edit = applied
    calls: list[tuple[str, int, int]] = []
    report = verify_checkpoint(output, base, progress=lambda *a: calls.append(a))
    assert report.ok, report.problems
    assert report.tensors_edited == 3 and report.rows_checked == edit.num_rows
    assert report.tensors_identical == report.tensors_checked - 3
    assert report.files_checked == len(checkpoint_layout(base).weights)
    assert calls and calls[-1][1] == calls[-1][2]
    assert verify_checkpoint(output, base, edit).ok  # the edit given explicitly (-w WS)
    assert report.summary()["ok"] is True


def _tensor_offset(folder: Path, name: str, row: int = 0) -> tuple[Path, int]:
    entry = locate(folder, name)
    return entry.file, entry.begin + row * entry.row_bytes


Tamper = Callable[[Path, Edit], None]


def _untouched(out: Path, edit: Edit) -> None:
    flip(*_tensor_offset(out, "model.layers.1.self_attn.q_proj.weight", 3))


def _edited_row(out: Path, edit: Edit) -> None:
    item = edit.tensors[0]
    flip(*_tensor_offset(out, item.name, int(item.rows[2])))


def _unedited_row(out: Path, edit: Edit) -> None:
    item = edit.tensors[0]
    free = next(r for r in range(item.shape[0]) if r not in set(item.rows.tolist()))
    flip(*_tensor_offset(out, item.name, free))


def _unedited_column(out: Path, edit: Edit) -> None:  # down_proj edits only some columns
    item = next(t for t in edit.tensors if t.cols is not None)
    file, offset = _tensor_offset(out, item.name, int(item.rows[0]))
    column = next(c for c in range(item.shape[1]) if c not in set(item.cols.tolist()))
    flip(file, offset + 2 * column)


def _header(out: Path, edit: Edit) -> None:
    file = out / checkpoint_layout(out).weights[0]
    data = file.read_bytes()
    header_size = read_header(file).header_size
    header = data[8 : 8 + header_size].replace(b'"pt"', b'"PT"')
    file.write_bytes(data[:8] + header + data[8 + header_size :])


def _index(out: Path, edit: Edit) -> None:
    index = json.loads((out / INDEX_NAME).read_text())
    index["weight_map"]["model.norm.weight"] = checkpoint_layout(out).weights[0]
    (out / INDEX_NAME).write_text(json.dumps(index))


def _missing_shard(out: Path, edit: Edit) -> None:
    index = json.loads((out / INDEX_NAME).read_text())
    victim = checkpoint_layout(out).weights[-1]
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if v != victim}
    (out / INDEX_NAME).write_text(json.dumps(index))
    (out / victim).unlink()


def _config(out: Path, edit: Edit) -> None:
    config = json.loads((out / "config.json").read_text())
    config["rms_norm_eps"] = 0.5
    (out / "config.json").write_text(json.dumps(config))


def _tokenizer_missing(out: Path, edit: Edit) -> None:
    (out / "tokenizer.json").unlink()


def _provenance(out: Path, edit: Edit) -> None:
    record = json.loads((out / PROVENANCE_FILE).read_text())
    record["edit"]["sha256"] = "0" * 64
    (out / PROVENANCE_FILE).write_text(json.dumps(record))


def _truncated(out: Path, edit: Edit) -> None:
    file = out / checkpoint_layout(out).weights[1]
    file.write_bytes(file.read_bytes()[:-10])


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [
        (_untouched, "untouched tensor 'model.layers.1.self_attn.q_proj.weight' differs"),
        (_edited_row, "is not base + delta"),
        (_unedited_row, "unedited rows of 'model.layers.0.mlp.gate_proj.weight'"),
        (_unedited_column, "is not base + delta"),
        (_header, "header differs"),
        (_index, "weight map differs"),
        (_missing_shard, "missing from the output"),
        (_config, "config.json: differs"),
        (_tokenizer_missing, "tokenizer.json: missing"),
        (_provenance, "records another edit"),
        (_truncated, "do not fit its shape or the file"),
    ],
)
def test_names_each_difference(
    tamper: Tamper, expected: str, applied: tuple[Path, Path, Edit], copy: Path
) -> None:
    base, _, edit = applied
    tamper(copy, edit)
    report = verify_checkpoint(copy, base)
    assert not report.ok
    assert any(expected in problem for problem in report.problems), report.problems


def test_foreign_base_and_foreign_edit(applied: tuple[Path, Path, Edit]) -> None:
    base, output, edit = applied
    other = base_checkpoint("llama", base.parent, seed=1)
    report = verify_checkpoint(output, other)
    assert any("not the edit's base rows" in p for p in report.problems)
    item = edit.tensors[0]
    changed = TensorEdit(**{**item.__dict__, "delta": item.delta * 2})
    report = verify_checkpoint(output, base, Edit((changed, *edit.tensors[1:])))
    assert any("not the edit given" in p for p in report.problems)
    assert any("is not base + delta" in p for p in report.problems)


def test_hard_linked_output_verifies(applied: tuple[Path, Path, Edit], tmp_path: Path) -> None:
    base, _, edit = applied
    apply_edit(edit, base, tmp_path / "linked", provenance={}, device="cpu", link=True)
    report = verify_checkpoint(tmp_path / "linked", base)
    assert report.ok, report.problems


def test_needs_an_edit(applied: tuple[Path, Path, Edit], copy: Path) -> None:
    base, _, edit = applied
    shutil.rmtree(copy / EDIT_DIR)
    with pytest.raises(EditError, match="no edit given") as caught:
        verify_checkpoint(copy, base)
    assert "-w" in caught.value.hint
    assert verify_checkpoint(copy, base, edit).ok


def test_plain_base_copy_is_not_an_edited_checkpoint(
    applied: tuple[Path, Path, Edit], tmp_path: Path
) -> None:
    base, _, edit = applied
    plain = tmp_path / "plain"
    shutil.copytree(base, plain)
    report = verify_checkpoint(plain, base, edit)
    assert not report.ok
    assert any("is not base + delta" in p for p in report.problems)
