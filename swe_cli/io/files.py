"""Files written so that a reader sees the old state or the new one, never half: a file is written
under a temporary name beside it, fsynced and renamed; a folder is built as a hidden temporary
folder beside its target and renamed into place, an existing target being moved aside under its
own name until the new one is in place. Everything created follows the umask. Links that leave a
folder are refused, so nothing outside it is read as if it were part of it. Whole files are
copied in the kernel (copy_file_range) on a small thread pool."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from swe_cli.errors import CheckpointError, SweError

COPY_CHUNK = 64 * 1024 * 1024  # bytes per copy_file_range call
READ_CHUNK = 8 * 1024 * 1024  # bytes per read when the kernel cannot copy
MiB = 1024 * 1024

Progress = Callable[[str, int, int], None]  # (label, done, total)
PREVIOUS_MARK = ".swe-previous-"  # .OUT.swe-previous-PID: a folder replaced by move_into_place


# -- single files -------------------------------------------------------------------------------
def current_umask() -> int:
    """The process umask, read without changing it where /proc allows."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync it and rename it into place. The
    file gets the permissions a plain open() would (mkstemp makes 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".tmp", dir=path.parent
    )
    os.fchmod(descriptor, 0o666 & ~current_umask())
    os.close(descriptor)
    temporary_path = Path(temporary)
    try:
        yield temporary_path
        with temporary_path.open("rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary_path, path)
    finally:
        temporary_path.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)


def fsync_file(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_directory(path: Path) -> None:
    """Make a rename inside `path` durable; a filesystem that cannot fsync folders is skipped."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def sync_tree(folder: Path) -> None:
    """fsync every file, then every folder. Writeback has been running since the first byte was
    written; several fsyncs in flight keep the disk's queue full, as one `sync` would."""
    files = [Path(d) / name for d, _, names in os.walk(folder) for name in names]
    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="swe-fsync") as pool:
        list(pool.map(fsync_file, files))
    for directory, _, _ in os.walk(folder):
        fsync_directory(Path(directory))


# -- folders ------------------------------------------------------------------------------------
def temporary_folder(output: Path) -> Path:
    """A fresh hidden folder beside `output` (same filesystem, so the final rename is atomic),
    with the permissions of a plain mkdir; leftovers of killed runs (their process is gone) are
    removed first."""
    output.parent.mkdir(parents=True, exist_ok=True)
    for stale in output.parent.glob(f".{output.name}.swe-*.tmp"):
        pid = stale.name[len(f".{output.name}.swe-") :].split("-", 1)[0]
        if pid.isdigit() and not alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    prefix = f".{output.name}.swe-{os.getpid()}-"
    folder = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=output.parent))
    os.chmod(folder, 0o777 & ~current_umask())  # mkdtemp makes 0700
    return folder


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def move_into_place(temporary: Path, output: Path, replace: bool) -> None:
    """Rename the finished folder to `output`. An existing output (with `replace`) is first
    renamed to .OUT.swe-previous-PID (never taken for a temporary folder) and deleted only once
    the new one is in place; if the process dies in between, check_previous says where it is."""
    previous = None
    if output.exists() and replace:
        previous = output.parent / f".{output.name}{PREVIOUS_MARK}{os.getpid()}"
        os.rename(output, previous)
    try:
        os.rename(temporary, output)
    except OSError:
        if previous is not None:
            os.rename(previous, output)
        raise CheckpointError(
            f"{output}: cannot move the finished folder into place", hint="check permissions"
        ) from None
    fsync_directory(output.parent)
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)


def previous_folders(output: Path) -> list[Path]:
    """Outputs moved aside by move_into_place in processes that are no longer running."""
    found = []
    for folder in output.parent.glob(f".{output.name}{PREVIOUS_MARK}*"):
        pid = folder.name[len(f".{output.name}{PREVIOUS_MARK}") :]
        if pid.isdigit() and not alive(int(pid)):
            found.append(folder)
    return sorted(found)


def check_previous(output: Path) -> None:
    """A run killed between moving the old output aside and moving the new one in leaves the old
    output under its own name. Without a new output it is the user's only copy (refuse, and say
    where it is); with one, its deletion was the only step left."""
    for previous in previous_folders(output):
        if not (output.exists() or output.is_symlink()):
            raise CheckpointError(
                f"{output} is missing: the output that an interrupted `--force` run replaced is "
                f"kept at {previous}",
                hint=f"restore it (mv {previous} {output}) or delete it, then re-run",
            )
        shutil.rmtree(previous, ignore_errors=True)


def check_overlap(output: Path, protected: Sequence[tuple[str, Path]]) -> None:
    """The output may not be, contain or sit inside a folder swe reads from (the base model, the
    workspace, the edit): --force would delete it."""
    resolved = output.resolve()
    for what, folder in protected:
        guarded = folder.resolve()
        if resolved == guarded or guarded in resolved.parents or resolved in guarded.parents:
            raise CheckpointError(
                f"{output}: the output overlaps the {what} {folder}",
                hint=f"choose an -o/--output outside the {what}",
            )


def human_size(count: float) -> str:
    """1234 -> '1.2 kB', 5e9 -> '5.0 GB' (decimal units, as df -H)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if count < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"


# -- copies ------------------------------------------------------------------------------------
# -- files --------------------------------------------------------------------------------------
class Transfer:
    """Copies and hard-links files on a small thread pool (the copy runs in the kernel, with
    copy_file_range, outside the GIL), counts bytes for progress, and stops early on failure."""

    def __init__(self, workers: int) -> None:
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="swe-copy")
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.done = 0

    def __enter__(self) -> Transfer:
        return self

    def __exit__(self, kind: Any, value: Any, traceback: Any) -> None:
        if kind is not None:
            self.stop.set()
        self.pool.shutdown(wait=True, cancel_futures=kind is not None)

    def copy(self, source: Path, target: Path) -> Future[bool]:
        return self.pool.submit(self._copy, source, target)

    def link(self, source: Path, target: Path) -> Future[bool]:
        """Future of True when hard-linked, False when copied (other filesystem)."""
        return self.pool.submit(self._link, source, target)

    def wait(
        self, futures: list[Future[bool]], progress: Progress | None = None, total: int = 0
    ) -> None:
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.2, return_when=FIRST_EXCEPTION)
            for future in done:
                future.result()
            if progress:
                progress("copy (MiB)", self.done // MiB, total // MiB)

    def _advance(self, count: int) -> None:
        with self.lock:
            self.done += count

    def _link(self, source: Path, target: Path) -> bool:
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source.resolve(), target)
            return True
        except OSError:
            self._copy(source, target)
            return False

    def _copy(self, source: Path, target: Path) -> bool:
        target.parent.mkdir(parents=True, exist_ok=True)
        with source.open("rb") as reader, target.open("xb") as writer:
            copy_stream(reader.fileno(), writer.fileno(), self.stop, self._advance)
        return True


def copy_stream(
    source: int, target: int, stop: threading.Event, advance: Callable[[int], None]
) -> None:
    """Copy a whole file between descriptors: copy_file_range (in-kernel, reflinks where the
    filesystem can), else plain reads and writes."""
    size = os.fstat(source).st_size
    offset = 0
    fast = hasattr(os, "copy_file_range")
    while offset < size:
        if stop.is_set():
            raise InterruptedError("copy stopped")
        count = min(COPY_CHUNK, size - offset)
        if fast:
            try:
                moved = os.copy_file_range(source, target, count, offset, offset)
            except OSError as error:
                if error.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                fast = False
                continue
        else:
            data = os.pread(source, min(count, READ_CHUNK), offset)
            moved = os.pwrite(target, data, offset) if data else 0
        if moved <= 0:
            raise CheckpointError(f"file shrank while copying (at byte {offset} of {size})")
        offset += moved
        advance(moved)


# -- links --------------------------------------------------------------------------------------
def link_roots(folder: Path) -> list[Path]:
    """Where links inside `folder` may point: the folder itself and, for a Hugging Face cache
    snapshot (models--org--name/snapshots/<commit>), the repo's blobs folder."""
    roots = [folder.resolve()]
    if folder.parent.name == "snapshots":
        roots.append((folder.parent.parent / "blobs").resolve())
    return roots


def inside(path: Path, roots: Sequence[Path]) -> bool:
    """True when `path`, with every link resolved, lies inside one of `roots`."""
    target = path.resolve()
    return any(target == root or root in target.parents for root in roots)


def check_inside(path: Path, folder: Path, error: type[SweError] = CheckpointError) -> None:
    """Refuse a file that is (or sits under) a link leaving `folder`: it would be read, copied
    into an output and pushed to the Hub as if it were part of the model."""
    if not inside(path, link_roots(folder)):
        raise error(
            f"{path}: symbolic link to {path.resolve()}, outside {folder}; refusing to read it",
            hint="replace the link with the file itself, or remove it",
        )
