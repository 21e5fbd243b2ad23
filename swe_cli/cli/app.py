"""The Typer app, its global options (--debug, --version; --json and --quiet through the shared
options of every command), terminal output, and the single error boundary: every SweError is
printed once as one red line plus a hint; tracebacks only with --debug."""

from __future__ import annotations

import errno
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from swe_cli import __version__
from swe_cli.errors import SweError

app = typer.Typer(
    name="swe",
    help="Close the multilingual safety gap of open-weight LLMs with a sparse, closed-form weight edit.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)
out = Console()
STATE: dict[str, bool] = {"debug": False, "quiet": False, "json": False}
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def set_quiet(value: bool) -> bool:
    """Option callback of --quiet."""
    STATE["quiet"] = STATE["quiet"] or value
    return value


def set_json(value: bool) -> bool:
    """Option callback of --json: machine-readable stdout implies no progress or tables."""
    STATE["json"] = value
    STATE["quiet"] = STATE["quiet"] or value
    return value


@contextmanager
def progress_bar(enabled: bool = True) -> Iterator[Callable[[str, int, int], None]]:
    """A rich progress display on stderr; yields a callback(label, done, total)."""
    if not enabled or STATE["quiet"]:
        yield lambda label, done, total: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    tasks: dict[str, Any] = {}
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
    ) as progress:

        def update(label: str, done: int, total: int) -> None:
            if label not in tasks:
                tasks[label] = progress.add_task(label, total=total)
            progress.update(tasks[label], completed=done, total=total)

        yield update


def emit(summary: dict[str, Any], as_json: bool | None = None) -> None:
    """The command's summary as JSON on stdout when --json was given."""
    if STATE["json"] if as_json is None else as_json:
        sys.stdout.write(json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")


def info(message: str) -> None:
    if not STATE["quiet"]:
        err.print(message)


def show(renderable: Any) -> None:
    """A rich table (or anything rich renders) on stderr, unless quiet."""
    if not STATE["quiet"]:
        err.print(renderable)


def problem(message: str) -> None:
    err.print(message, style="bold red", highlight=False, markup=False, soft_wrap=True)


@app.callback(invoke_without_command=True)
def root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    STATE["debug"] = debug
    STATE["quiet"] = STATE["json"] = False
    if version:
        out.print(f"swe {__version__}")
        raise typer.Exit()


def _fail(message: str, hint: str | None) -> None:
    err.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)
    if hint:
        err.print(f"[yellow]hint:[/yellow] {escape(hint)}", highlight=False, soft_wrap=True)


def main() -> None:
    """Console entry point: run the app, turning SweError into one red line and exit code 1."""
    STATE.update(debug=False, quiet=False, json=False)  # a fresh run (main may run in-process)
    try:
        code = app(standalone_mode=False)
    except SweError as error:
        if STATE["debug"]:
            raise
        _fail(error.message, error.hint)
        sys.exit(1)
    except KeyboardInterrupt:
        err.print(
            "[bold red]interrupted[/bold red]: finished shards are kept; re-run the same command to resume"
        )
        sys.exit(130)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except typer.Abort:
        sys.exit(1)
    except Exception as error:  # noqa: BLE001 - click usage errors and the unexpected
        import click
        from pydantic import ValidationError

        from swe_cli.settings import describe

        if isinstance(error, ValidationError) and not STATE["debug"]:
            _fail(f"invalid option: {describe(error)}", "see the command's --help for its values")
            sys.exit(1)
        if isinstance(error, OSError) and error.errno in DISK_FULL and not STATE["debug"]:
            where = f" while writing {error.filename}" if error.filename else ""
            _fail(
                f"no space left on the disk{where}",
                "free disk space or choose another -o/-w; re-run the same command to resume "
                "(finished shards are kept, a partial output is removed)",
            )
            sys.exit(1)

        if isinstance(error, click.ClickException):
            error.show()
            sys.exit(error.exit_code)
        if STATE["debug"]:
            raise
        err.print(
            f"[bold red]error:[/bold red] unexpected {type(error).__name__}: {escape(str(error))}",
            highlight=False,
        )
        err.print(
            "[yellow]hint:[/yellow] re-run with --debug for the traceback and report it",
            highlight=False,
        )
        sys.exit(1)
    # standalone_mode=False returns the code of a typer.Exit instead of raising it
    sys.exit(code if isinstance(code, int) else 0)
