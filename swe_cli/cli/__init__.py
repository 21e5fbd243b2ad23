"""The `swe` command line (Typer): app.py (global options, error boundary), options.py (shared
option declarations), one thin function per command in commands.py (the pipeline stages),
artifacts.py (apply, verify, eval) and oneshot.py (align, demo)."""

from swe_cli.cli import artifacts, commands, oneshot  # noqa: F401 - register the commands on app
from swe_cli.cli.app import app, main

__all__ = ["app", "main"]
