"""The Typer app, its global options (--debug, --version; --json and --quiet through the shared
options of every command), terminal output, and the single error boundary: every SweError is
printed once as one red line plus a hint; tracebacks only with --debug."""

from __future__ import annotations

import errno
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup, TyperOption

from swe_cli import __version__
from swe_cli.errors import SweError

if TYPE_CHECKING:
    from swe_cli.pipeline import Ui

# The panels of `swe --help`, in the order they are shown.
STAGES = "Pipeline stages (run in this order, sharing a workspace)"
ONE_SHOT = "One-shot commands"
ARTIFACTS = "Artifacts: apply, check and measure an edit"


def plain_metavars(params: list[Any]) -> list[Any]:
    """Help shows what an option takes, the way click does (TEXT, INTEGER, PATH), and nothing
    after a flag: typer's own markers (`<bool>`, `<int range>`) widen the table until long option
    names are cut off on an 80-column terminal."""
    for param in params:
        if param.metavar is not None:
            continue
        if isinstance(param, TyperOption):
            param.metavar = "" if param.is_flag else _type_name(param)
        elif param.name:
            param.metavar = param.name.upper()
    return params


def reflow(text: str) -> str:
    """Each paragraph of a docstring on one line."""
    import inspect

    return "\n\n".join(" ".join(part.split()) for part in inspect.cleandoc(text).split("\n\n"))


def _type_name(param: TyperOption) -> str:
    described = param.type_descriptor
    if described.is_path:
        return "PATH"
    names = {int: "INTEGER", float: "FLOAT"}
    return next((names[t] for t in (int, float) if t in _types(described.annotation)), "TEXT")


def _types(annotation: Any) -> set[Any]:
    from typing import get_args

    found = {annotation, *get_args(annotation)}
    return found | {inner for outer in list(found) for inner in get_args(outer)}


class Command(TyperCommand):
    """Every swe command: plain metavars in its help, and docstring paragraphs re-flowed (rich
    help keeps single line breaks, so a wrapped docstring line would break mid-sentence)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("help"):
            kwargs["help"] = reflow(kwargs["help"])
        super().__init__(*args, **kwargs)

    def get_params(self, ctx: Any) -> list[Any]:
        return plain_metavars(super().get_params(ctx))


class Group(TyperGroup):
    """The swe app: plain metavars for --debug/--version/--help too, and the commands listed in
    the order a user meets them (one-shot commands first, then the stages in pipeline order)."""

    ORDER = ("align", "demo", "probe", "localize", "select", "solve", "tune", "apply", "verify")

    def list_commands(self, ctx: Any) -> list[str]:
        names = super().list_commands(ctx)
        rank = {name: index for index, name in enumerate(self.ORDER)}
        return sorted(names, key=lambda name: rank.get(name, len(rank)))

    def get_params(self, ctx: Any) -> list[Any]:
        return plain_metavars(super().get_params(ctx))


app = typer.Typer(
    name="swe",
    cls=Group,
    help="Close the multilingual safety gap of open-weight chat models with a sparse, "
    "closed-form weight edit.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)
out = Console()
STATE: dict[str, bool] = {"debug": False, "quiet": False, "json": False}
CONTEXT: dict[str, Any] = {}  # the root click context of this run, for usage lines
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
LOG_WIDTH = 1000  # the widest a table may render in a log file


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
    if not err.is_terminal:
        yield _progress_lines()
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


def _progress_lines() -> Callable[[str, int, int], None]:
    """Progress for a log (stderr not a terminal): a plain line when a step starts, at every
    tenth of it and when it ends, instead of a bar redrawn in place."""
    import time

    started: dict[str, float] = {}
    shown: dict[str, int] = {}

    def update(label: str, done: int, total: int) -> None:
        now = time.monotonic()
        started.setdefault(label, now)
        tenth = 10 * done // total if total > 0 else 10
        if shown.get(label) == tenth:
            return
        shown[label] = tenth
        elapsed = now - started[label]
        err.print(f"{label}: {done}/{total} ({elapsed:.0f} s)", highlight=False, soft_wrap=True)

    return update


def emit(summary: dict[str, Any], as_json: bool | None = None) -> None:
    """The command's summary as JSON on stdout when --json was given."""
    if STATE["json"] if as_json is None else as_json:
        sys.stdout.write(json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")


def info(message: str) -> None:
    """A note on stderr, unless quiet; in a log (not a terminal) one line, not wrapped at 80."""
    if not STATE["quiet"]:
        err.print(message, soft_wrap=not err.is_terminal)


def show(renderable: Any) -> None:
    """A rich table (or anything rich renders) on stderr, unless quiet. In a log (stderr not a
    terminal) rich would assume 80 columns and cut wide tables ('Har…'): there the table gets
    the width its content needs."""
    if STATE["quiet"]:
        return
    if err.is_terminal:
        err.print(renderable)
        return
    from rich.measure import Measurement

    wide = err.options.update(width=LOG_WIDTH, max_width=LOG_WIDTH)
    needed = Measurement.get(err, wide, renderable).maximum
    # Console.print caps width at the console's own, so a console of the needed width prints it
    wide_console = Console(file=err.file, width=max(err.width, min(needed, LOG_WIDTH)))
    wide_console.print(renderable)


def problem(message: str) -> None:
    err.print(message, style="bold red", highlight=False, markup=False, soft_wrap=True)


@app.callback(invoke_without_command=True)
def root(
    context: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    STATE["debug"] = debug
    STATE["quiet"] = STATE["json"] = False
    CONTEXT["root"] = context
    if version:
        out.print(f"swe {__version__}")
        raise typer.Exit()


def _fail(message: str, hint: str | None) -> None:
    err.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)
    if hint:
        err.print(f"[yellow]hint:[/yellow] {escape(hint)}", highlight=False, soft_wrap=True)


def _command_context() -> Any:
    """The click context of the command that ran (for its usage line), or the root's."""
    root = CONTEXT.get("root")
    if root is None or not root.invoked_subcommand:
        return root
    command = root.command.get_command(root, root.invoked_subcommand)
    return type(root)(command, info_name=root.invoked_subcommand, parent=root)


def _is_usage_error(error: Exception) -> bool:
    """click's usage errors: typer's own copy of click (typer >= 0.16) or click itself."""
    import click

    return isinstance(error, click.ClickException | typer.TyperException) and hasattr(error, "show")


def _usage_error(error: Any) -> NoReturn:
    """click's rendering (usage, a try --help line, one line naming the option), exit 2. A
    missing option also says what it takes (its help text)."""
    param = getattr(error, "param", None)
    if type(error).__name__ == "MissingParameter" and param is not None and not error.message:
        error.message = (getattr(param, "help", "") or "").split(" [")[0]
    error.show()
    sys.exit(getattr(error, "exit_code", 2) or 2)


def _option_usage_error(error: Any) -> NoReturn:
    """A pydantic ValidationError of a command's options as click's bad-parameter error: the
    failing field named as its command-line option, what it accepts, usage, exit 2."""
    from swe_cli.settings import describe

    problem = error.errors()[0]
    field = str(problem["loc"][0]) if problem["loc"] else ""
    context = _command_context()
    hint = None
    if context is not None:
        for param in context.command.params:
            if param.name == field and getattr(param, "opts", None):
                hint = "'" + max(param.opts, key=len) + "'"
    if hint is None:
        message = f"invalid option: {describe(error)}"
    else:
        reason = str(problem["msg"]).removeprefix("Value error, ")
        message = f"{problem.get('input')!r} ({reason})"
    exceptions = _click_exceptions()
    if hint is None:
        _usage_error(exceptions.UsageError(message, ctx=context))
    _usage_error(exceptions.BadParameter(message, ctx=context, param_hint=hint))


def _click_exceptions() -> Any:
    """The exception module of the click that parses swe's command line: typer >= 0.16 carries
    its own copy of click, older typer uses click itself."""
    try:
        from typer._click import exceptions
    except ImportError:
        from click import exceptions
    return exceptions


def _file_problem(error: OSError) -> NoReturn:
    """An operating-system error on a named file or folder: the user's environment, not a bug."""
    where = error.filename or "a file"
    if error.errno in DISK_FULL:
        _fail(
            f"no space left on the disk while writing {where}",
            "free disk space or choose another -o/-w; re-run the same command to resume "
            "(finished shards are kept, a partial output is removed)",
        )
    elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        _fail(
            f"cannot write or read {where}: {error.strerror or 'permission denied'}",
            "choose a folder you can write to (-o/-w), or fix its permissions",
        )
    else:
        _fail(f"{where}: {error.strerror or error}", "check the path and the file")
    sys.exit(1)


def _interrupted(error: KeyboardInterrupt) -> NoReturn:
    """Ctrl-C: say what is kept and how to resume (the command's own words when it has them)."""
    said = getattr(error, "message", None)
    said = said or "finished shards are kept; re-run the same command to resume"
    err.print(f"[bold red]interrupted[/bold red]: {escape(said)}", highlight=False, soft_wrap=True)
    sys.exit(130)


def main() -> None:
    """Console entry point: run the app, turning SweError into one red line and exit code 1,
    and usage errors (a missing or bad option, an unknown command) into click's usage lines
    and exit code 2."""
    STATE.update(debug=False, quiet=False, json=False)  # a fresh run (main may run in-process)
    CONTEXT.clear()
    try:
        # click's parse-and-invoke without typer's main, which would turn Ctrl-C into a bare
        # exit code 130: every exception reaches this one boundary as raised
        command = typer.main.get_command(app)
        with command.make_context("swe", sys.argv[1:]) as context:
            command.invoke(context)
    except SweError as error:
        if STATE["debug"]:
            raise
        _fail(error.message, error.hint)
        sys.exit(1)
    except KeyboardInterrupt as error:
        _interrupted(error)
    except BrokenPipeError:
        # the reader of stdout went away (`swe --help | head`): nothing is wrong with the run, and
        # Python must not try to flush into the closed pipe again at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except typer.Abort:
        sys.exit(1)
    except Exception as error:  # noqa: BLE001 - click usage errors and the unexpected
        from pydantic import ValidationError

        if _is_usage_error(error):
            _usage_error(error)
        if STATE["debug"]:
            raise
        if isinstance(error, ValidationError):
            _option_usage_error(error)
        if isinstance(error, OSError) and (error.filename or error.errno in DISK_FULL):
            _file_problem(error)
        if _is_damaged_safetensors(error):
            _fail(
                f"a safetensors file is damaged or truncated ({error})",
                "re-download or re-write the checkpoint; `swe verify` checks an edited one",
            )
            sys.exit(1)
        err.print(
            f"[bold red]error:[/bold red] unexpected {type(error).__name__}: {escape(str(error))}",
            highlight=False,
        )
        err.print(
            "[yellow]hint:[/yellow] re-run with --debug for the traceback and report it",
            highlight=False,
        )
        sys.exit(1)
    sys.exit(0)


def _is_damaged_safetensors(error: Exception) -> bool:
    return type(error).__name__ == "SafetensorError"


def ui() -> Ui:
    """The pipeline's terminal output, bound to this run's --quiet/--json."""
    from swe_cli.pipeline import Ui

    return Ui(info=info, show=show, progress=progress_bar, quiet=STATE["quiet"])


def option_given(context: typer.Context, name: str) -> bool:
    """Whether an option was given on the command line (not its default)."""
    source = context.get_parameter_source(name)
    return source is not None and source.name in {"COMMANDLINE", "ENVIRONMENT"}
