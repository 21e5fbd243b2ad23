"""Recipes: the per-family, per-size settings of every stage, as data (recipes/*.yaml), picked from
a model's config and overridable field by field from the command line."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from swe_cli.errors import RecipeError


@dataclass(frozen=True)
class ProbeSettings:
    layers: str = "all"  # all | 3 | 1,2,5 | 1-3
    stats_layers: str | None = None  # default: the edited layers
    positions: int = 1
    batch_size: int = 8
    max_length: int = 512
    max_prompts: int | None = None
    heldout_fraction: float = 0.5


@dataclass(frozen=True)
class LocalizeSettings:
    tau_mag: float = 2.0
    tau_stat: float = 1.0


@dataclass(frozen=True)
class SolveSettings:
    method: str = "paper"
    layers: str | None = None  # None: the method's default
    rank: int | None = None
    gamma: float = 1.0
    lam: float = 0.1
    alpha: float = 1.0
    beta: float = 1.0
    hard: bool = False
    threshold: float = 0.01
    projections: str = "gate"
    sparse: bool = False


@dataclass(frozen=True)
class EvalSettings:
    max_new_tokens: int = 64
    batch_size: int = 16
    judge: str = "pattern"


@dataclass(frozen=True)
class Match:
    model_types: tuple[str, ...] = ()
    num_layers: tuple[int, ...] = ()  # empty: any depth
    hidden_sizes: tuple[int, ...] = ()  # empty: any width


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str = ""
    validated: str = ""  # what this recipe was measured on, or why it is a starting point
    match: Match = field(default_factory=Match)
    probe: ProbeSettings = field(default_factory=ProbeSettings)
    localize: LocalizeSettings = field(default_factory=LocalizeSettings)
    solve: SolveSettings = field(default_factory=SolveSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS: dict[str, type] = {
    "match": Match,
    "probe": ProbeSettings,
    "localize": LocalizeSettings,
    "solve": SolveSettings,
    "eval": EvalSettings,
}


def _coerce(value: Any, annotation: str, key: str, source: str) -> Any:
    """Check and convert one field value by its annotation (as written in the dataclass)."""
    optional = "None" in annotation
    if value is None:
        if optional:
            return None
        raise RecipeError(
            f"{source}: '{key}' must not be empty", hint="give a value or remove the key"
        )
    base = annotation.replace(" | None", "").strip()
    try:
        if base == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in {"true", "false", "yes", "no", "1", "0"}:
                return value.lower() in {"true", "yes", "1"}
            raise ValueError
        if base == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if base == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if base == "str":
            if isinstance(value, list):
                return ",".join(str(v) for v in value)
            if isinstance(value, dict):
                raise ValueError
            return str(value)
        if base.startswith("tuple"):
            items = list(value) if isinstance(value, list | tuple) else str(value).split(",")
            inner = int if "int" in base else str
            return tuple(inner(item) for item in items)
    except (TypeError, ValueError):
        raise RecipeError(
            f"{source}: '{key}' has a bad value {value!r} (expected {annotation})",
            hint="fix the value in the recipe or the override",
        ) from None
    return value


def _section(cls: type, data: Any, name: str, source: str) -> Any:
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise RecipeError(
            f"{source}: section '{name}' must be a mapping",
            hint="see recipes/*.yaml for the layout",
        )
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise RecipeError(
            f"{source}: unknown key '{name}.{unknown[0]}'",
            hint=f"valid keys of '{name}': " + ", ".join(sorted(known)),
        )
    values = {k: _coerce(v, str(known[k].type), f"{name}.{k}", source) for k, v in data.items()}
    return cls(**values)


def recipe_from_dict(data: Any, source: str) -> Recipe:
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a recipe must be a YAML mapping", hint="see recipes/*.yaml")
    top = {"name", "description", "validated", *SECTIONS}
    unknown = sorted(set(data) - top)
    if unknown:
        raise RecipeError(
            f"{source}: unknown key '{unknown[0]}'",
            hint="valid top-level keys: " + ", ".join(sorted(top)),
        )
    sections = {name: _section(cls, data.get(name), name, source) for name, cls in SECTIONS.items()}
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


def builtin_recipes() -> list[Recipe]:
    """The recipes shipped with swe (recipes/*.yaml in the repo, swe_cli/recipes in the wheel)."""
    folder = resources.files("swe_cli") / "recipes"
    repo_folder = Path(__file__).resolve().parent.parent / "recipes"
    paths: list[Any] = []
    if repo_folder.is_dir():
        paths = sorted(repo_folder.glob("*.yaml"))
    elif folder.is_dir():
        paths = sorted(p for p in folder.iterdir() if p.name.endswith(".yaml"))
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
    return best[1] if best else Recipe(name="generic", description="built-in defaults")


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
    updated = recipe_from_dict(data, source)
    return dataclasses.replace(updated, source=source)


def parse_set_options(items: list[str]) -> dict[str, Any]:
    """--set section.field=value (value parsed as YAML scalar)."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise RecipeError(f"--set '{item}' is not KEY=VALUE", hint="e.g. --set solve.rank=16")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides
