"""Greedy generation of eval's prompts at several batch sizes, in one run: seconds per batch size
and how many answers equal those of the first (batch composition changes float rounding, so a
near-tie may flip; the rest must agree).

    python bench/eval_batches.py QWEN_DIR -w WORKSPACE --every 4 --batch-sizes 16,64
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path
from typing import Any


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def eval_prompts(workspace: Path, every: int) -> list[str]:
    """Every `every`-th prompt of the sets `swe align --eval` answers: the held-out split of the
    workspace's harmful and harmless sets, the built-in over-refusal probes and short answers."""
    import yaml

    from swe_cli.accuracy import load_utility_sets
    from swe_cli.prompts import HELDOUT, PromptSet

    manifest = yaml.safe_load((workspace / "workspace.yaml").read_text())
    langs = [manifest["hrl"], *manifest["langs"]]
    sets = {
        name: PromptSet.from_jsonl(workspace / "prompts" / f"{name}.jsonl", name)
        for name in ("harmful", "harmless")
    }
    utility = load_utility_sets(langs, short_answers="builtin", choices=None, probes="builtin")
    texts: list[str] = []
    for lang in langs:
        texts += [p.text for p in sets["harmful"].select(lang, HELDOUT)]
        texts += [p.text for p in sets["harmless"].select(lang, HELDOUT)]
        texts += [p.text for p in utility.probes if p.lang == lang]
        texts += [i.question for i in utility.short_answers if i.lang == lang]
    return texts[::every]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="the base model folder the workspace was probed on")
    parser.add_argument("-w", "--workspace", type=Path, required=True)
    parser.add_argument("--every", type=int, default=1, help="keep every N-th prompt")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-sizes", default="16,64")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import torch

    from swe_cli.models import generate, load_model

    prompts = eval_prompts(args.workspace, args.every)
    model, tokenizer = load_model(args.model, dtype="float32")
    sizes = [int(size) for size in args.batch_sizes.split(",")]
    print(
        f"{len(prompts)} prompts, {args.max_new_tokens} new tokens, "
        f"{torch.get_num_threads()} threads",
        flush=True,
    )
    rows: dict[int, dict[str, Any]] = {}
    answers: dict[int, list[str]] = {}
    for size in sizes:
        cpu, wall = cpu_seconds(), time.perf_counter()
        answers[size] = generate(
            model, tokenizer, prompts, max_new_tokens=args.max_new_tokens, batch_size=size
        )
        rows[size] = {
            "cpu_s": cpu_seconds() - cpu,
            "wall_s": time.perf_counter() - wall,
            "equal_to_first": sum(
                a == b for a, b in zip(answers[sizes[0]], answers[size], strict=True)
            ),
        }
        rows[size]["cpu_ratio"] = rows[size]["cpu_s"] / rows[sizes[0]]["cpu_s"]
        print(f"batch {size}: {json.dumps(rows[size])}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"prompts": len(prompts), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
