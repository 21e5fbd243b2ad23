"""The settings of every stage, defined once: one pydantic model per stage with its defaults, help
text and validation in the fields. Recipes (recipes/*.yaml) load into these models, `--set` and
the command-line options override them, and the stages receive them. A stage that needs its
settings in resolved form (layer numbers instead of the text `1-3`, plus run-time fields such as
the device) gets a subclass that narrows those fields: the other fields are not repeated."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from swe_cli.errors import SolveError, SweError


def language_factors(text: str) -> dict[str, float]:
    """'sw=2,th=1.5' -> {'sw': 2.0, 'th': 1.5}; every factor a positive finite number."""
    factors: dict[str, float] = {}
    for entry in split_list(text):
        lang, sep, number = entry.partition("=")
        try:
            factor = float(number)
        except ValueError:
            factor = math.nan
        if not sep or not lang.strip() or not (math.isfinite(factor) and factor > 0):
            raise SolveError(
                f"cannot read the language factor '{entry}'",
                hint="write lang=factor pairs with positive numbers, e.g. sw=2,th=1.5",
            )
        factors[lang.strip()] = factor
    return factors


def split_list(value: str | None) -> list[str]:
    """'a, b,,c' -> ['a', 'b', 'c']."""
    return [item.strip() for item in (value or "").split(",") if item.strip()]


MAX_LAYERS = 1000  # deeper than any model: a range is bounded before it is expanded


def parse_layers(value: Any, num_layers: int | None = None) -> tuple[int, ...] | None:
    """'all' or empty -> None; '3' / '1,2,5' / '1-3' / '-1' / [1, 2] -> layer numbers. A reversed
    or empty range is an error, and so is a layer past the model's `num_layers` (or, without a
    model, past MAX_LAYERS), checked before a range is expanded."""
    if value is None:
        return None
    limit = num_layers if num_layers is not None else MAX_LAYERS
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if isinstance(value, list | tuple):
        try:
            items = [(int(item), int(item), str(item)) for item in value]
        except (TypeError, ValueError):
            raise SweError(
                f"cannot read layers {value!r}", hint="use e.g. 3, 1,2,5, 1-3 or all"
            ) from None
    else:
        text = str(value)
        if text.strip().lower() in {"", "all"}:
            return None
        items = [_layer_range(part, value) for part in split_list(text)]
    if not items:
        raise SweError(f"no layers in '{value}'", hint="use e.g. 3, 1,2,5, 1-3 or all")
    layers: list[int] = []
    for start, end, part in items:
        if end < start:
            raise SweError(
                f"layer range '{part}' is reversed (it holds no layer)",
                hint=f"write the lower layer first, e.g. {end}-{start}",
            )
        if start < -limit or end >= limit:
            model = f"the model has {num_layers} layers" if num_layers else "no model is that deep"
            raise SweError(
                f"layers '{part}' out of range: {model}",
                hint=f"choose layers between 0 and {limit - 1} (negative counts from the end)",
            )
        layers.extend(range(start, end + 1))
    return tuple(layers)


def _layer_range(part: str, value: Any) -> tuple[int, int, str]:
    """'3' -> (3, 3), '1-3' -> (1, 3), '-2' -> (-2, -2), '-3--1' -> (-3, -1)."""
    try:
        if "-" in part[1:]:
            start, end = part[1:].split("-", 1)
            return int(part[0] + start), int(end), part
        return int(part), int(part), part
    except ValueError:
        raise SweError(
            f"cannot read layers '{value}'", hint="use e.g. 3, 1,2,5, 1-3 or all"
        ) from None


def check_langs(langs: list[str], hrl: str) -> list[str]:
    """Target languages: at least one, and none equal to the HRL (the edit maps each target onto
    the HRL; a target equal to it has nothing to map)."""
    if not langs:
        raise SweError("no target languages given", hint="pass --langs, e.g. --langs bn,sw,th")
    if hrl in langs:
        raise SweError(
            f"--langs {','.join(langs)} includes the HRL '{hrl}'",
            hint="--langs names the low-resource target languages; the HRL is set with --hrl",
        )
    return langs


def check_dtype(dtype: str) -> str:
    if dtype not in DTYPES:
        raise SweError(f"unknown --dtype '{dtype}'", hint=f"use one of {', '.join(DTYPES)}")
    return dtype


def _text(value: Any) -> Any:
    """YAML gives numbers and lists where the text form is meant: `layers: 16`, `[1, 2]`."""
    if isinstance(value, bool | dict):
        return value
    if isinstance(value, list | tuple):
        return ",".join(str(item) for item in value)
    if isinstance(value, int | float):
        return str(value)
    return value


def _names(value: Any) -> Any:
    return tuple(split_list(value)) if isinstance(value, str) else value


def _layers(value: Any) -> Any:
    try:
        return parse_layers(value)
    except SweError as error:
        raise ValueError(error.message) from None
    except TypeError:
        raise ValueError(f"cannot read layers {value!r}") from None


Text = Annotated[str, BeforeValidator(_text)]
Names = Annotated[tuple[str, ...], BeforeValidator(_names)]
Layers = Annotated[tuple[int, ...] | None, BeforeValidator(_layers)]


class Settings(BaseModel):
    """Frozen, strict about unknown keys; lax about YAML scalars (1 for 1.0, 'yes' for true)."""

    # nan and inf compare false with every bound, so they would slip past any range check
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    def updated(self, **changes: Any) -> Any:
        """A validated copy with some fields changed."""
        return type(self).model_validate({**self.model_dump(), **changes})


def describe(error: ValidationError) -> str:
    """One line for the first problem of a ValidationError: which field, which value, why."""
    problem = error.errors()[0]
    field = ".".join(str(part) for part in problem["loc"]) or "?"
    reason = str(problem["msg"]).removeprefix("Value error, ")
    return f"'{field}' has a bad value {problem.get('input')!r} ({reason})"


def field_help(model: type[BaseModel], name: str) -> str:
    return model.model_fields[name].description or ""


def field_default(model: type[BaseModel], name: str) -> Any:
    return model.model_fields[name].default


# -- probe ----------------------------------------------------------------------------------------
class ProbeSettings(Settings):
    layers: Text = Field("all", description="Layers to record: all, 3, 1,2,5 or 1-3.")
    stats_layers: Text | None = Field(
        None,
        description="Layers whose all-position moments are streamed (default: all recorded, if they fit in 2 GiB).",
    )
    positions: int = Field(1, ge=1, description="Record the last N prompt positions.")
    batch_size: int = Field(8, ge=1, description="Prompts per forward pass.")
    max_length: int = Field(512, ge=1, description="Tokens kept per prompt (left truncation).")
    max_prompts: int | None = Field(None, description="Use at most N prompt ids per set.")
    heldout_fraction: float = Field(0.5, description="Share of ids held out for eval.")
    own_answers: int = Field(
        48,
        ge=0,
        description="Tokens of the model's own greedy answer to each harmless fit prompt that the "
        "preservation moments cover (0: prompts and reference answers only).",
    )
    borderline: str = Field(
        "auto",
        description="Borderline benign requests (benign, with alarming words) probed with the "
        "harmless prompts: the edit keeps the model's own answers to them and select counts "
        "their refusals; builtin: swe's set in the MultiJail languages (skipped with a note when "
        "a language of the run is not in it); auto: builtin when it has every language of the "
        "run, else none; none; or a file.",
    )


class ProbeConfig(ProbeSettings):
    """What the probe stage runs with: layer numbers resolved, plus the run's model settings."""

    langs: Names
    hrl: str = "en"
    patterns: tuple[Path, ...] = ()  # extra refusal patterns for the HRL refusal check
    layers: Layers = None  # type: ignore[assignment]  # None: every layer
    stats_layers: Layers = None  # type: ignore[assignment]  # None: every recorded layer that fits
    device: str = "cpu"
    dtype: str = "auto"
    device_map: str | None = None

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, value: str) -> str:
        return check_dtype(value)


# -- localize -------------------------------------------------------------------------------------
class LocalizeSettings(Settings):
    # inf turns a criterion off (nothing passes it), -inf selects every neuron by it; nan is refused
    tau_mag: float = Field(
        2.0, allow_inf_nan=True, description="z-score threshold of the mean difference."
    )
    tau_stat: float = Field(1.0, allow_inf_nan=True, description="Cohen's d threshold.")

    @field_validator("tau_mag", "tau_stat")
    @classmethod
    def _not_nan(cls, value: float) -> float:
        if math.isnan(value):
            raise ValueError("nan is no threshold")
        return value


LocalizeConfig = LocalizeSettings


# -- solve ----------------------------------------------------------------------------------------
PAPER_RANK = 32  # paper default: ASR is flat for r in 4..512
PROJECTIONS = ("gate", "up")  # the paper method's editable rows
DTYPES = ("auto", "float32", "float16", "bfloat16")  # model dtypes for probe and eval


# Sane ranges: far beyond any measured setting, short of the values that destroy a model (strength
# 1e30 put 1e29 into down_proj and made every answer degenerate).
MAX_STRENGTH = 100.0
MAX_COEFFICIENT = 1e6
MAX_RANK = 65536


class SolveSettings(Settings):
    method: str = Field(
        "paper",
        description="Edit method (see `swe solve --help`); auto: the one `swe select` chose.",
    )
    layers: Text | None = Field(None, description="Layers to edit (default: method's choice).")
    rank: int | None = Field(
        None,
        ge=1,
        le=MAX_RANK,
        description=f"Rank cap of the edit (default: {PAPER_RANK} for paper, none for residual).",
    )
    gamma: float = Field(
        1.0,
        ge=0,
        le=MAX_COEFFICIENT,
        description="paper: harmless penalty, relative (x N_h/N_s).",
    )
    lam: float = Field(
        0.1, gt=0, le=MAX_COEFFICIENT, description="Ridge term, relative (x trace(X^T X)/d)."
    )
    alpha: float = Field(
        1.0,
        ge=0,
        le=MAX_COEFFICIENT,
        description="residual: all-position preservation weight, relative (x n).",
    )
    beta: float = Field(
        1.0,
        ge=0,
        le=MAX_COEFFICIENT,
        description="residual: harmless last-position key weight, relative (x n/n_s).",
    )
    hard: bool = Field(False, description="Hard null-space projector instead of the soft penalty.")
    threshold: float = Field(
        0.01, gt=0, le=1, description="Null-space eigenvalue threshold (relative)."
    )
    projections: Text = Field("gate", description="paper: rows to edit, gate and/or up.")
    sparse: bool = Field(False, description="residual: edit only the safety-neuron columns.")
    keep_hrl: bool = Field(
        False,
        description="residual, refusal: also keep the HRL harmful prompts' outputs (the model "
        "already refuses them), weighted like the harmless keys.",
    )
    strength: float = Field(
        1.0,
        gt=0,
        le=MAX_STRENGTH,
        description="Scale of the target: residual, x (h_HRL - h_LRL); refusal, x the shortfall "
        "to the HRL level along the refusal direction.",
    )
    harmless_targets: float = Field(
        0.0,
        ge=0,
        description="residual, refusal: also move the LRL harmless prompts onto their HRL "
        "translations' residual stream (map the language, not only refusal), this block weighted "
        "x the harmful one (0: off; they are then only preserved).",
    )
    positions: int = Field(
        1,
        ge=1,
        le=64,
        description="residual, refusal: map the last N prompt positions (the chat template's "
        "closing tokens, the same in every language), not only the last; needs `swe probe "
        "--positions N` or more.",
    )
    lang_strength: Text = Field(
        "",
        description="residual, refusal: per-language factor on strength, e.g. 'sw=2,th=2' "
        "(languages not named: 1).",
    )

    @field_validator("lang_strength")
    @classmethod
    def _lang_factors(cls, value: str) -> str:
        language_factors(value)  # raises on a malformed entry, before any work
        return value

    @field_validator("projections")
    @classmethod
    def _editable(cls, value: Any) -> Any:
        names = split_list(value) if isinstance(value, str) else list(value)
        if not names or any(name not in PROJECTIONS for name in names):
            raise SolveError(
                f"unknown projections '{','.join(names)}'",
                hint=f"use {' and/or '.join(PROJECTIONS)} (comma-separated); the residual "
                "method edits down_proj by itself",
            )
        return value

    def resolve(self, device: str = "cpu") -> SolveConfig:
        """The stage form: layer numbers and projection names parsed, the device added."""
        values = self.model_dump()
        return SolveConfig.model_validate(
            {**values, "device": "cpu" if device in ("auto", "") else device}
        )


class SolveConfig(SolveSettings):
    """What the solve stage and the methods run with."""

    layers: Layers = None  # type: ignore[assignment]  # None: the method's default
    projections: Names = ("gate",)  # type: ignore[assignment]
    device: str = "cpu"

    def plain(self) -> dict[str, Any]:
        """Plain YAML types (tuples as lists) for edit.yaml and the manifest."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.model_dump().items()}


# -- select ---------------------------------------------------------------------------------------
def _candidates(value: Any) -> Any:
    """'residual@12 rank=32; paper' or a YAML list -> one string per candidate."""
    if isinstance(value, str):
        return tuple(item.strip() for item in value.split(";") if item.strip())
    return value


Candidates = Annotated[tuple[str, ...], BeforeValidator(_candidates)]


class SelectSettings(Settings):
    candidates: Candidates | None = Field(
        None,
        description="Edits to choose from, 'method@layers key=value', separated by ';', e.g. "
        "'residual@12 rank=32; refusal@12 strength=4; paper' (default: a spread of residual, "
        "refusal and paper edits by depth).",
    )
    prompts: int = Field(16, ge=1, description="Validation prompts per language and set.")
    max_new_tokens: int = Field(
        8, ge=1, description="Tokens of each validation answer the refusal judge reads."
    )
    batch_size: int = Field(16, ge=1, description="Prompts per forward pass.")
    validation_fraction: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="Share of the fit ids held back to measure candidates on (the final edit is "
        "solved on every fit id).",
    )

    @field_validator("candidates")
    @classmethod
    def _some(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None and not value:  # '' would silently measure the default spread
            raise ValueError("names no candidate; leave it out for the default spread")
        return value


# -- eval -----------------------------------------------------------------------------------------
class EvalSettings(Settings):
    max_new_tokens: int = Field(64, ge=1, description="Generation length bound.")
    batch_size: int = Field(16, ge=1, description="Prompts per forward pass.")
    judge: str = Field(
        "pattern", description="pattern, or a guard model (Qwen3Guard-Gen, Llama Guard 3)."
    )


# -- recipe ---------------------------------------------------------------------------------------
class Match(Settings):
    model_types: Names = ()
    num_layers: tuple[int, ...] = ()  # empty: any depth
    hidden_sizes: tuple[int, ...] = ()  # empty: any width


class Recipe(Settings):
    name: str
    description: str = ""
    validated: str = ""  # what this recipe was measured on, or why it is a starting point
    match: Match = Field(default_factory=Match)
    probe: ProbeSettings = Field(default_factory=ProbeSettings)
    localize: LocalizeSettings = Field(default_factory=LocalizeSettings)
    solve: SolveSettings = Field(default_factory=SolveSettings)
    select: SelectSettings = Field(default_factory=SelectSettings)
    eval: EvalSettings = Field(default_factory=EvalSettings)
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()


SECTIONS: dict[str, type[Settings]] = {
    "match": Match,
    "probe": ProbeSettings,
    "localize": LocalizeSettings,
    "solve": SolveSettings,
    "select": SelectSettings,
    "eval": EvalSettings,
}
