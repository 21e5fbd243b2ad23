"""How well `swe select`'s verdict predicts the shipping gate: for each candidate of a probed
workspace, select's verdict (the gate's rules and limits on its validation prompts of the fit
split, the candidate solved on the tune-fit part, every cell measured) and the held-out gate's
verdict (the candidate solved on every fit id as `swe solve` does, evaluated in memory on the
held-out split as `swe align --eval` does, judged by gate.check with the same limits). Prints one
row per candidate and the agreement rate (both pass or both fail) with its n.

    swe probe MODEL -w WS --langs bn,sw,th --harmful MultiJail.csv --borderline builtin
    swe localize -w WS
    python bench/select_agreement.py -w WS --json agreement.json

    # the model organism (seed 0): the workspace `swe demo` probes, its refusal phrases and
    # utility sets, and a spread of 14 candidates from gentle to destructive
    swe demo -o DEMO
    python bench/select_agreement.py -w DEMO/workspace \
        --patterns ~/.cache/swe/organism/v2-*-seed0/prompts/refusal_patterns.yaml \
        --utility DEMO/utility/organism_utility.jsonl \
        --choices DEMO/utility/organism_multiple_choice.jsonl --over-refusal none \
        --eval-tokens 24 --batch-size 64 --json agreement.json --candidates \
        'residual@1,2,3; residual@1; residual@2; residual@3; residual@2 rank=32 keep_hrl=true;
        residual@1,2,3 strength=0.3; residual@1,2,3 strength=3; residual@1,2,3 strength=10;
        residual@1,2,3 alpha=0.01 beta=0.01; residual@2 alpha=0 beta=0 lam=0.001 strength=5;
        refusal@2 strength=4 keep_hrl=true; refusal@2 strength=20; refusal@1,2,3 strength=40;
        paper'

The unedited model's held-out answers are cached (as `swe align --eval` caches them), so each
candidate costs one held-out evaluation of the edited model.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-w", "--workspace", type=Path, required=True)
    parser.add_argument("--candidates", default=None, help="as select.candidates (';'-separated)")
    parser.add_argument("--patterns", type=Path, action="append", default=[])
    parser.add_argument("--select-prompts", type=int, default=16)
    parser.add_argument("--select-tokens", type=int, default=8)
    parser.add_argument(
        "--validation-fraction", type=float, default=None, help="as select.validation_fraction"
    )
    parser.add_argument(
        "--gate-from",
        type=Path,
        default=None,
        help="an earlier --json of the same workspace: reuse its held-out gate verdicts (they do "
        "not depend on select's settings) for the candidates it has",
    )
    parser.add_argument("--eval-tokens", type=int, default=64)
    parser.add_argument("--max-prompts", type=int, default=None, help="held-out ids per language")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--utility", default="builtin")
    parser.add_argument("--choices", default="builtin")
    parser.add_argument("--over-refusal", default="builtin")
    parser.add_argument("--max-kl", type=float, default=None)
    parser.add_argument("--max-over-refusal", type=float, default=None)
    parser.add_argument("--max-hrl-asr-rise", type=float, default=None)
    parser.add_argument("--max-degenerate-rise", type=float, default=None)
    parser.add_argument("--cache", type=Path, default=None, help="base answers (default: swe's)")
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args(argv)


def limits_of(args: argparse.Namespace) -> Any:
    from swe_cli.gate import GateLimits

    given = {
        name: getattr(args, name)
        for name in ("max_kl", "max_over_refusal", "max_hrl_asr_rise", "max_degenerate_rise")
        if getattr(args, name) is not None
    }
    return GateLimits(**given)


def candidates(space: Any, context: Any, settings: Any) -> list[Any]:
    from swe_cli.settings import SolveSettings
    from swe_cli.stages.select import _with_layers, candidate_configs

    base = SolveSettings(method="auto").resolve()
    configs: list[Any] = []
    num_layers = space.manifest().model.num_layers
    for config in candidate_configs(settings, base, num_layers):
        with_layers = _with_layers(config, context)
        if with_layers not in configs:
            configs.append(with_layers)
    return configs


def select_verdicts(
    space: Any, context: Any, configs: list[Any], settings: Any, limits: Any, args: Any
) -> tuple[list[Any], Any, dict[str, int]]:
    """select's rows, every cell measured (no early stop), and n per cell."""
    from swe_cli.judges import PatternJudge
    from swe_cli.methods.base import TuneData
    from swe_cli.models import load_model
    from swe_cli.stages.select import (
        BORDERLINE,
        HARMFUL,
        HARMLESS,
        _Meter,
        measure_candidate,
        validation_cells,
    )
    from swe_cli.stages.tune import split_ids

    split = split_ids(context, context.probed_layers[:1], settings.validation_fraction)
    data = TuneData(context, split.fit, split.validation)
    cells = validation_cells(space, [context.hrl, *context.langs], split.validation, settings)
    model, tokenizer = load_model(context.model_dir, device="cpu", dtype=args.dtype)
    judge = PatternJudge.from_files(args.patterns)
    meter = _Meter(
        model, tokenizer, judge, cells[HARMFUL], cells[HARMLESS], settings, cells[BORDERLINE]
    )
    reference = meter.measure()
    rows = [
        measure_candidate(meter, data, config, reference, limits, _say, full=True)
        for config in configs
    ]
    counts = {
        f"{cell}-{lang}": len(texts) for cell, by in cells.items() for lang, texts in by.items()
    }
    return rows, reference, counts


def held_out_sets(space: Any, max_prompts: int | None) -> tuple[Any, Any]:
    """The workspace's harmful and plain harmless prompt sets (borderline requests left out, as
    eval's harmless set has none), at most max_prompts held-out ids each."""
    from swe_cli.prompts import HELDOUT, PromptSet
    from swe_cli.stages.select import borderline_ids

    border = borderline_ids(space)

    def load(name: str) -> Any:
        prompts = PromptSet.from_jsonl(space.prompts_dir / f"{name}.jsonl", name)
        ids = [i for i in prompts.ids(HELDOUT) if i not in border][:max_prompts]
        kept = tuple(p for p in prompts.prompts if p.id in set(ids))
        return PromptSet(name=name, prompts=kept, source=prompts.source)

    return load("harmful"), load("harmless")


def measures(result: Any) -> dict[str, Any]:
    """What the gate reads of one model's eval results: ASR per language, the mean rates."""
    mean = result.mean()
    return {
        "asr": {lang: entry.asr for lang, entry in result.by_lang().items()},
        **{key: mean.get(key) for key in ("harmless_refusal", "over_refusal", "kl")},
    }


def gate_verdict(
    context: Any, config: Any, sets: tuple[Any, Any], utility: Any, limits: Any, args: Any
) -> tuple[bool, list[str], float, dict[str, Any]]:
    from swe_cli.edit import Edit
    from swe_cli.errors import SweError
    from swe_cli.gate import check
    from swe_cli.judges import PatternJudge
    from swe_cli.methods import get_method
    from swe_cli.stages.base_cache import default_cache_dir
    from swe_cli.stages.evaluate import EvalInputs, run_eval_edit

    start = time.perf_counter()
    try:
        tensors, _report = get_method(config.method).solve(context, config)
        inputs = EvalInputs(
            harmful=sets[0],
            harmless=sets[1],
            utility=utility,
            langs=[context.hrl, *context.langs],
            judge=PatternJudge.from_files(args.patterns),
            max_new_tokens=args.eval_tokens,
            batch_size=args.batch_size,
            dtype=args.dtype,
        )
        report = run_eval_edit(
            context.model_dir, Edit(tuple(tensors)), inputs, cache=args.cache or default_cache_dir()
        )
    except SweError as error:
        return False, [f"failed: {error.message}"], time.perf_counter() - start, {}
    decision = check(report, context.hrl, list(context.langs), limits)
    seen = {"edited": measures(report.model), "base": measures(report.baseline)}
    return decision.passed, list(decision.reasons), time.perf_counter() - start, seen


def earlier_gate(
    path: Path | None,
    workspace: Path,
    limits: Any,
    held: dict[str, int],
    eval_tokens: int,
    utility_sets: dict[str, str],
) -> dict[str, tuple[bool, list[str], float, dict[str, Any]]]:
    """Held-out gate verdicts per candidate from an earlier run's JSON, which must be of the same
    workspace, limits, held-out prompts, answer length and utility sets (the verdict depends on
    nothing else)."""
    if path is None:
        return {}
    earlier = json.loads(path.read_text(encoding="utf-8"))
    if Path(earlier["workspace"]).resolve() != workspace.resolve():
        raise SystemExit(f"{path} is of workspace {earlier['workspace']}, not {workspace}")
    if earlier["limits"] != asdict(limits):
        raise SystemExit(f"{path} was judged with other gate limits: {earlier['limits']}")
    if (
        earlier["held_out_prompts"] != held
        or earlier.get("eval_tokens", eval_tokens) != eval_tokens
        or earlier.get("utility_sets", utility_sets) != utility_sets
    ):
        raise SystemExit(
            f"{path} was judged on other held-out prompts, answer lengths or utility sets"
        )
    return {
        row["candidate"]: (
            row["gate_pass"],
            row["gate_reasons"],
            row["gate_seconds"],
            row.get("gate_measures", {}),
        )
        for row in earlier["candidates"]
    }


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    from swe_cli.accuracy import load_utility_sets
    from swe_cli.methods.base import context_from
    from swe_cli.settings import SelectSettings
    from swe_cli.stages.select import describe
    from swe_cli.workspace import Workspace

    args = parse_args(argv)
    space = Workspace(args.workspace)
    context = context_from(space, space.manifest())
    settings = SelectSettings(
        candidates=args.candidates,
        prompts=args.select_prompts,
        max_new_tokens=args.select_tokens,
        batch_size=args.batch_size,
        **(
            {}
            if args.validation_fraction is None
            else {"validation_fraction": args.validation_fraction}
        ),
    )
    limits = limits_of(args)
    configs = candidates(space, context, settings)
    start = time.perf_counter()
    rows, reference, counts = select_verdicts(space, context, configs, settings, limits, args)
    select_seconds = time.perf_counter() - start
    sets = held_out_sets(space, args.max_prompts)
    langs = [context.hrl, *context.langs]
    utility = load_utility_sets(
        langs,
        short_answers=args.utility,
        choices=args.choices,
        probes=args.over_refusal,
        max_items=args.max_prompts,
    )
    held = {
        f"{name}-{lang}": len(prompt_set.select(lang)) if lang in prompt_set.langs() else 0
        for name, prompt_set in zip(("harmful", "harmless"), sets, strict=True)
        for lang in langs
    }
    utility_sets = {"utility": args.utility, "choices": args.choices, "probes": args.over_refusal}
    earlier = earlier_gate(
        args.gate_from, args.workspace, limits, held, args.eval_tokens, utility_sets
    )
    results = []
    for config, row in zip(configs, rows, strict=True):
        if describe(config) in earlier:
            passed, reasons, seconds, seen = earlier[describe(config)]
        else:
            _say(f"held-out gate: {describe(config)}")
            passed, reasons, seconds, seen = gate_verdict(
                context, config, sets, utility, limits, args
            )
        select_pass = row.measure is not None and not math.isnan(row.measure.kl) and not row.reasons
        results.append(
            {
                "candidate": describe(config),
                "select_pass": select_pass,
                "select_reasons": list(row.reasons) or ([row.error] if row.error else []),
                "gain": row.gain if math.isfinite(row.gain) else None,
                "gate_pass": passed,
                "gate_reasons": reasons,
                "agree": select_pass == passed,
                "gate_seconds": round(seconds, 1),
                "gate_measures": seen,
            }
        )
    agree = sum(result["agree"] for result in results)
    n = len(results)
    summary = {
        "workspace": str(args.workspace),
        "limits": asdict(limits),
        "select_prompts": counts,
        "held_out_prompts": held,
        "eval_tokens": args.eval_tokens,
        "utility_sets": utility_sets,
        "select_seconds": round(select_seconds, 1),
        "unedited_select": {
            "refusal": reference.refusal,
            "harmless_refusal": reference.harmless_refusal,
            "borderline_refusal": reference.over_refusal,
        },
        "candidates": results,
        "agreement": {"agree": agree, "n": n, "rate": agree / n if n else None},
        "confusion": {
            f"select_{s}_gate_{g}": sum(
                (r["select_pass"], r["gate_pass"]) == (s == "pass", g == "pass") for r in results
            )
            for s in ("pass", "fail")
            for g in ("pass", "fail")
        },
    }
    print(f"{'candidate':<58} {'select':<6} {'gate':<6} agree")
    for result in results:
        print(
            f"{result['candidate'][:58]:<58} {'pass' if result['select_pass'] else 'fail':<6} "
            f"{'pass' if result['gate_pass'] else 'fail':<6} {'yes' if result['agree'] else 'NO'}"
        )
    print(f"select n per cell: {counts}")
    print(f"held-out n per cell: {held}")
    print(f"agreement: {agree}/{n} = {agree / n:.2f}" if n else "agreement: no candidates")
    print("confusion:", summary["confusion"])
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
