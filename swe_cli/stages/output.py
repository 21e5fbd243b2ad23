"""The output-folder guard of every stage that writes a model or an edit folder: the output may
not overlap the base or the workspace, an existing one needs --force, and only a model or edit
folder is ever replaced."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from swe_cli.edit import EDIT_FILE
from swe_cli.errors import CheckpointError
from swe_cli.hub import PROVENANCE_FILE
from swe_cli.io.files import check_overlap, check_previous


def check_output(output: Path, protected: Sequence[tuple[str, Path]], force: bool) -> None:
    """check_overlap; then an existing output needs --force, and only a model or edit folder
    is ever replaced."""
    check_overlap(output, protected)
    check_previous(output)
    if not (output.exists() or output.is_symlink()):
        return
    if not force:
        raise CheckpointError(
            f"{output} already exists", hint="pass --force to replace it, or choose another -o"
        )
    if output.is_symlink() or not output.is_dir() or not _replaceable(output):
        raise CheckpointError(
            f"{output} exists and is not a model or edit folder; refusing to replace it",
            hint="remove it yourself or choose another -o/--output",
        )


def _replaceable(folder: Path) -> bool:
    markers = ("config.json", PROVENANCE_FILE, EDIT_FILE)
    return not any(folder.iterdir()) or any((folder / marker).exists() for marker in markers)
