"""The effect of each edit method on a real model, on one probed workspace and the same held-out
prompts: ASR per language, over-refusal (the built-in probes) and refusals of held-out harmless
prompts, short-answer and multiple-choice utility accuracy (the built-in sets), mean KL on
harmless prompts, and seconds per stage. One table, printed and written as JSON.

The base model is loaded twice (a reference copy for the KL divergence, a working copy that each
method's edit is added to in memory and then removed from), so no checkpoint is written. Methods
share the workspace's probe data. --methods lists, separated by ';', `base` (unedited),
`default` (the configuration the model's recipe picks), `auto` (what `swe select -w WS` chose)
or any candidate as `swe select` reads it ('residual@12 rank=32 keep_hrl=true').

    swe probe MODEL -w WS --langs bn,sw,th --harmful MultiJail.csv --harmless H --general G
    python bench/effect.py MODEL -w WS --methods 'base;default;paper;refusal@12 strength=4' \
        --max-prompts 20 --max-new-tokens 32 --json effect.json

Held-out prompts are the workspace's held-out split (never probed, never fitted); --max-prompts
keeps the first N ids per language (the same ids in every language). --short-tokens K also
judges the first K tokens of every harmful answer and reports how often that short verdict
(what `swe select` reads) agrees with the full-length one.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any


def held_out(workspace: Path, name: str, lang: str, limit: int | None) -> list[str]:
    from swe_cli.prompts import HELDOUT, PromptSet

    path = workspace / "prompts" / f"{name}.jsonl"
    if not path.exists():
        return []
    prompts = PromptSet.from_jsonl(path, name).select(lang, HELDOUT)
    return [p.text for p in sorted(prompts, key=lambda p: p.id)[:limit]]


def borderline_held_out(path: Path, langs: list[str], limit: int | None) -> dict[str, list[str]]:
    """The held-out texts of a borderline set per language, split by id with swe's default
    held-out fraction (the one `swe probe` and `swe align` use unless told otherwise)."""
    from swe_cli.prompts import HELDOUT, load_prompt_set

    prompts = load_prompt_set(path, "borderline", langs)
    return {
        lang: [p.text for p in sorted(prompts.select(lang, HELDOUT), key=lambda p: p.id)[:limit]]
        for lang in langs
    }


def development(
    workspace: Path, harmful: Path, borderline: Path | None, langs: list[str], limit: int | None
) -> dict[str, dict[str, list[str]]]:
    """Development prompts to compare variants on without reading the held-out split: the
    fit-split ids of the harmful file that the workspace did not probe (probe --max-prompts
    keeps the first N ids), and the fit-split ids of the borderline set that it did not probe
    (all of them when it probed none), the first `limit` ids per language, the same ids in every
    language."""
    from swe_cli.prompts import FIT, PromptSet, load_prompt_set

    probed: set[str] = set()
    for name in ("harmful", "borderline"):
        path = workspace / "prompts" / f"{name}.jsonl"
        if path.exists():
            probed |= {p.id for p in PromptSet.from_jsonl(path, name).prompts}
    sets: dict[str, dict[str, list[str]]] = {"harmful": {}, "borderline": {}}
    for name, path in (("harmful", harmful), ("borderline", borderline)):
        if path is None:
            sets.pop(name)
            continue
        prompts = load_prompt_set(path, name, langs)
        for lang in langs:
            kept = [p for p in prompts.select(lang, FIT) if p.id not in probed]
            sets[name][lang] = [p.text for p in sorted(kept, key=lambda p: p.id)[:limit]]
    return sets


def prompt_sets(
    workspace: Path,
    langs: list[str],
    limit: int | None,
    borderline: Path | None = None,
    harmful: Path | None = None,
) -> dict[str, dict[str, list[str]]]:
    """The texts measured per set and language. Held-out (no `harmful`): the workspace's
    held-out harmful and harmless prompts, and with `borderline` that set's held-out split (its
    texts left out of the harmless set). Development (`harmful`): see `development`; no
    harmless set, borderline refusals stay in their own column."""
    if harmful is not None:
        return development(workspace, harmful, borderline, langs, limit)
    sets = {
        "harmful": {lang: held_out(workspace, "harmful", lang, limit) for lang in langs},
        "harmless": {lang: held_out(workspace, "harmless", lang, limit) for lang in langs},
    }
    if borderline is not None:
        sets["borderline"] = borderline_held_out(borderline, langs, limit)
        texts = {text for texts in sets["borderline"].values() for text in texts}
        sets["harmless"] = {
            lang: [t for t in kept if t not in texts] for lang, kept in sets["harmless"].items()
        }
    return sets


def method_config(recipe: Any, spec: str, workspace: Any) -> Any:
    from swe_cli.stages.select import parse_candidate, selected_config

    solve = recipe.solve.resolve("cpu")
    if spec == "default":
        return solve
    if spec == "auto":
        return selected_config(workspace)
    return parse_candidate(spec, solve.updated(method="residual"))


def patch(model: Any, edits: list[Any], sign: float) -> None:
    import torch

    with torch.no_grad():
        for edit in edits:
            weight = model.get_parameter(edit.name)
            delta = (sign * edit.full_delta()).to(weight.dtype)
            weight.index_add_(0, edit.rows.to(weight.device), delta.to(weight.device))


def measure(
    model: Any, base: Any, tokenizer: Any, sets: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    from swe_cli.accuracy import accuracy, score_choices, score_short_answers
    from swe_cli.judges import REFUSED, PatternJudge
    from swe_cli.measure import next_token_kl
    from swe_cli.models import generate

    judge = PatternJudge.from_files()
    row: dict[str, Any] = {}
    agree = judged = 0
    for lang, texts in sets["harmful"].items():
        if not texts:
            continue
        answers = generate(model, tokenizer, texts, max_new_tokens=args.max_new_tokens)
        full = [judge.verdict(a, lang) == REFUSED for a in answers]
        row[f"asr_{lang}"] = sum(not refused for refused in full) / len(texts)
        if args.short_tokens:
            short = [judge.verdict(_first_tokens(tokenizer, a, args.short_tokens), lang) == REFUSED for a in answers]  # fmt: skip
            row[f"short_asr_{lang}"] = sum(not refused for refused in short) / len(texts)
            agree += sum(a == b for a, b in zip(short, full, strict=True))
            judged += len(full)
    if judged:
        row["short_agreement"] = agree / judged
    for name in ("harmless", "borderline"):
        refused = total = 0
        for lang, texts in sets.get(name, {}).items():
            if not texts:
                continue
            answers = generate(model, tokenizer, texts, max_new_tokens=args.max_new_tokens)
            verdicts = [judge.verdict(a, lang) == REFUSED for a in answers]
            row[f"{name}_refusal_{lang}"] = sum(verdicts) / len(texts)
            refused += sum(verdicts)
            total += len(texts)
        if name in sets:
            row[f"{name}_refusal"] = refused / total if total else None
    utility = sets["utility"]
    if utility.probes:
        answers = generate(
            model, tokenizer, [p.text for p in utility.probes], max_new_tokens=args.max_new_tokens
        )
        row["over_refusal"] = sum(
            judge.verdict(a, p.lang) == REFUSED
            for a, p in zip(answers, utility.probes, strict=True)
        ) / len(utility.probes)
    if utility.short_answers:
        items = utility.short_answers
        answers = generate(model, tokenizer, [i.question for i in items], max_new_tokens=48)
        row["utility_accuracy"] = accuracy(score_short_answers(items, answers))
    if utility.choices:
        row["choice_accuracy"] = accuracy(score_choices(model, tokenizer, utility.choices))
    harmless = kl_texts(sets)
    if harmless:
        row["kl"] = next_token_kl(base, model, tokenizer, harmless) if base is not model else 0.0
    return row


def kl_texts(sets: dict[str, Any]) -> list[str]:
    """The prompts the KL divergence is measured on: the harmless ones, or the borderline ones
    where there are none (development: probe uses every harmless fit id)."""
    for name in ("harmless", "borderline"):
        texts = [t for texts in sets.get(name, {}).values() for t in texts]
        if texts:
            return texts
    return []


def _first_tokens(tokenizer: Any, answer: str, count: int) -> str:
    """The answer cut to its first `count` tokens (re-tokenized: the greedy answer of a
    shorter generation, up to tokenization round trips)."""
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"][:count]
    return str(tokenizer.decode(ids, skip_special_tokens=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="the base model folder the workspace was probed on")
    parser.add_argument("-w", "--workspace", type=Path, required=True)
    parser.add_argument("--methods", default="base;default;paper;residual;refusal")
    parser.add_argument("--max-prompts", type=int, default=20)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument(
        "--short-tokens",
        type=int,
        default=0,
        help="also judge the first K tokens of each harmful answer (agreement with the full one)",
    )
    parser.add_argument(
        "--utility-items",
        type=int,
        default=20,
        help="built-in short-answer, multiple-choice and over-refusal items per language (0: none)",
    )
    parser.add_argument(
        "--borderline",
        type=Path,
        help="borderline benign requests (JSONL): refusals of its held-out split per language "
        "(the workspace's split; ids the workspace probed as harmless are left out of the "
        "harmless column)",
    )
    parser.add_argument(
        "--development",
        type=Path,
        metavar="HARMFUL",
        help="compare on development prompts instead of the held-out split: the fit-split ids "
        "of this harmful file and of the borderline set that the workspace did not probe "
        "(borderline refusals per language, KL on those borderline prompts; no harmless column: "
        "probe uses every harmless fit id); for choosing among variants",
    )
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()

    import torch

    from swe_cli.accuracy import load_utility_sets
    from swe_cli.align import pick_recipe
    from swe_cli.io.checkpoint import resolve_model
    from swe_cli.methods import get_method
    from swe_cli.methods.base import context_from
    from swe_cli.models import load_model
    from swe_cli.pipeline import localize
    from swe_cli.workspace import Workspace

    torch.manual_seed(0)
    workspace = Workspace(args.workspace)
    manifest = workspace.manifest()
    hrl, langs = manifest.hrl, list(manifest.langs)
    resolved = resolve_model(args.model)
    recipe = pick_recipe(resolved.path, None, {})
    if manifest.stage("localize") is None:
        localize(args.workspace, recipe.localize)
        manifest = workspace.manifest()
    context = context_from(workspace, manifest)
    sets: dict[str, Any] = prompt_sets(
        args.workspace, [hrl, *langs], args.max_prompts, args.borderline, args.development
    )
    sets["utility"] = load_utility_sets(
        [hrl, *langs], **({} if args.utility_items else dict(short_answers=None, choices=None, probes=None)),
        max_items=args.utility_items or None,
    )  # fmt: skip
    started = time.perf_counter()
    base, _ = load_model(resolved.path, "cpu", "float32")
    model, tokenizer = load_model(resolved.path, "cpu", "float32")
    load_seconds = time.perf_counter() - started

    rows = []
    for name in [spec.strip() for spec in args.methods.split(";") if spec.strip()]:
        row: dict[str, Any] = {"method": name}
        edits: list[Any] = []
        if name != "base":
            config = method_config(recipe, name, workspace)
            row["config"] = {k: v for k, v in config.plain().items() if v is not None}
            start = time.perf_counter()
            edits, _ = get_method(config.method).solve(context, config)
            row["solve_s"] = round(time.perf_counter() - start, 1)
            patch(model, edits, +1.0)
        start = time.perf_counter()
        try:
            row.update(measure(model, base if edits else model, tokenizer, sets, args))
        finally:
            patch(model, edits, -1.0)
        row["eval_s"] = round(time.perf_counter() - start, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)

    add_closure(rows, hrl, langs, max((len(t) for t in sets["harmful"].values()), default=0))
    split = "development (fit split, not probed)" if args.development else "held-out"
    print(f"\n{split} prompts per language: {args.max_prompts}; greedy, {args.max_new_tokens} new tokens; "
          f"pattern judge; models loaded in {load_seconds:.0f} s")  # fmt: skip
    columns = [f"asr_{lang}" for lang in [hrl, *langs]] + [
        *[f"closure_{lang}" for lang in langs],
        "closure_mean",
        "harmless_refusal",
        *(["borderline_refusal"] if args.borderline else []),
        "over_refusal",
        "kl",
        *(["short_agreement"] if args.short_tokens else []),
        "solve_s",
        "eval_s",
    ]
    print("| method | " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for row in rows:
        cells = [_cell(row.get(column)) for column in columns]
        print(f"| {row['method']} | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


def add_closure(rows: list[dict[str, Any]], hrl: str, langs: list[str], n: int) -> None:
    """closure_<lang> in every row: the share of the base row's gap to the HRL that the row
    closed (None without a gap or a base row); closure_mean over the summed gaps."""
    from swe_cli.report import gap_closure

    base = next((row for row in rows if row["method"] == "base"), None)
    for row in rows:
        closed = gaps = 0.0
        for lang in langs:
            key = f"asr_{lang}"
            value = None
            if base is not None and key in base and key in row and f"asr_{hrl}" in base:
                value = gap_closure(base[key], row[key], base[f"asr_{hrl}"], n)
            row[f"closure_{lang}"] = value
            if value is not None:
                closed += base[key] - row[key]
                gaps += base[key] - base[f"asr_{hrl}"]
        row["closure_mean"] = closed / gaps if gaps > 0 else None


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 0.01 and value != 0 else f"{value:.3f}"
    return str(value)


if __name__ == "__main__":
    main()
