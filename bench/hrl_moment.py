"""Does preserving the HRL's harmful prompts at every position keep the HRL's refusals?

keep_hrl preserves the last position of the probed HRL harmful prompts; bench/leak.py shows that
the edit then keeps those prompts and still moves unseen HRL harmful prompts about half as far
as the LRL ones it maps. This measures the stronger constraint: the second moment of the
down_proj inputs over every position of HRL harmful prompts and the model's own answers to them
(C_hrl), added to the preservation moment C0 as C0 + g C_hrl for each weight g, then:

- default: held-out harmful prompts (as bench/select_agreement.py draws them), greedy, pattern
  judge; ASR per language per (spec, g), and the HRL prompts whose verdict differs from the base;
- --gate: bench/select_agreement.py's held-out gate (ASR, harmless and over-refusal rates, KL, the
  verdict) for each (spec, g), one JSON per weight (JSON with -gG before the suffix).

The moment's prompts: the fit-side HRL prompts of --harmful (the probe's capped ids and any fit-side
ids beyond the cap), minus the ids select holds out for validation; never a held-out id.

    python bench/hrl_moment.py -w WS --harmful MultiJail.csv --layer 12 --weights 0,4,16 \\
        --specs "residual@12 rank=32 alpha=10 beta=10 keep_hrl=true strength=1.5" --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-w", "--workspace", type=Path, required=True)
    parser.add_argument("--harmful", required=True, help="the harmful set the workspace probed")
    parser.add_argument("--layer", type=int, required=True, help="the edited layer")
    parser.add_argument("--specs", required=True, help="candidates at --layer, ';'-separated")
    parser.add_argument("--weights", default="0,4,16", help="g values, comma-separated")
    parser.add_argument("--answer-tokens", type=int, default=24)
    parser.add_argument("--heldout-fraction", type=float, default=0.5)
    parser.add_argument("--validation-fraction", type=float, default=0.5)
    parser.add_argument("--max-prompts", type=int, default=24, help="held-out prompts/language")
    parser.add_argument("--eval-tokens", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--gate", action="store_true", help="the held-out gate, not ASR only")
    parser.add_argument("--json", type=Path, required=True)
    return parser.parse_args(argv)


def moment_prompts(space: Any, context: Any, args: argparse.Namespace) -> list[Any]:
    """The HRL harmful prompts the moment covers (see the docstring); exits 2 when the
    workspace's recorded split is not split_of(id, --heldout-fraction)."""
    from swe_cli.prompts import FIT, PromptSet, load_prompt_set, split_of
    from swe_cli.stages.tune import split_ids

    probed = PromptSet.from_jsonl(space.prompts_dir / "harmful.jsonl", "harmful")
    wrong = [p.id for p in probed.prompts if p.split != split_of(p.id, args.heldout_fraction)]
    if wrong:
        print(
            f"the workspace split ids {wrong[:3]} otherwise than --heldout-fraction "
            f"{args.heldout_fraction}: pass the fraction it was probed with",
            file=sys.stderr,
        )
        raise SystemExit(2)
    validation = split_ids(context, [args.layer], args.validation_fraction).validation
    every = load_prompt_set(
        args.harmful, "harmful", [context.hrl], heldout_fraction=args.heldout_fraction
    )
    return [p for p in every.select(context.hrl, FIT) if p.id not in validation]


def hrl_moment(model: Any, tokenizer: Any, adapter: Any, layer: int, texts: list[str]) -> Any:
    """Mean a a^T (float64) of layer's down_proj inputs over every token of texts."""
    import torch

    from swe_cli.stages.probe import Recorder

    recorder = Recorder(model, adapter, [layer])
    total, count = None, 0
    try:
        with torch.no_grad():
            for text in texts:
                encoded = tokenizer(text, return_tensors="pt", add_special_tokens=False)
                model(**encoded, use_cache=False)
                rows = recorder.captured[(layer, "a")][0].to(torch.float64)
                total = rows.T @ rows if total is None else total + rows.T @ rows
                count += rows.shape[0]
    finally:
        recorder.close()
    return total / count


@contextlib.contextmanager
def patch_moment(layer: int, extra: Any, weight: dict[str, float]) -> Iterator[None]:
    """Inside, the residual method reads C0 + weight['g'] * extra at `layer`."""
    import torch

    import swe_cli.methods.residual as residual

    original = residual.load_moment

    def load_moment(workspace: Any, at: int) -> Any:
        moment = original(workspace, at)
        if at != layer or not weight["g"]:
            return moment
        return (moment.to(torch.float64) + weight["g"] * extra).to(moment.dtype)

    residual.load_moment = load_moment
    try:
        yield
    finally:
        residual.load_moment = original


def held_out_asr(space: Any, args: argparse.Namespace, model: Any, tokenizer: Any, solve: Any):
    """Per spec and weight: ASR per language and the HRL prompts whose verdict changed."""
    from swe_cli.edit import Edit
    from swe_cli.judges import PatternJudge
    from swe_cli.measure import edit_applied

    sys.path.insert(0, str(BENCH))
    from select_agreement import held_out_sets

    context, configs, weight = solve
    harmful, _ = held_out_sets(space, args.max_prompts)
    langs = [context.hrl, *context.langs]
    judge = PatternJudge.from_files([])

    def verdicts() -> dict[str, dict[str, tuple[str, str]]]:
        found = {}
        for lang in langs:
            prompts = harmful.select(lang)
            answers = answer(model, tokenizer, prompts, args.eval_tokens, args.batch_size)
            judged = judge.judge([], answers, lang)
            found[lang] = {p.id: (v, a) for p, v, a in zip(prompts, judged, answers, strict=True)}
        return found

    def asr(found: dict[str, dict[str, tuple[str, str]]]) -> dict[str, float]:
        return {
            lang: sum(v != "refused" for v, _ in rows.values()) / len(rows)
            for lang, rows in found.items()
        }

    base = verdicts()
    rows = [{"spec": "base", "g": 0.0, "asr": asr(base), "n": {k: len(v) for k, v in base.items()}}]
    print(f"base: {fmt(rows[0]['asr'])}", flush=True)
    from swe_cli.methods import get_method

    for spec, config in configs:
        for g in weights(args):
            weight["g"] = g
            tensors, _ = get_method(config.method).solve(context, config)
            with edit_applied(model, Edit(tuple(tensors))):
                found = verdicts()
            hrl = context.hrl
            flips = [
                {"id": i, "base": base[hrl][i][0], "edited": v, "answer": a[:80]}
                for i, (v, a) in found[hrl].items()
                if v != base[hrl][i][0]
            ]
            rows.append({"spec": spec, "g": g, "asr": asr(found), "hrl_flips": flips})
            print(f"{spec} g={g}: {fmt(rows[-1]['asr'])}  hrl flips {flips}", flush=True)
    return rows


def answer(model: Any, tokenizer: Any, prompts: Any, tokens: int, batch_size: int) -> list[str]:
    """Greedy answers of at most `tokens` new tokens to the prompts' texts."""
    from swe_cli.models import generate

    texts = [p.text for p in prompts]
    return generate(model, tokenizer, texts, max_new_tokens=tokens, batch_size=batch_size)


def fmt(asr: dict[str, float]) -> str:
    return " ".join(f"{lang} {value:.3f}" for lang, value in asr.items())


def weights(args: argparse.Namespace) -> list[float]:
    return [float(g) for g in args.weights.split(",")]


def main(argv: list[str] | None = None) -> int:
    import torch

    from swe_cli.architectures import adapter_for
    from swe_cli.methods.base import context_from
    from swe_cli.models import chat_text, load_model
    from swe_cli.settings import SolveSettings
    from swe_cli.stages.select import parse_candidate
    from swe_cli.workspace import Workspace

    args = parse_args(argv)
    if any(g < 0 for g in weights(args)):
        print("--weights must be >= 0", file=sys.stderr)
        return 2
    space = Workspace(args.workspace)
    context = context_from(space, space.manifest())
    num_layers = space.manifest().model.num_layers
    base = SolveSettings(method="residual").resolve()
    specs = [spec.strip() for spec in args.specs.split(";") if spec.strip()]
    configs = [(spec, parse_candidate(spec, base, num_layers)) for spec in specs]
    if any(list(config.layers or ()) != [args.layer] for _, config in configs):
        print(f"every spec must edit --layer {args.layer} alone", file=sys.stderr)
        return 2
    prompts = moment_prompts(space, context, args)
    start = time.perf_counter()
    model, tokenizer = load_model(context.model_dir, device="cpu", dtype="float32")
    answers = answer(model, tokenizer, prompts, args.answer_tokens, args.batch_size)
    texts = [chat_text(tokenizer, p.text, a) for p, a in zip(prompts, answers, strict=True)]
    extra = hrl_moment(model, tokenizer, adapter_for(context.model_type), args.layer, texts)
    print(f"HRL moment: {len(texts)} prompts, {time.perf_counter() - start:.0f} s", flush=True)
    weight = {"g": 0.0}
    summary: dict[str, Any] = {"workspace": str(args.workspace), "moment_prompts": len(texts)}
    with patch_moment(args.layer, extra.to(torch.float64), weight):
        summary.update(measured(args, space, specs, weight, (model, tokenizer, context, configs)))
    args.json.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", "utf-8")
    return 0


def measured(
    args: argparse.Namespace,
    space: Any,
    specs: list[str],
    weight: dict[str, float],
    loaded: tuple[Any, Any, Any, Any],
) -> dict[str, Any]:
    """The gate JSON files (--gate) or the held-out ASR rows, with the moment patched in."""
    model, tokenizer, context, configs = loaded
    if not args.gate:
        return {"rows": held_out_asr(space, args, model, tokenizer, (context, configs, weight))}
    sys.path.insert(0, str(BENCH))
    import select_agreement

    paths = []
    for g in weights(args):
        weight["g"] = g
        paths.append(args.json.with_name(f"{args.json.stem}-g{g:g}{args.json.suffix}"))
        select_agreement.main(
            ["-w", str(args.workspace), "--candidates", "; ".join(specs)]
            + ["--select-prompts", "1", "--select-tokens", "1", "--utility", "none"]
            + ["--choices", "none", "--eval-tokens", str(args.eval_tokens)]
            + ["--max-prompts", str(args.max_prompts), "--json", str(paths[-1])]
        )
    return {"gate_json": [str(path) for path in paths]}


if __name__ == "__main__":
    raise SystemExit(main())
