"""Multiple-choice scoring: swe's (each question once, its options on the question's cache)
against scoring every option as its own full sequence (question + option, what swe did
before), on the same items and batch size, in one run. Prints CPU and wall seconds of each,
the ratio, the largest score difference and whether the picked options agree.

    python bench/choices.py QWEN_DIR --langs en,bn,sw,th
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from collections.abc import Sequence
from typing import Any


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def every_option_alone(
    model: Any, tokenizer: Any, items: Sequence[Any], batch_size: int
) -> list[list[float]]:
    """The reference: every (item, option) row a full sequence, right-padded, all logits."""
    import torch

    from swe_cli.accuracy import chat_context
    from swe_cli.models import encode_texts, length_batches, pad_rows

    contexts = encode_texts(
        tokenizer, [chat_context(tokenizer, i.question) for i in items], special_tokens=False
    )
    rows = []
    for item_index, item in enumerate(items):
        options = encode_texts(tokenizer, item.options, special_tokens=False)
        for option_index, option_ids in enumerate(options):
            ids = contexts[item_index] + option_ids
            rows.append((item_index, option_index, ids, len(contexts[item_index])))
    scores = [[0.0] * len(item.options) for item in items]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for batch in length_batches([len(ids) for _, _, ids, _ in rows], batch_size):
        input_ids, mask = pad_rows([rows[i][2] for i in batch], pad_id, left=False)
        with torch.inference_mode():
            logits = model(input_ids=input_ids, attention_mask=mask).logits
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        for position, row in enumerate(batch):
            item_index, option_index, ids, start = rows[row]
            steps = torch.arange(start - 1, len(ids) - 1)
            targets = torch.tensor(ids[start:])
            scores[item_index][option_index] = float(log_probs[position, steps, targets].sum())
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a local checkpoint folder")
    parser.add_argument("--langs", default="en,bn,sw,th")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--json")
    args = parser.parse_args()

    import torch

    from swe_cli.accuracy import choose, load_utility_sets, option_log_likelihoods
    from swe_cli.models import load_model

    langs = args.langs.split(",")
    items = list(load_utility_sets(langs, short_answers=None, probes=None).choices)
    model, tokenizer = load_model(args.model, dtype="float32")
    print(
        f"{len(items)} items ({args.langs}), batch {args.batch_size}, "
        f"{torch.get_num_threads()} threads",
        flush=True,
    )
    seconds: dict[str, tuple[float, float]] = {}
    results: dict[str, list[list[float]]] = {}
    for name, run in (
        (
            "swe",
            lambda: option_log_likelihoods(model, tokenizer, items, batch_size=args.batch_size),
        ),
        (
            "every option alone",
            lambda: every_option_alone(model, tokenizer, items, args.batch_size),
        ),
    ):
        cpu, wall = cpu_seconds(), time.perf_counter()
        results[name] = run()
        seconds[name] = (cpu_seconds() - cpu, time.perf_counter() - wall)
        print(f"{name}: {seconds[name][0]:.1f} CPU s, {seconds[name][1]:.1f} s", flush=True)
    ours, reference = results["swe"], results["every option alone"]
    summary = {
        "items": len(items),
        "cpu_ratio": seconds["swe"][0] / seconds["every option alone"][0],
        "wall_ratio": seconds["swe"][1] / seconds["every option alone"][1],
        "max_score_difference": max(
            abs(a - b)
            for x, y in zip(ours, reference, strict=True)
            for a, b in zip(x, y, strict=True)
        ),
        "same_picks": sum(a == b for a, b in zip(choose(ours), choose(reference), strict=True)),
        "seconds": seconds,
    }
    print(json.dumps(summary, indent=1))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(summary, handle, indent=1)


if __name__ == "__main__":
    main()
