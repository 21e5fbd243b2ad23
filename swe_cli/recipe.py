"""Recipes: the per-family, per-size settings of every stage, as data (recipes/*.yaml), picked from
a model's config and overridable field by field from the command line. The fields, their
defaults and their validation are the settings models of swe_cli/settings.py."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from swe_cli.errors import RecipeError
from swe_cli.settings import SECTIONS, Recipe, Settings, SolveSettings

__all__ = [
    "Recipe",
    "apply_overrides",
    "builtin_recipes",
    "load_recipe",
    "parse_set_options",
    "recipe_from_dict",
    "select_recipe",
]


def _section(
    cls: type[Settings], data: Any, name: str, source: str, overridden: frozenset[str] = frozenset()
) -> Any:
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise RecipeError(
            f"{source}: section '{name}' must be a mapping",
            hint="see recipes/*.yaml for the layout",
        )
    known = cls.model_fields
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise RecipeError(
            f"{source}: unknown key '{name}.{unknown[0]}'",
            hint=f"valid keys of '{name}': " + ", ".join(sorted(known)),
        )
    try:
        return cls.model_validate(data)
    except ValidationError as error:
        problem = error.errors()[0]
        key = str(problem["loc"][0]) if problem["loc"] else "?"
        value = data.get(key)
        if value is None and key in data:
            raise RecipeError(
                f"{source}: '{name}.{key}' must not be empty", hint="give a value or remove the key"
            ) from None
        if f"{name}.{key}" in overridden:
            raise RecipeError(
                f"command-line override '{name}.{key}' has a bad value {value!r} ({problem['msg']})",
                hint=f"fix the value given with --set {name}.{key}=... or its option",
            ) from None
        raise RecipeError(
            f"{source}: '{name}.{key}' has a bad value {value!r} ({problem['msg']})",
            hint="fix the value in the recipe or the override",
        ) from None


def recipe_from_dict(data: Any, source: str, overridden: frozenset[str] = frozenset()) -> Recipe:
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a recipe must be a YAML mapping", hint="see recipes/*.yaml")
    top = {"name", "description", "validated", *SECTIONS}
    unknown = sorted(set(data) - top)
    if unknown:
        raise RecipeError(
            f"{source}: unknown key '{unknown[0]}'",
            hint="valid top-level keys: " + ", ".join(sorted(top)),
        )
    sections = {
        name: _section(cls, data.get(name), name, source, overridden)
        for name, cls in SECTIONS.items()
    }
    return Recipe(
        name=str(data.get("name") or Path(source).stem),
        description=str(data.get("description") or ""),
        validated=str(data.get("validated") or ""),
        source=source,
        **sections,
    )


def load_recipe(path: Path) -> Recipe:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError:
        raise RecipeError(
            f"recipe file {path} cannot be read", hint="check the path given to --recipe"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise RecipeError(
            f"{path}: not valid YAML ({str(error).splitlines()[0]})", hint="fix the YAML syntax"
        ) from None
    return recipe_from_dict(data, str(path))


def recipe_folder() -> Any:
    """Where the built-in recipes live: swe_cli/recipes in an installed wheel (and in an editable
    install, which maps it to the repository's recipes/), else recipes/ next to the package in a
    source checkout. The repository's recipes/ folder holds the only copy of each file."""
    try:
        folder = resources.files("swe_cli.recipes")
    except ModuleNotFoundError:
        folder = None
    if folder is not None and folder.is_dir():
        return folder
    return Path(__file__).resolve().parent.parent / "recipes"


def builtin_recipes() -> list[Recipe]:
    """The recipes shipped with swe (recipes/*.yaml in the repo, swe_cli/recipes in the wheel)."""
    folder = recipe_folder()
    if not folder.is_dir():
        return []
    paths = sorted((p for p in folder.iterdir() if p.name.endswith(".yaml")), key=lambda p: p.name)
    return [load_recipe(Path(str(p))) for p in paths]


def select_recipe(model_type: str, num_layers: int, hidden_size: int) -> Recipe:
    """The most specific built-in recipe for a model: family and size, else family, else generic."""
    best: tuple[int, Recipe] | None = None
    for recipe in builtin_recipes():
        match = recipe.match
        if match.model_types and model_type not in match.model_types:
            continue
        if match.num_layers and num_layers not in match.num_layers:
            continue
        if match.hidden_sizes and hidden_size not in match.hidden_sizes:
            continue
        score = 4 * bool(match.model_types) + 2 * bool(match.num_layers) + bool(match.hidden_sizes)
        if best is None or score > best[0]:
            best = (score, recipe)
    if best:
        return best[1]
    return Recipe(
        name="generic",
        description="built-in defaults; method auto: `swe select` chooses the edit",
        solve=SolveSettings(method="auto"),
    )


def apply_overrides(recipe: Recipe, overrides: dict[str, Any]) -> Recipe:
    """Override fields by dotted key ('solve.rank': 16); unknown keys are errors."""
    data = recipe.to_dict()
    for key, value in overrides.items():
        if value is None:
            continue
        section, _, name = key.partition(".")
        if section not in SECTIONS or not name:
            raise RecipeError(
                f"unknown recipe field '{key}'", hint="use section.field, e.g. solve.rank"
            )
        data[section] = {**data[section], name: value}
    source = recipe.source or recipe.name
    data.pop("source", None)
    overridden = frozenset(key for key, value in overrides.items() if value is not None)
    return recipe_from_dict(data, source, overridden).updated(source=source)


def parse_set_options(items: list[str]) -> dict[str, Any]:
    """--set section.field=value (value parsed as YAML scalar)."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise RecipeError(f"--set '{item}' is not KEY=VALUE", hint="e.g. --set solve.rank=16")
        try:
            overrides[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as error:
            raise RecipeError(
                f"--set '{item}': the value is not valid YAML ({str(error).splitlines()[0]})",
                hint="quote the value or write a plain scalar, e.g. --set solve.rank=16",
            ) from None
    return overrides
