"""Every command's options and defaults, as `--help` shows them, are recorded in
tests/data/cli_options.json: a refactoring that renames, drops or re-defaults an option fails here.
After an intended change, rewrite the record with
`python -c "import test_cli_options as t; t.write()"` from tests/ and review the diff."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RECORD = Path(__file__).parent / "data" / "cli_options.json"


def _default(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_default(item) for item in value]
    return str(value)


def option_lists() -> dict[str, list[dict[str, Any]]]:
    """command path -> its parameters: names, default, flag, required."""
    import typer.main

    from swe_cli.cli import app

    found: dict[str, list[dict[str, Any]]] = {}

    def walk(command: Any, path: str) -> None:
        found[path] = [
            {
                "name": param.name,
                "opts": sorted([*param.opts, *param.secondary_opts]),
                "default": _default(param.default),
                "flag": bool(getattr(param, "is_flag", False)),
                "required": bool(param.required),
            }
            for param in command.params
        ]
        for name, sub in sorted((getattr(command, "commands", None) or {}).items()):
            walk(sub, f"{path} {name}")

    walk(typer.main.get_command(app), "swe")
    return found


def write() -> None:
    RECORD.write_text(json.dumps(option_lists(), indent=1, sort_keys=True) + "\n", encoding="utf-8")


def test_every_command_keeps_its_options_and_defaults() -> None:
    recorded = json.loads(RECORD.read_text(encoding="utf-8"))
    now = option_lists()
    assert sorted(now) == sorted(recorded), "commands added or removed"
    for command in recorded:
        assert now[command] == recorded[command], command
