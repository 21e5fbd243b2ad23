"""The `swe` command line (Typer)."""

from swe_cli.cli.commands import app, main

__all__ = ["app", "main"]
