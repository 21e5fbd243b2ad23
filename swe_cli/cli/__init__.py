"""The `swe` command line (Typer): app.py (global options, error boundary), options.py (shared
option declarations), commands.py (one thin function per command)."""

from swe_cli.cli import commands  # noqa: F401 - registers the commands on app
from swe_cli.cli.app import app, main

__all__ = ["app", "main"]
