"""Wall time of the whole pipeline at real model size, on one device.

Builds a random-weight checkpoint with the shapes of a real model (default Llama-3.1-8B: 32 layers,
d=4096, f=14336, bf16, ~16 GB) and a real tokenizer (any HF tokenizer folder, e.g. SmolLM2's), then
times in one run: `cp -r` of the checkpoint, `swe align` (probe -> localize -> solve -> apply) on
MultiJail for three target languages, `swe eval` base vs aligned, and `swe verify`. The weights are
random, so refusal numbers are meaningless here: this measures time and memory only.

    python bench/pipeline.py --tokenizer TOKENIZER_DIR --harmful MultiJail.csv --device cuda
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SHAPES = {
    "llama-3.1-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8),
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2),
}  # fmt: skip
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
)


def build(base: Path, shape: str, tokenizer: Path, device: str) -> float:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    start = time.perf_counter()
    vocab = len(AutoTokenizer.from_pretrained(tokenizer))
    config = LlamaConfig(
        vocab_size=vocab, max_position_embeddings=4096, tie_word_embeddings=False, **SHAPES[shape]
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(base, max_shard_size="5GB")
    for name in TOKENIZER_FILES:
        if (tokenizer / name).exists():
            shutil.copy(tokenizer / name, base / name)
    del model
    return time.perf_counter() - start


def timed(command: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        print(result.stderr[-4000:], file=sys.stderr)
        raise SystemExit(f"failed ({result.returncode}): {' '.join(command)}")
    return seconds, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="llama-3.1-8b", choices=sorted(SHAPES))
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--harmful", required=True)
    parser.add_argument("--langs", default="bn,sw,th")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--root", type=Path, default=Path("/tmp/swe-pipeline"))
    parser.add_argument("--eval-prompts", type=int, default=48, help="--max-prompts for eval")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    shutil.rmtree(args.root, ignore_errors=True)
    args.root.mkdir(parents=True)
    base, out, workspace = args.root / "base", args.root / "aligned", args.root / "ws"
    swe = [sys.executable, "-m", "swe_cli.cli"]
    results: dict[str, Any] = {"shape": args.shape, "device": args.device}
    results["build_seconds"] = build(base, args.shape, args.tokenizer, args.device)
    results["checkpoint_gb"] = sum(p.stat().st_size for p in base.iterdir()) / 1e9
    results["cp_seconds"], _ = timed(["cp", "-r", str(base), str(args.root / "copy")])
    shutil.rmtree(args.root / "copy")
    seconds, stdout = timed(
        [*swe, "align", str(base), "--langs", args.langs, "--harmful", args.harmful, "-o", str(out),
         "-w", str(workspace), "--device", args.device, "--dtype", "bfloat16", "--json"]
    )  # fmt: skip
    results["align_seconds"] = seconds
    results["align_stages"] = json.loads(stdout)["seconds"]
    seconds, stdout = timed(
        [*swe, "eval", str(out), "--baseline", str(base), "--langs", args.langs, "--harmful", args.harmful,
         "--harmless", str(Path(__file__).resolve().parents[1] / "swe_cli" / "data" / "harmless.jsonl"),
         "--max-prompts", str(args.eval_prompts), "--max-new-tokens", "32", "--batch-size", "32",
         "--device", args.device, "--dtype", "bfloat16", "--json"]
    )  # fmt: skip
    results["eval_seconds"] = seconds
    results["eval_prompts_per_language"] = json.loads(stdout)["model"]["languages"][
        args.langs.split(",")[0]
    ]["n"]
    results["verify_seconds"], _ = timed([*swe, "verify", str(out), "--base", str(base), "--json"])
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
