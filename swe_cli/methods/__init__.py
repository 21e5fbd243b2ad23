"""Edit methods, one file each, and their registry. Adding a method is one file in this package
(a class with the Method protocol of methods/base.py) and one line in METHODS below; the CLI's
--method choices, `swe solve` and `--tune` all dispatch through get_method. The shared
closed-form solvers are methods/linalg.py. See docs/adding-a-method.md."""

from __future__ import annotations

from typing import TYPE_CHECKING

from swe_cli.errors import SolveError

if TYPE_CHECKING:
    from swe_cli.methods.base import Method

# name -> "module:class", imported on use so `swe --help` does not import torch
METHODS: dict[str, str] = {
    "paper": "swe_cli.methods.paper:PaperMethod",
    "residual": "swe_cli.methods.residual:ResidualMethod",
    "refusal": "swe_cli.methods.refusal:RefusalMethod",
}


def method_names() -> list[str]:
    return list(METHODS)


def check_method_name(name: str) -> None:
    """A SolveError unless name is a registered method or auto (what `swe select` chose): the
    settings models know no method, so the pipeline checks the name before any work."""
    if name not in (*METHODS, "auto"):
        raise SolveError(
            f"unknown method '{name}'", hint="choose one of: " + ", ".join([*METHODS, "auto"])
        )


def get_method(name: str) -> Method:
    """The registered method called name; a SolveError listing the known names otherwise."""
    from importlib import import_module

    if name not in METHODS:
        raise SolveError(f"unknown method '{name}'", hint="choose one of: " + ", ".join(METHODS))
    module, _, attribute = METHODS[name].partition(":")
    return getattr(import_module(module), attribute)()
