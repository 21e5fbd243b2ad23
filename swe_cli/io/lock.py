"""Exclusive locks on the folders swe writes (a workspace, an output and its candidate and
temporary names): an OS file lock (flock) on a small lock file in a per-user lock folder, keyed by
the folder's absolute path, released by the kernel when the holder exits or is killed, so there
is no stale lock to guess about. The holder writes its PID
into the lock file, so a second writer can say who holds it. Locks are re-entrant within one
process (align holds the workspace's lock while the stages it calls take it again)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from swe_cli.errors import BusyError, SweError

LOCK_DIR_ENV = "SWE_LOCK_DIR"
WAIT_ENV = "SWE_WAIT_FOR_LOCK"  # "1": wait for the holder instead of exiting
_held: dict[str, int] = {}  # lock file -> depth of nested holds in this process
_guard = threading.Lock()


def lock_dir() -> Path:
    """Where lock files live: one folder per user under the system's temporary folder
    ($SWE_LOCK_DIR overrides), so that no lock file is ever written beside or inside a user's
    folders (a base model, a workspace, an output's parent)."""
    configured = os.environ.get(LOCK_DIR_ENV)
    return (
        Path(configured) if configured else Path(tempfile.gettempdir()) / f"swe-locks-{os.getuid()}"
    )


def lock_file(folder: Path) -> Path:
    """The lock file of a folder, named by the hash of its absolute path (the folder may not
    exist yet: an output's lock also covers its candidate and temporary names)."""
    resolved = str(Path(folder).expanduser().resolve())
    return lock_dir() / f"{hashlib.sha256(resolved.encode()).hexdigest()[:32]}.lock"


def _holder(descriptor: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        text = os.pread(descriptor, 32, 0).decode().split("\n", 1)[0].strip()
        if text.isdigit():
            return f"PID {text}"
    return "PID unknown"


def _open(lock_file: Path, what: str) -> int:
    """The lock file, opened for writing its holder's PID. The folder must be a real folder of
    this user that nobody else can write, and the file no link: in a shared temporary folder
    another user could otherwise plant a link that makes swe overwrite one of your files."""
    try:
        lock_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        status = os.lstat(lock_file.parent)
        if (
            not stat.S_ISDIR(status.st_mode)
            or status.st_uid != os.getuid()
            or status.st_mode & 0o022
        ):
            raise SweError(
                f"lock folder {lock_file.parent} is not a private folder of this user",
                hint=f"remove it, or set {LOCK_DIR_ENV} to a folder only you can write",
            )
        return os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as error:
        raise SweError(
            f"cannot create the lock file of {what} in {lock_file.parent} "
            f"({error.strerror or type(error).__name__})",
            hint=f"set {LOCK_DIR_ENV} to a writable local folder",
        ) from None


@contextlib.contextmanager
def exclusive(lock_file: Path, what: str, wait: bool | None = None) -> Iterator[None]:
    """Hold the lock of `what` (e.g. "workspace /x") while the block runs. Taken by another
    process: BusyError naming its PID, or with wait (default: $SWE_WAIT_FOR_LOCK=1) block until
    it is released."""
    lock_file = Path(lock_file)
    key = str(lock_file.absolute())
    with _guard:
        if key in _held:
            _held[key] += 1
            nested = True
        else:
            nested = False
    if nested:
        try:
            yield
        finally:
            with _guard:
                _held[key] -= 1
        return
    if wait is None:
        wait = os.environ.get(WAIT_ENV, "") == "1"
    descriptor = _open(lock_file, what)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise BusyError(
                    f"{what} is in use by another swe process ({_holder(descriptor)})",
                    hint=f"wait until it finishes (or set {WAIT_ENV}=1 to wait for it), or use "
                    "another folder",
                ) from None
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n{what}\n".encode(), 0)
        with _guard:
            _held[key] = 1
        try:
            yield
        finally:
            with _guard:
                del _held[key]
    finally:
        os.close(descriptor)  # releases the flock


def lock_workspace(
    root: Path, create: bool = False, wait: bool | None = None
) -> contextlib.AbstractContextManager[None]:
    """The workspace's lock; a folder that does not exist is not created for it (the stage then
    says it is not a workspace) unless `create` (probe, align)."""
    if not create and not Path(root).is_dir():
        return contextlib.nullcontext()
    return exclusive(lock_file(root), f"workspace {root}", wait)


def lock_output(output: Path, wait: bool | None = None) -> contextlib.AbstractContextManager[None]:
    return exclusive(lock_file(output), f"output {output}", wait)
