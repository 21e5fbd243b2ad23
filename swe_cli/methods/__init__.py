"""Edit methods, one file each, and their registry. Adding a method is one file in this package
(a class with the Method protocol of methods/base.py) and one line in METHODS below; the CLI's
--method choices and help, `swe solve`, `swe select`'s candidates and default spread and
`swe tune` all go through this registry. The shared closed-form solvers are methods/linalg.py.
See docs/adding-a-method.md."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from swe_cli.errors import SolveError

if TYPE_CHECKING:
    from swe_cli.methods.base import Method


@dataclass(frozen=True)
class Registered:
    """Where a method's class lives ("module:Class", imported on use, so `swe --help` imports no
    method and no torch) and its one-line description (the --method help)."""

    target: str
    description: str


# in the order of `swe select`'s default spread
METHODS: dict[str, Registered] = {
    "residual": Registered(
        "swe_cli.methods.residual:ResidualMethod",
        "down_proj of several layers towards the HRL residual stream, MEMIT-style",
    ),
    "refusal": Registered(
        "swe_cli.methods.refusal:RefusalMethod",
        "down_proj of several layers: push LRL harmful prompts along the HRL refusal direction",
    ),
    "paper": Registered(
        "swe_cli.methods.paper:PaperMethod", "gate rows of the safety neurons, paper Algorithm 1"
    ),
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


def method_descriptions() -> dict[str, str]:
    """name -> the method's one-line description (the CLI's --method help)."""
    return {name: entry.description for name, entry in METHODS.items()}


def get_method(name: str) -> Method:
    """The registered method called name; a SolveError listing the known names otherwise."""
    from importlib import import_module

    if name not in METHODS:
        raise SolveError(f"unknown method '{name}'", hint="choose one of: " + ", ".join(METHODS))
    module, _, attribute = METHODS[name].target.partition(":")
    return getattr(import_module(module), attribute)()
