"""What the edited model's eval costs with and without the base's answers as drafts, in one run.

`swe align --eval` measures the base, then the edited model; the edit changes few answers, so
the edited model's greedy decoding checks the base's answers in one forward pass (drafts, see
swe_cli/models.greedy_tokens) and decodes only from the first token an answer changes. This
bench generates, on the same prompts, batches and settings (the eval's held-out sets of the
workspace's languages: harmful, harmless, over-refusal probes, short answers):

1. the base's answers (plain decoding), which become the drafts;
2. the edited model's answers, plain decoding (what eval did before);
3. the edited model's answers with the drafts;

and prints the CPU and wall seconds of each, the ratio 3 / 2, how many of the edited answers
differ from the base's, and how many answers of 3 equal those of 2 (they should all: drafts
change the time, not the answers, up to float rounding between a full pass and cached steps).

    python bench/eval_drafts.py QWEN_DIR -w WORKSPACE --every 2
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
    parser.add_argument("-w", "--workspace", type=Path, required=True, help="a solved workspace")
    parser.add_argument("--every", type=int, default=1, help="keep every N-th prompt")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import torch

    from swe_cli.edit import load_edit
    from swe_cli.measure import edit_applied
    from swe_cli.models import generate, load_model
    from swe_cli.pipeline_eval import solved_edit_file

    prompts = eval_prompts(args.workspace, args.every)
    model, tokenizer = load_model(args.model, dtype="float32")
    edit = load_edit(solved_edit_file(args.workspace))
    settings = {"max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size}
    print(f"{len(prompts)} prompts, {settings}, {torch.get_num_threads()} threads", flush=True)
    rows: dict[str, Any] = {}

    def timed(name: str, run: Any) -> list[str]:
        cpu, wall = cpu_seconds(), time.perf_counter()
        answers = run()
        rows[name] = {"cpu_s": cpu_seconds() - cpu, "wall_s": time.perf_counter() - wall}
        print(f"{name}: {rows[name]['cpu_s']:.1f} CPU s, {rows[name]['wall_s']:.1f} s", flush=True)
        return answers

    base = timed("base", lambda: generate(model, tokenizer, prompts, **settings))
    with edit_applied(model, edit):
        plain = timed("edited", lambda: generate(model, tokenizer, prompts, **settings))
        drafted = timed(
            "edited_drafts", lambda: generate(model, tokenizer, prompts, **settings, drafts=base)
        )
    summary = {
        "prompts": len(prompts),
        "changed_by_edit": sum(a != b for a, b in zip(base, plain, strict=True)),
        "drafts_equal_plain": sum(a == b for a, b in zip(plain, drafted, strict=True)),
        "cpu_ratio": rows["edited_drafts"]["cpu_s"] / rows["edited"]["cpu_s"],
        "wall_ratio": rows["edited_drafts"]["wall_s"] / rows["edited"]["wall_s"],
        **settings,
        "threads": torch.get_num_threads(),
        "steps": rows,
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "steps"}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
