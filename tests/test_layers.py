"""The import layers of docs/module-map.md hold: every import of a swe_cli module (at the top, inside
a function, or under TYPE_CHECKING) goes to a module of the same or a lower layer, and no chain of
imports comes back to where it started."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "swe_cli"
MAP = ROOT / "docs" / "module-map.md"


def layer_table() -> dict[str, int]:
    """`swe_cli/x.py` or `swe_cli/dir/` -> layer, from the module map's table."""
    rows = re.findall(r"^\| (\d+) \| `(swe_cli/[^`]*)` \|", MAP.read_text(encoding="utf-8"), re.M)
    return {path: int(layer) for layer, path in rows}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path, known: set[str]) -> set[str]:
    """The swe_cli modules a file imports (`from pkg import sub` counts as pkg.sub)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("swe_cli")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("swe_cli"):
            assert node.level == 0, f"{path}: relative import"
            module = str(node.module)
            subs = {f"{module}.{alias.name}" for alias in node.names} & known
            found |= subs or {module}
    return found & known


def layer_of(module: str, table: dict[str, int]) -> int:
    path = module.replace(".", "/")
    for key in (f"{path}.py", f"{path}/__init__.py"):
        if key == "swe_cli/__init__.py" and key in table:
            return table[key]
        if key in table:
            return table[key]
    folders = [key for key in table if key.endswith("/") and f"{path}/".startswith(key)]
    if not folders:
        pytest.fail(f"{module} has no layer in docs/module-map.md")
    return table[max(folders, key=len)]


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(path, set(found)) - {name} for name, path in found.items()}


def test_every_module_has_a_layer() -> None:
    table = layer_table()
    assert "swe_cli/cli/" in table and "swe_cli/workspace.py" in table
    for module in modules():
        layer_of(module, table)


def test_no_import_runs_up_a_layer() -> None:
    table = layer_table()
    upward = [
        f"{module} (layer {layer_of(module, table)}) imports {target} "
        f"(layer {layer_of(target, table)})"
        for module, targets in graph().items()
        for target in sorted(targets)
        if layer_of(target, table) > layer_of(module, table)
    ]
    assert not upward, "\n".join(upward)


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_circle_finder_finds_a_circle() -> None:
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle() -> None:
    assert circles(graph()) == []


def test_align_runs_stages_only_through_the_pipeline() -> None:
    reached = sorted(
        target
        for target in graph()["swe_cli.align"]
        if target.startswith(("swe_cli.stages", "swe_cli.methods"))
    )
    assert reached == []
