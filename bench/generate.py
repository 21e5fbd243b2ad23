"""Throughput of swe's generation and probe paths against the bare transformers loops they wrap.

In one process, on the same prompts, batches and settings, alternating A and B each repeat:
- generation: swe_cli.models.generate (rows leave the batch at their eos) against a bare loop
  of model.generate over the same length-sorted batches (greedy, same eos and max_new_tokens);
  tokens/s counts each answer's new tokens up to and including its eos, the same for both
  (the answers are checked to be identical);
- with --static, also model.generate with transformers' static KV cache
  (cache_implementation="static", no torch.compile) over the same batches;
- probe: probe's moment streaming (stages/probe.stream_moments: forward hooks on the recorded
  layers, float32 second moments summed in float64) against bare forward passes over the same
  texts and batches; tokens/s counts the non-pad tokens.
Prints tokens/s from the process's CPU seconds (steady on a shared machine) and from wall
seconds, medians of the repeats, and the ratios swe / bare (1.0 = no overhead).

    python bench/generate.py --model QWEN_DIR --per-language 16 --max-new-tokens 48
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

MULTIJAIL = Path(__file__).resolve().parents[2] / "shared" / "data" / "multijail" / "MultiJail.csv"


def bare_generate(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    max_new_tokens: int,
    batch_size: int,
    cache_implementation: str | None = None,
) -> tuple[list[str], int]:
    """model.generate over swe's length batches; (answers, new tokens up to and with eos).
    cache_implementation: transformers' KV cache kind ("static": preallocated, fixed shapes)."""
    import torch
    from transformers import GenerationConfig

    from swe_cli.models import _eos_ids, _until, encode_texts, format_chat, length_batches, pad_rows

    eos = _eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        eos_token_id=eos,
        pad_token_id=pad_id,
        cache_implementation=cache_implementation,
    )
    texts = [format_chat(tokenizer, [{"role": "user", "content": p}]) for p in prompts]
    encoded = encode_texts(tokenizer, texts, special_tokens=False)
    answers, tokens = [""] * len(texts), 0
    for batch in length_batches([len(row) for row in encoded], batch_size):
        input_ids, attention_mask = pad_rows([encoded[i] for i in batch], pad_id, left=True)
        with torch.inference_mode():
            generated = model.generate(
                input_ids=input_ids, attention_mask=attention_mask, generation_config=config
            )
        for index, row in zip(batch, generated[:, input_ids.shape[1] :].tolist(), strict=True):
            kept = _until(row, eos)
            tokens += min(len(kept) + 1, len(row))  # the eos is generated too
            answers[index] = tokenizer.decode(kept, skip_special_tokens=True).strip()
    return answers, tokens


def bare_forward(model: Any, tokenizer: Any, texts: list[str], batch_size: int) -> int:
    """Forward passes as probe batches them (same padding and truncation), nothing recorded."""
    import torch

    from swe_cli.settings import ProbeConfig
    from swe_cli.stages.probe import sorted_batches

    max_length = ProbeConfig(langs=["xx"]).max_length

    tokens = 0
    for batch in sorted_batches(tokenizer, texts, batch_size, max_length):
        encoded = tokenizer(
            [texts[i] for i in batch],
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=max_length,
            add_special_tokens=False,
        )
        with torch.no_grad():
            model(**encoded, use_cache=False, logits_to_keep=1)
        tokens += int(encoded["attention_mask"].sum())
    return tokens


def probe_moments(
    model: Any, tokenizer: Any, texts: list[str], batch_size: int, layers: list[int]
) -> None:
    from swe_cli.architectures import adapter_for
    from swe_cli.settings import ProbeConfig
    from swe_cli.stages.probe import Recorder, stream_moments
    from swe_cli.workspace import Workspace

    recorder = Recorder(model, adapter_for(model.config.model_type), layers)
    try:
        with tempfile.TemporaryDirectory() as folder:
            config = ProbeConfig(langs=["xx"], batch_size=batch_size)
            stream_moments(
                Workspace(Path(folder)), model, tokenizer, recorder, texts, layers, config, None
            )
    finally:
        recorder.close()


def _median(pairs: list[tuple[float, float]]) -> tuple[float, float]:
    """Median wall and median CPU seconds."""
    walls, cpus = sorted(w for w, _ in pairs), sorted(c for _, c in pairs)
    return walls[len(walls) // 2], cpus[len(cpus) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a local checkpoint folder")
    parser.add_argument("--harmful", default=str(MULTIJAIL))
    parser.add_argument("--langs", default="en,bn,sw,th")
    parser.add_argument("--per-language", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--moment-layers", default="12", help="layers whose moments probe streams")
    parser.add_argument("--skip-probe", action="store_true")
    parser.add_argument(
        "--static", action="store_true", help="also time model.generate with a static KV cache"
    )
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import torch

    from swe_cli.models import chat_text, generate, load_model
    from swe_cli.prompts import load_prompt_set

    langs = args.langs.split(",")
    harmful = load_prompt_set(args.harmful, "harmful", langs)
    prompts = [p.text for lang in langs for p in harmful.select(lang)[: args.per_language]]
    model, tokenizer = load_model(args.model, dtype="float32")
    print(
        f"{len(prompts)} prompts ({args.per_language} per language {args.langs}), "
        f"batch {args.batch_size}, max_new_tokens {args.max_new_tokens}, "
        f"{torch.get_num_threads()} threads"
    )
    # wall and CPU seconds of each repeat; A and B alternate which goes first
    times: dict[str, list[tuple[float, float]]] = {}
    answers: dict[str, list[str]] = {}

    def timed(name: str, function: Any) -> Any:
        wall, cpu = time.perf_counter(), time.process_time()
        result = function()
        times.setdefault(name, []).append((time.perf_counter() - wall, time.process_time() - cpu))
        return result

    def alternate(swe_name: str, swe_path: Any, bare_name: str, bare_path: Any) -> Any:
        """Each repeat times both paths, alternating which goes first; the bare path's result
        (its token count) of the last repeat."""
        result = None
        for repeat in range(args.repeats):
            if repeat % 2 == 0:
                timed(swe_name, swe_path)
                result = timed(bare_name, bare_path)
            else:
                result = timed(bare_name, bare_path)
                timed(swe_name, swe_path)
        return result

    def ours() -> None:
        answers["swe"] = generate(
            model,
            tokenizer,
            prompts,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
        )

    def bare() -> int:
        answers["bare"], count = bare_generate(
            model, tokenizer, prompts, args.max_new_tokens, args.batch_size
        )
        return count

    tokens = alternate("swe generate", ours, "bare model.generate", bare)
    same = answers["swe"] == answers["bare"]
    rows = [("generation", "swe generate", "bare model.generate", tokens)]
    if args.static:

        def static() -> int:
            answers["static"], count = bare_generate(
                model, tokenizer, prompts, args.max_new_tokens, args.batch_size, "static"
            )
            return count

        static_tokens = alternate(
            "swe generate (static pair)", ours, "model.generate, static cache", static
        )
        print(f"static-cache answers identical to swe's: {answers['static'] == answers['swe']}")
        rows.append(
            (
                "generation vs static cache",
                "swe generate (static pair)",
                "model.generate, static cache",
                static_tokens,
            )
        )

    if not args.skip_probe:
        texts = [chat_text(tokenizer, p, a) for p, a in zip(prompts, answers["swe"], strict=True)]
        layers = [int(layer) for layer in args.moment_layers.split(",") if layer]

        def probe() -> None:
            probe_moments(model, tokenizer, texts, args.batch_size, layers)

        def forward() -> int:
            return bare_forward(model, tokenizer, texts, args.batch_size)

        probe_tokens = alternate("swe probe moments", probe, "bare forward", forward)
        rows.append(("probe", "swe probe moments", "bare forward", probe_tokens))

    print(f"answers identical: {same}")
    print("medians of the repeats; tokens/s from CPU seconds (the process's own), wall in brackets")
    print("| path | tokens | swe tokens/s | bare tokens/s | swe / bare (CPU) | swe / bare (wall) |")
    print("|---|---|---|---|---|---|")
    result: dict[str, Any] = {"answers_identical": same, "rows": []}
    for name, swe_name, bare_name, count in rows:
        swe_wall, swe_cpu = _median(times[swe_name])
        bare_wall, bare_cpu = _median(times[bare_name])
        print(
            f"| {name} | {count} | {count / swe_cpu:.1f} ({count / swe_wall:.1f}) | "
            f"{count / bare_cpu:.1f} ({count / bare_wall:.1f}) | {bare_cpu / swe_cpu:.2f}x | "
            f"{bare_wall / swe_wall:.2f}x |"
        )
        result["rows"].append(
            {"path": name, "tokens": count, "swe": times[swe_name], "bare": times[bare_name]}
        )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
