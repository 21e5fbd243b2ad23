"""Recipes: loading, validation, selection per model and command-line overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from swe_cli.errors import RecipeError
from swe_cli.recipe import (
    apply_overrides,
    builtin_recipes,
    load_recipe,
    parse_set_options,
    select_recipe,
)

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_every_shipped_recipe_loads_and_is_valid() -> None:
    recipes = builtin_recipes()
    names = {recipe.name for recipe in recipes}
    assert len(recipes) == len(list(RECIPES.glob("*.yaml")))
    assert {
        "llama-3.1-8b",
        "qwen2.5-7b",
        "mistral-7b",
        "gemma-2",
        "organism",
        "smollm2-135m",
    } <= names
    for recipe in recipes:
        assert recipe.solve.method in {"auto", "residual"}
        assert recipe.solve.lam > 0
        assert recipe.validated, f"{recipe.name} must say what it was measured on"


def test_unknown_key_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "name: x\nsolve:\n  rnk: 3\n")
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    assert "solve.rnk" in caught.value.message
    assert "rank" in caught.value.hint


def test_unknown_top_level_key(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="unknown key 'sovle'"):
        load_recipe(write(tmp_path, "sovle: {}\n"))


def test_wrong_type_is_named(tmp_path: Path) -> None:
    with pytest.raises(RecipeError) as caught:
        load_recipe(write(tmp_path, "solve:\n  rank: many\n"))
    assert "solve.rank" in caught.value.message and "many" in caught.value.message
    with pytest.raises(RecipeError, match="solve.hard"):
        load_recipe(write(tmp_path, "solve:\n  hard: 3\n"))
    with pytest.raises(RecipeError, match="section 'probe' must be a mapping"):
        load_recipe(write(tmp_path, "probe: 3\n"))


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="cannot be read"):
        load_recipe(tmp_path / "absent.yaml")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(write(tmp_path, "solve: [1, 2\n"))


def test_values_are_coerced(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, "solve:\n  rank: 16\n  lam: 1\n  layers: [1, 2]\n"))
    assert recipe.solve.rank == 16 and isinstance(recipe.solve.rank, int)
    assert recipe.solve.lam == 1.0 and isinstance(recipe.solve.lam, float)
    assert recipe.solve.layers == "1,2"


@pytest.mark.parametrize(
    ("model_type", "layers", "hidden", "expected"),
    [
        ("llama", 32, 4096, "llama-3.1-8b"),
        ("llama", 16, 2048, "llama-3.2-1b"),
        ("qwen2", 28, 3584, "qwen2.5-7b"),
        ("qwen2", 28, 1536, "qwen2.5-1.5b"),
        ("mistral", 32, 4096, "mistral-7b"),
        ("gemma2", 42, 3584, "gemma-2"),
        ("llama", 30, 576, "smollm2-135m"),
        ("llama", 4, 128, "organism"),
        ("qwen3", 36, 4096, "qwen3"),
    ],
)
def test_selection_per_model(model_type: str, layers: int, hidden: int, expected: str) -> None:
    assert select_recipe(model_type, layers, hidden).name == expected


def test_unmatched_family_gets_generic_defaults() -> None:
    recipe = select_recipe("phi3", 32, 3072)
    assert recipe.name == "generic"
    assert recipe.solve.method == "auto"  # nothing measured: `swe select` chooses


def test_overrides_by_dotted_key() -> None:
    base = select_recipe("llama", 32, 4096)
    changed = apply_overrides(
        base, parse_set_options(["solve.rank=8", "solve.method=residual", "probe.batch_size=2"])
    )
    assert (changed.solve.rank, changed.solve.method, changed.probe.batch_size) == (
        8,
        "residual",
        2,
    )
    assert base.solve.rank != 8  # the original is untouched
    with pytest.raises(RecipeError, match="unknown key 'solve.bogus'"):
        apply_overrides(base, {"solve.bogus": 1})
    with pytest.raises(RecipeError, match="unknown recipe field 'rank'"):
        apply_overrides(base, {"rank": 1})
    with pytest.raises(RecipeError, match="solve.rank"):
        apply_overrides(base, {"solve.rank": "lots"})
    with pytest.raises(RecipeError, match="KEY=VALUE"):
        parse_set_options(["solve.rank"])


def test_recipe_probe_max_length_reaches_probe(
    tmp_path: Path,
    tiny_llama: Path,
    prompt_files: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every probe setting of a recipe reaches the probe stage (max_length used to be dropped)."""
    import swe_cli.stages.probe as probe_stage
    from swe_cli.align import AlignRequest, align

    seen: dict[str, object] = {}

    class Stop(Exception):
        pass

    def fake_run_probe(*args: object, **kwargs: object) -> None:
        seen["config"] = args[5]
        raise Stop

    monkeypatch.setattr(probe_stage, "run_probe", fake_run_probe)
    recipe = write(tmp_path, "name: short\nprobe:\n  max_length: 7\n  positions: 2\n")
    request = AlignRequest(
        model=str(tiny_llama),
        langs=["es", "sw"],
        output=tmp_path / "out",
        workspace=tmp_path / "ws",
        harmful=str(prompt_files["harmful"]),
        harmless=str(prompt_files["harmless"]),
        general="",
        recipe=recipe,
    )
    with pytest.raises(Stop):
        align(request)
    config = seen["config"]
    assert config.max_length == 7 and config.positions == 2  # type: ignore[attr-defined]
