"""Hostile inputs and faults from the reliability audit (issue 11), through the command line: each
case asserts the exit code, the one-line message, and that nothing outside the intended output
changed (sha256, size and mtime of every file of the base and the workspace)."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_cli import assert_user_error, run_cli
from test_patch import (  # noqa: F401
    base_checkpoint,
    bases_root,
    bases_untouched,
    make_edit,
    make_workspace,
    snapshot,
)

from swe_cli.edit import EDIT_FILE, EDIT_FORMAT, edit_sha256, save_edit
from swe_cli.io.checkpoint import INDEX_NAME, checkpoint_layout
from swe_cli.io.safetensors import read_header
from swe_cli.stages.apply import EDIT_DIR, PROVENANCE_FILE, apply_edit
from swe_cli.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]


@contextmanager
def unchanged(*folders: Path) -> Iterator[None]:
    """Every file under `folders` has the same content, size and mtime afterwards."""
    before = {folder: snapshot(folder) for folder in folders}
    yield
    for folder in folders:
        assert snapshot(folder) == before[folder], f"{folder} changed"


@pytest.fixture()
def base(bases_root: Path, tmp_path: Path) -> Path:  # noqa: F811
    """A private copy of the tiny bf16 llama (tests may plant files in it)."""
    target = tmp_path / "base"
    shutil.copytree(base_checkpoint("llama", bases_root), target)
    return target


@pytest.fixture()
def workspace(base: Path, tmp_path: Path) -> Workspace:
    """A solved workspace whose solve record names its edit, as `swe solve` writes it."""
    space = make_workspace(tmp_path / "ws", base, "llama", with_eval=False)
    digest = edit_sha256(make_edit(base, "llama"))
    summary = yaml.safe_load((space.edit_dir / "edit.yaml").read_text())
    (space.edit_dir / "edit.yaml").write_text(yaml.safe_dump({**summary, "edit_sha256": digest}))
    space.record_stage("solve", {"method": "paper", "rank": 32}, {"edit_sha256": digest})
    return space


@pytest.fixture()
def edit_dir(base: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "edit"
    save_edit(make_edit(base, "llama"), folder)
    return folder


def swe(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str | Path):
    return run_cli([str(arg) for arg in args], monkeypatch, capsys)


# -- 1. verify lists every file of OUT ------------------------------------------------------------
@pytest.mark.parametrize(
    "planted",
    ["model.safetensors", "pytorch_model.bin", "modeling_llama.py", ".hidden", ".cache/x.bin"],
)
def test_verify_names_a_planted_file(
    planted: str,
    base: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    out = tmp_path / "out"
    apply_edit(make_edit(base, "llama"), base, out, provenance={}, device="cpu")
    (out / planted).parent.mkdir(parents=True, exist_ok=True)
    (out / planted).write_bytes(b"planted")
    with unchanged(base, out):
        code, stdout, stderr = swe(monkeypatch, capsys, "verify", out, "--base", base, "-q")
    assert code == 1 and stdout == ""
    lines = stderr.strip().splitlines()
    top = planted.split("/")[0]
    assert len(lines) == 1 and lines[0].startswith(f"mismatch: {out / top}"), stderr


def test_verify_names_a_symlink_in_the_output(
    base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    apply_edit(make_edit(base, "llama"), base, out, provenance={}, device="cpu")
    (out / "extra.json").symlink_to(out / "config.json")  # a link out of OUT is an error
    with unchanged(base, out):
        code, _, stderr = swe(monkeypatch, capsys, "verify", out, "--base", base, "-q")
    assert (
        code == 1
        and stderr.strip() == f"mismatch: {out / 'extra.json'}: a symbolic link, not written by swe"
    )


# -- 2. no writing mode overlaps the base, the workspace or the edit ----------------------------
@pytest.mark.parametrize(
    ("mode", "target", "expected"),
    [
        ("edit-only", "base", "overlaps the base model folder"),
        ("edit-only", "base/sub", "overlaps the base model folder"),
        ("edit-only", "ws/edit", "overlaps the workspace"),
        ("edit-only", "ws", "overlaps the workspace"),
        ("full", "ws/edit", "overlaps the workspace"),
        ("full", "ws", "overlaps the workspace"),
        ("artifact", "edit", "overlaps the edit folder"),
    ],
)
def test_output_never_overlaps_what_is_read(
    mode: str,
    target: str,
    expected: str,
    base: Path,
    workspace: Workspace,
    edit_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    output = tmp_path / target
    args: list[str | Path] = ["apply", "-o", output, "--force", "--device", "cpu"]
    if mode == "artifact":
        args += ["--edit", edit_dir, "--base", base]
    else:
        args += ["-w", workspace.root] + (["--edit-only"] if mode == "edit-only" else [])
    with unchanged(base, workspace.root, edit_dir):
        result = swe(monkeypatch, capsys, *args)
    assert_user_error(result, expected)


# -- 3. an interrupted solve is never shipped under the previous record --------------------------
def test_edit_replaced_by_a_killed_solve_is_refused(
    base: Path,
    workspace: Workspace,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    """kill -9 after edit.safetensors was renamed, before the manifest was updated."""
    save_edit(make_edit(base, "llama", seed=7), workspace.edit_dir)
    for extra in ([], ["--edit-only"]):
        with unchanged(base, workspace.root):
            result = swe(
                monkeypatch, capsys, "apply", "-w", workspace.root, "-o", tmp_path / "out", *extra
            )
        assert_user_error(result, "not the edit the last finished solve recorded")
        assert not (tmp_path / "out").exists()


def test_stage_marked_running_is_refused(
    base: Path,
    workspace: Workspace,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    """kill -9 anywhere between a solve's first write and its record."""
    workspace.begin_stage("solve")
    with unchanged(base, workspace.root):
        result = swe(monkeypatch, capsys, "apply", "-w", workspace.root, "-o", tmp_path / "out")
    assert_user_error(result, "stage 'solve' started at", "did not finish")


def test_localize_refuses_a_probe_that_did_not_finish(
    workspace_copy: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A re-probe killed midway leaves 'running', not the previous run's 'done'."""
    Workspace(workspace_copy).begin_stage("probe")
    with unchanged(workspace_copy):
        result = swe(monkeypatch, capsys, "localize", "-w", workspace_copy)
    assert_user_error(result, "stage 'probe' started at", "did not finish")


# -- 4. apply --force keeps the previous output recoverable -----------------------------------
KILL_BETWEEN_RENAMES = """
import os, signal, sys
real = os.rename
def rename(source, target, *args, **kwargs):
    if str(source).endswith(".tmp") and str(target) == sys.argv[-1]:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(source, target, *args, **kwargs)
os.rename = rename
from swe_cli.cli import main
sys.argv = ["swe", "apply", "-w", sys.argv[1], "--force", "--device", "cpu", "-o", sys.argv[-1]]
main()
"""


def test_force_killed_between_renames_keeps_the_previous_output(
    base: Path,
    workspace: Workspace,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    out = tmp_path / "out"
    code, _, _ = swe(
        monkeypatch, capsys, "apply", "-w", workspace.root, "-o", out, "--device", "cpu"
    )
    assert code == 0
    (out / "notes.txt").write_text("the user's own notes")  # only the old output has this
    previous = snapshot(out)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    killed = subprocess.run(
        [sys.executable, "-c", KILL_BETWEEN_RENAMES, str(workspace.root), str(out)],
        env=env,
        capture_output=True,
        check=False,
        timeout=120,
    )
    assert killed.returncode == -9, killed.stderr
    assert not out.exists()
    kept = [p for p in tmp_path.iterdir() if p.name.startswith(".out.swe-previous-")]
    assert len(kept) == 1 and snapshot(kept[0]) == previous
    with unchanged(base, kept[0]):  # the next run, even a failing one, never deletes it
        result = swe(monkeypatch, capsys, "apply", "-w", workspace.root, "-o", out, "--force")
    assert_user_error(result, f"{out} is missing", f"kept at {kept[0]}")
    assert not out.exists()
    kept[0].rename(out)
    assert snapshot(out) == previous


# -- 5. links leaving a folder are refused -------------------------------------------------------
@pytest.fixture()
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "secret" / "id_rsa"
    path.parent.mkdir()
    path.write_text("-----BEGIN PRIVATE KEY-----")
    return path


@pytest.mark.parametrize(
    ("where", "name"),
    [
        ("base", "notes.txt"),
        ("base", "tokenizer_config.json"),
        ("edit", "eval_report.md"),
        ("edit", PROVENANCE_FILE),
    ],
)
def test_link_leaving_the_folder_is_refused(
    where: str,
    name: str,
    secret: Path,
    base: Path,
    edit_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    folder = base if where == "base" else edit_dir
    (folder / name).unlink(missing_ok=True)
    (folder / name).symlink_to(secret)
    out = tmp_path / "out"
    with unchanged(base, edit_dir, secret.parent):
        result = swe(monkeypatch, capsys, "apply", "--edit", edit_dir, "--base", base, "-o", out)
    assert_user_error(result, f"{folder / name}: symbolic link to {secret}", "refusing to read it")
    assert not out.exists() and not any(p.name.startswith(".out") for p in tmp_path.iterdir())


def test_edit_file_linked_from_elsewhere_is_refused(
    base: Path,
    edit_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / EDIT_FILE).symlink_to(edit_dir / EDIT_FILE)
    with unchanged(base, edit_dir):
        result = swe(
            monkeypatch, capsys, "apply", "--edit", linked, "--base", base, "-o", tmp_path / "out"
        )
    assert_user_error(result, "symbolic link to", "refusing to read it")


def test_hub_cache_snapshot_links_into_blobs_are_followed(
    base: Path,
    edit_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    """A Hub snapshot is links into ../../blobs: that is the one place links may point."""
    repo = tmp_path / "hub" / "models--org--tiny"
    snapshot_dir, blobs = repo / "snapshots" / "abc123", repo / "blobs"
    blobs.mkdir(parents=True)
    snapshot_dir.mkdir(parents=True)
    for file in base.iterdir():
        shutil.copyfile(file, blobs / file.name)
        (snapshot_dir / file.name).symlink_to(Path("../../blobs") / file.name)
    out = tmp_path / "out"
    with unchanged(repo):
        code, _, stderr = swe(
            monkeypatch,
            capsys,
            "apply",
            "--edit",
            edit_dir,
            "--base",
            snapshot_dir,
            "-o",
            out,
            "--device",
            "cpu",
        )
        assert code == 0, stderr
        code, _, stderr = swe(monkeypatch, capsys, "verify", out, "--base", snapshot_dir)
    assert code == 0, stderr
    assert not any(path.is_symlink() for path in out.rglob("*"))


# -- 6. headers as strict as the safetensors library -------------------------------------------
def rewrite_header(shard: Path, change) -> None:  # noqa: ANN001
    data = shard.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    header.pop("__metadata__", None)
    change(header)
    text = json.dumps(header, separators=(",", ":")).encode()
    assert len(text) <= length
    shard.write_bytes(data[:8] + text.ljust(length) + data[8 + length :])


def overlap(header: dict) -> None:
    names = sorted((n for n in header), key=lambda n: header[n]["data_offsets"][0])
    first, second = names[0], names[1]
    size = header[second]["data_offsets"][1] - header[second]["data_offsets"][0]
    start = header[first]["data_offsets"][0]
    header[second]["data_offsets"] = [start, start + size]


def deep_json(shard: Path) -> None:
    text = b"[" * 100_000 + b"]" * 100_000
    shard.write_bytes(struct.pack("<Q", len(text)) + text)


def index_entry(base: Path, path: str) -> None:
    index = json.loads((base / INDEX_NAME).read_text())
    name = next(iter(index["weight_map"]))
    index["weight_map"][name] = path
    (base / INDEX_NAME).write_text(json.dumps(index))


def metadata_values(shard: Path) -> None:
    data = shard.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    header["__metadata__"] = {"format": {"nested": [1, 2]}}
    text = json.dumps(header, separators=(",", ":")).encode()
    shard.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + length :])


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("overlap", "it overlaps"),
        ("deep", "not valid JSON (nested too deeply)"),
        ("parent-path", "points outside the model folder ('../x.safetensors')"),
        ("absolute-path", "points outside the model folder ('/etc/x.safetensors')"),
        ("metadata", "__metadata__ is not a map of strings"),
    ],
)
def test_hostile_base_header_is_a_named_error(
    damage: str,
    expected: str,
    base: Path,
    edit_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    shard = base / checkpoint_layout(base).weights[0]
    if damage == "overlap":
        rewrite_header(shard, overlap)
    elif damage == "deep":
        deep_json(shard)
    elif damage == "parent-path":
        index_entry(base, "../x.safetensors")
    elif damage == "absolute-path":
        index_entry(base, "/etc/x.safetensors")
    else:
        metadata_values(shard)
    with unchanged(base, edit_dir):
        result = swe(
            monkeypatch, capsys, "apply", "--edit", edit_dir, "--base", base, "-o", tmp_path / "out"
        )
    assert_user_error(result, expected)
    assert not (tmp_path / "out").exists()


def write_hostile_edit(
    folder: Path, base: Path, *, cols: list[int] | None = None, shape=None, tensors=None
) -> None:  # noqa: ANN001
    """An edit.safetensors written by hand (numpy), as an attacker would."""
    from safetensors.numpy import save_file

    item = make_edit(base, "llama").tensors[2]  # down_proj, restricted to columns
    chosen = np.asarray(cols if cols is not None else item.cols.tolist(), dtype=np.int64)
    layout = {
        item.name: {
            "shape": shape or list(item.shape),
            "dtype": item.dtype,
            "base_sha256": item.base_sha256,
        }
    }
    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {
            f"{item.name}::rows": item.rows.numpy(),
            f"{item.name}::cols": chosen,
            f"{item.name}::delta": np.zeros((len(item.rows), len(chosen)), dtype=np.float32),
        },
        str(folder / EDIT_FILE),
        metadata={"format": EDIT_FORMAT, "tensors": tensors or json.dumps(layout)},
    )


@pytest.mark.parametrize(
    ("hostile", "expected"),
    [
        ({"cols": [-1, 0]}, "column index out of range"),
        ({"cols": [3, 3]}, "duplicate column indices"),
        ({"cols": [10_000]}, "column index out of range"),
        ({"shape": [48]}, "only 2-D weights are edited"),
        ({"tensors": "{not json"}, "'tensors' metadata is not a valid JSON layout"),
        ({"tensors": "[" * 100_000 + "]" * 100_000}, "not a valid JSON layout"),
    ],
)
def test_hostile_edit_is_a_named_error(
    hostile: dict,
    expected: str,
    base: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    edit = tmp_path / "hostile"
    write_hostile_edit(edit, base, **hostile)
    with unchanged(base, edit):
        result = swe(
            monkeypatch, capsys, "apply", "--edit", edit, "--base", base, "-o", tmp_path / "out"
        )
    assert_user_error(result, expected)
    assert not (tmp_path / "out").exists()


def test_verify_refuses_negative_columns(
    base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """numpy would read cols [-1, 0] as the last and first column, and verify would agree."""
    out = tmp_path / "out"
    apply_edit(make_edit(base, "llama"), base, out, provenance={}, device="cpu")
    write_hostile_edit(out / EDIT_DIR, base, cols=[-1, 0])
    with unchanged(base, out):
        result = swe(monkeypatch, capsys, "verify", out, "--base", base, "-q")
    assert_user_error(result, "column index out of range")


# -- 8. the output follows the umask ------------------------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_output_permissions_follow_the_umask(
    umask: int,
    base: Path,
    workspace: Workspace,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    previous = os.umask(umask)
    try:
        for extra, out in (([], tmp_path / "out"), (["--edit-only"], tmp_path / "edit-out")):
            with unchanged(base):
                code, _, stderr = swe(
                    monkeypatch,
                    capsys,
                    "apply",
                    "-w",
                    workspace.root,
                    "-o",
                    out,
                    "--device",
                    "cpu",
                    *extra,
                )
            assert code == 0, stderr
            assert out.stat().st_mode & 0o777 == 0o777 & ~umask
            for path in out.rglob("*"):
                expected = (0o777 if path.is_dir() else 0o666) & ~umask
                assert path.stat().st_mode & 0o777 == expected, path
    finally:
        os.umask(previous)
    assert read_header(tmp_path / "out" / EDIT_DIR / EDIT_FILE).metadata


# -- 7. every option is checked before any work --------------------------------------------------
def align_args(base: Path, tmp_path: Path, prompt_files: dict[str, Path], *extra: str) -> list:
    return [
        "align",
        base,
        "--langs",
        "es,sw",
        "-o",
        tmp_path / "aligned",
        "-w",
        tmp_path / "align-ws",
        "--harmful",
        prompt_files["harmful"],
        "--harmless",
        prompt_files["harmless"],
        *extra,
    ]


def probe_args(base: Path, tmp_path: Path, prompt_files: dict[str, Path], *extra: str) -> list:
    return [
        "probe",
        base,
        "-w",
        tmp_path / "probe-ws",
        "--langs",
        "es,sw",
        "--harmful",
        prompt_files["harmful"],
        "--harmless",
        prompt_files["harmless"],
        *extra,
    ]


@pytest.mark.parametrize(
    ("command", "extra", "expected"),
    [
        ("align", ["--set", "solve.method=bogus"], "unknown method 'bogus'"),
        ("align", ["--set", "solve.projections=down"], "unknown projections 'down'"),
        ("align", ["--dry-run", "--method", "bogus"], "unknown method 'bogus'"),
        ("align", ["--set", "solve.rank=0"], "'solve.rank' has a bad value 0"),
        ("align", ["--dtype", "float64"], "unknown --dtype 'float64'"),
        ("probe", ["--dtype", "bogus"], "unknown --dtype 'bogus'"),
        ("probe", ["--device", "tpu:7"], "unknown --device 'tpu:7'"),
    ],
)
def test_bad_option_fails_before_any_work(
    command: str,
    extra: list[str],
    expected: str,
    base: Path,
    prompt_files: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    make = align_args if command == "align" else probe_args
    with unchanged(base, prompt_files["harmful"].parent):
        result = swe(monkeypatch, capsys, *make(base, tmp_path, prompt_files, *extra))
    assert_user_error(result, expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base"]  # no workspace, no output


def test_align_onto_its_own_base_fails_before_any_work(
    base: Path,
    prompt_files: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    args = align_args(base, tmp_path, prompt_files, "--force")
    args[args.index("-o") + 1] = base
    with unchanged(base):
        result = swe(monkeypatch, capsys, *args)
    assert_user_error(result, "overlaps the base model folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base"]


@pytest.mark.parametrize("command", ["align", "probe"])
def test_target_language_equal_to_the_hrl_fails_before_any_work(
    command: str,
    base: Path,
    prompt_files: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    args = (align_args if command == "align" else probe_args)(base, tmp_path, prompt_files)
    args[args.index("--langs") + 1] = "en"
    with unchanged(base):
        result = swe(monkeypatch, capsys, *args)
    assert_user_error(result, "--langs en includes the HRL 'en'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base"]


def test_missing_gpu_fails_before_any_work(
    base: Path,
    prompt_files: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with unchanged(base):
        result = swe(
            monkeypatch, capsys, *probe_args(base, tmp_path, prompt_files, "--device", "cuda")
        )
    assert_user_error(result, "--device cuda asked for, but torch sees no such device")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base"]


def test_solve_rank_zero_is_refused(
    base: Path,
    workspace: Workspace,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    """--rank 0 used to mean "the default" silently."""
    with unchanged(base, workspace.root):
        code, _, err = swe(monkeypatch, capsys, "solve", "-w", workspace.root, "--rank", "0")
    assert code == 2  # a usage error: click's usage line and the option's name
    assert "Invalid value for '--rank': 0 (Input should be greater than or equal to 1)" in err


def test_disk_full_is_one_named_error(
    base: Path,
    workspace: Workspace,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    import errno

    import swe_cli.io.files as files

    def full(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files, "copy_stream", full)
    with unchanged(base, workspace.root):
        result = swe(monkeypatch, capsys, "apply", "-w", workspace.root, "-o", tmp_path / "out")
    assert_user_error(result, "no space left on the disk")
    assert not (tmp_path / "out").exists()


def test_space_precheck_prints_readable_sizes(
    base: Path,
    workspace: Workspace,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    """A tiny checkpoint used to print "0.0 GB needed, 0.0 GB free"."""
    import swe_cli.stages.apply as patch

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(patch.shutil, "disk_usage", lambda _: usage._replace(free=1234))
    with unchanged(base, workspace.root):
        result = swe(monkeypatch, capsys, "apply", "-w", workspace.root, "-o", tmp_path / "out")
    assert_user_error(result, " kB needed, 1.2 kB free")
    assert "0.0 GB" not in result[2]


def test_changed_model_names_the_change_not_the_same_id_twice(
    base: Path,
    workspace: Workspace,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 1e-3}))
    with unchanged(base, workspace.root):
        result = swe(monkeypatch, capsys, "apply", "-w", workspace.root, "-o", tmp_path / "out")
    assert_user_error(result, f"was made with '{base}'", "its weights or config changed")
    assert "not to" not in result[2]
