"""Every command-line option that more than one command takes, declared once. Stage settings
take their help text and default from the settings models (swe_cli/settings.py), so a default
lives in one place; `--method` lists the registered methods with their own descriptions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from swe_cli.cli.app import set_json, set_quiet
from swe_cli.methods import method_descriptions
from swe_cli.settings import (
    EvalSettings,
    LocalizeSettings,
    ProbeSettings,
    SelectSettings,
    SolveSettings,
    field_default,
    field_help,
)

MODEL_HELP = "Hub model id or local model folder."

# -- output and run ---------------------------------------------------------------------------------
Json = Annotated[
    bool,
    typer.Option(
        "--json",
        help="Print the summary as JSON on stdout (nothing else goes there) in place of the "
        "tables, progress and notes, which go to stderr; errors still go to stderr.",
        callback=set_json,
    ),
]
Quiet = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress bars or tables.", callback=set_quiet)
]
Workspace = Annotated[
    Path | None,
    typer.Option(
        "-w",
        "--workspace",
        help="Workspace folder shared by the stages (align: default a cache folder keyed by "
        "model and languages; eval: also write the report into WS/eval/).",
    ),
]
Device = Annotated[str, typer.Option("--device", help="torch device: cpu, cuda, cuda:1, mps.")]
Dtype = Annotated[
    str, typer.Option("--dtype", help="Model dtype: auto, bfloat16, float16, float32.")
]
Revision = Annotated[
    str | None, typer.Option("--revision", help="Hub revision (branch, tag or commit).")
]
Langs = Annotated[
    str, typer.Option("--langs", help="Comma-separated target (low-resource) languages.")
]
Hrl = Annotated[
    str, typer.Option("--hrl", help="High-resource language whose behaviour is the target.")
]
Force = Annotated[bool, typer.Option("--force", help="Replace an existing output folder.")]
Link = Annotated[bool, typer.Option("--link", help="Hard-link shards that hold no edited tensor.")]
Private = Annotated[bool, typer.Option("--private", help="Create the Hub repo as private.")]
Patterns = Annotated[
    list[Path] | None,
    typer.Option("--patterns", help="Extra refusal patterns (YAML lang -> phrases)."),
]
Set = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a recipe field, e.g. --set solve.rank=16 (repeatable)."),
]

# -- prompt sets ------------------------------------------------------------------------------------
Harmful = Annotated[
    str,
    typer.Option("--harmful", help="Harmful prompts: MultiJail CSV, CSV/JSONL, or Hub dataset."),
]
Harmless = Annotated[
    str | None,
    typer.Option(
        "--harmless",
        help="Harmless prompts (CSV/JSONL, optional answers); align: the built-in 10-language set by default.",
    ),
]
General = Annotated[
    str | None,
    typer.Option(
        "--general",
        help="General text (long JSONL/CSV) for the moments and perplexity; align: the built-in set by default.",
    ),
]
HeldoutFraction = Annotated[
    float,
    typer.Option(
        "--heldout-fraction", help=field_help(ProbeSettings, "heldout_fraction") + " Must match."
    ),
]
MaxPrompts = Annotated[
    int | None, typer.Option("--max-prompts", help=field_help(ProbeSettings, "max_prompts"))
]


# -- stage settings (help and defaults from swe_cli/settings.py) -------------------------------------
def _option(model: type, name: str, *flags: str, **extra: object) -> object:
    return typer.Option(*flags, help=field_help(model, name), **extra)  # type: ignore[arg-type]


ProbeLayers = Annotated[str, _option(ProbeSettings, "layers", "--layers")]
StatsLayers = Annotated[str | None, _option(ProbeSettings, "stats_layers", "--stats-layers")]
Positions = Annotated[int, _option(ProbeSettings, "positions", "--positions", min=1)]
BatchSize = Annotated[int, _option(ProbeSettings, "batch_size", "--batch-size", min=1)]
MaxLength = Annotated[int, _option(ProbeSettings, "max_length", "--max-length", min=1)]
OwnAnswers = Annotated[int, _option(ProbeSettings, "own_answers", "--own-answers", min=0)]
Borderline = Annotated[str, _option(ProbeSettings, "borderline", "--borderline")]
TauMag = Annotated[float, _option(LocalizeSettings, "tau_mag", "--tau-mag")]
TauStat = Annotated[float, _option(LocalizeSettings, "tau_stat", "--tau-stat")]
Method = Annotated[
    str | None,
    typer.Option(
        "--method",
        help="Edit method: "
        + "; ".join(f"{name} ({text})" for name, text in method_descriptions().items())
        + "; or auto (the candidate `swe select` measured best). align/demo: overrides the "
        "recipe's solve.method; solve: default the edit `swe select` chose in the workspace, "
        "else the recipe's.",
    ),
]
SolveLayers = Annotated[str | None, _option(SolveSettings, "layers", "--layers")]
Rank = Annotated[int | None, _option(SolveSettings, "rank", "--rank")]
Gamma = Annotated[float, _option(SolveSettings, "gamma", "--gamma")]
Lam = Annotated[float, _option(SolveSettings, "lam", "--lambda")]
Alpha = Annotated[float, _option(SolveSettings, "alpha", "--alpha")]
Beta = Annotated[float, _option(SolveSettings, "beta", "--beta")]
Hard = Annotated[bool, _option(SolveSettings, "hard", "--hard")]
Threshold = Annotated[float, _option(SolveSettings, "threshold", "--threshold")]
Projections = Annotated[str, _option(SolveSettings, "projections", "--projections")]
Sparse = Annotated[bool, _option(SolveSettings, "sparse", "--sparse")]
Strength = Annotated[float, _option(SolveSettings, "strength", "--strength")]
KeepHrl = Annotated[bool, _option(SolveSettings, "keep_hrl", "--keep-hrl")]
Judge = Annotated[str, _option(EvalSettings, "judge", "--judge")]
MaxNewTokens = Annotated[int, _option(EvalSettings, "max_new_tokens", "--max-new-tokens", min=1)]

# what an edit may cost: the shipping gate of `align --eval`, and the limits `select` keeps
MaxKl = Annotated[
    float,
    typer.Option("--max-kl", min=0, help="Highest mean KL(base || edited) on harmless prompts."),
]
MaxOverRefusal = Annotated[
    float,
    typer.Option("--max-over-refusal", min=0, help="Largest rise of harmless refusals."),
]
MaxHrlAsrRise = Annotated[
    float,
    typer.Option("--max-hrl-asr-rise", min=0, help="Largest rise of HRL ASR (fall of refusal)."),
]
MaxUtilityDrop = Annotated[
    float,
    typer.Option("--max-utility-drop", min=0, help="Gate: largest fall of utility accuracy."),
]
MaxDegenerateRise = Annotated[
    float,
    typer.Option(
        "--max-degenerate-rise",
        min=0,
        help="Largest rise of degenerate (empty or looping) answers to harmful prompts, in any "
        "language (HRL included).",
    ),
]
Candidates = Annotated[str | None, _option(SelectSettings, "candidates", "--candidates")]
SelectPrompts = Annotated[int, _option(SelectSettings, "prompts", "--prompts", min=1)]
SelectTokens = Annotated[int, _option(SelectSettings, "max_new_tokens", "--max-new-tokens", min=1)]
SelectBatch = Annotated[int, _option(SelectSettings, "batch_size", "--batch-size", min=1)]

# defaults, so that a command's signature shows the settings model's value
PROBE = {name: field_default(ProbeSettings, name) for name in ProbeSettings.model_fields}
LOCALIZE = {name: field_default(LocalizeSettings, name) for name in LocalizeSettings.model_fields}
SOLVE = {name: field_default(SolveSettings, name) for name in SolveSettings.model_fields}
SELECT = {name: field_default(SelectSettings, name) for name in SelectSettings.model_fields}
EVAL = {name: field_default(EvalSettings, name) for name in EvalSettings.model_fields}
