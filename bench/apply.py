"""Benchmark of `swe apply` against a plain copy and the naive way, on synthetic checkpoints.

For each size it builds a random Llama-architecture bf16 checkpoint (sharded, with config and
index), an edit of a few hundred gate/up rows over several layers, and measures, each in its own
subprocess (wall time and peak RSS):

  cp         `cp -r BASE OUT`
  swe        apply the edit artifact (the code behind `swe apply --edit EDIT --base BASE -o OUT`)
  cp+sync    `cp -r` then `sync` of the copied files (written to disk, not just to page cache)
  swe+fsync  the same apply with sync=True: every file fsynced before the final rename
  naive      transformers from_pretrained, edit the rows in memory, save_pretrained

The base is read once beforehand so every method starts from a warm page cache, every output is
deleted (and its dirty pages flushed, untimed) before the next run, and each measurement is the
median of --repeats runs. The swe output is then checked with verify_checkpoint. Synthetic
checkpoints are deleted at the end unless --keep.

    python bench/apply.py --sizes 2,4
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
HIDDEN, INTERMEDIATE, VOCAB, HEADS, KV_HEADS = 2048, 8192, 32000, 32, 8
SHARD_BYTES = 500 * 1000**2
EDIT_LAYERS_FRACTION = (0.2, 0.4, 0.6, 0.8)  # edited layers, spread over the depth (and shards)
ROWS_PER_TENSOR = 50


def layer_bytes() -> int:
    head_dim = HIDDEN // HEADS
    attention = 2 * HIDDEN * HIDDEN + 2 * HIDDEN * KV_HEADS * head_dim
    return 2 * (attention + 3 * HIDDEN * INTERMEDIATE + 2 * HIDDEN)


def layers_for(gigabytes: float) -> int:
    fixed = 2 * (2 * VOCAB * HIDDEN + HIDDEN)
    return max(4, math.ceil((gigabytes * 1e9 - fixed) / layer_bytes()))


def tensor_shapes(num_layers: int) -> list[tuple[str, tuple[int, ...]]]:
    head_dim = HIDDEN // HEADS
    shapes = [("model.embed_tokens.weight", (VOCAB, HIDDEN))]
    for layer in range(num_layers):
        prefix = f"model.layers.{layer}"
        shapes += [
            (f"{prefix}.input_layernorm.weight", (HIDDEN,)),
            (f"{prefix}.self_attn.q_proj.weight", (HIDDEN, HIDDEN)),
            (f"{prefix}.self_attn.k_proj.weight", (KV_HEADS * head_dim, HIDDEN)),
            (f"{prefix}.self_attn.v_proj.weight", (KV_HEADS * head_dim, HIDDEN)),
            (f"{prefix}.self_attn.o_proj.weight", (HIDDEN, HIDDEN)),
            (f"{prefix}.post_attention_layernorm.weight", (HIDDEN,)),
            (f"{prefix}.mlp.gate_proj.weight", (INTERMEDIATE, HIDDEN)),
            (f"{prefix}.mlp.up_proj.weight", (INTERMEDIATE, HIDDEN)),
            (f"{prefix}.mlp.down_proj.weight", (HIDDEN, INTERMEDIATE)),
        ]
    return shapes + [("model.norm.weight", (HIDDEN,)), ("lm_head.weight", (VOCAB, HIDDEN))]


def build_checkpoint(folder: Path, num_layers: int, seed: int = 0) -> None:
    """A random bf16 Llama checkpoint in HF layout, written shard by shard (memory: one shard)."""
    import torch
    from safetensors.torch import save_file
    from transformers import GenerationConfig, LlamaConfig

    folder.mkdir(parents=True)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=num_layers,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        tie_word_embeddings=False,
        dtype="bfloat16",
    )
    config.save_pretrained(folder)
    GenerationConfig(bos_token_id=1, eos_token_id=2).save_pretrained(folder)
    generator = torch.Generator().manual_seed(seed)
    groups: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in tensor_shapes(num_layers):
        nbytes = 2 * int(torch.Size(shape).numel())
        if groups[-1] and size + nbytes > SHARD_BYTES:
            groups.append([])
            size = 0
        groups[-1].append((name, shape))
        size += nbytes
    weight_map, total = {}, 0
    for number, group in enumerate(groups, start=1):
        file = f"model-{number:05d}-of-{len(groups):05d}.safetensors"
        tensors = {}
        for name, shape in group:
            values = torch.randn(shape, generator=generator, dtype=torch.float32) * 0.02
            if name.endswith("norm.weight"):
                values += 1.0
            tensors[name] = values.to(torch.bfloat16)
            weight_map[name] = file
            total += 2 * values.numel()
        save_file(tensors, str(folder / file), metadata={"format": "pt"})
        del tensors
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def build_edit(base: Path, edit_dir: Path, num_layers: int) -> int:
    """A few hundred gate/up rows over several layers, saved as an edit artifact."""
    import torch

    from swe_cli.edit import Edit, save_edit, tensor_edit_from_base

    generator = torch.Generator().manual_seed(1)
    items = []
    for fraction in EDIT_LAYERS_FRACTION:
        layer = int(fraction * num_layers)
        for projection in ("gate_proj", "up_proj"):
            rows = torch.randperm(INTERMEDIATE, generator=generator)[:ROWS_PER_TENSOR]
            delta = torch.randn(ROWS_PER_TENSOR, HIDDEN, generator=generator) * 0.01
            name = f"model.layers.{layer}.mlp.{projection}.weight"
            items.append(tensor_edit_from_base(base, name, rows, delta))
    edit = Edit(tuple(items), {"base_model": "synthetic-llama", "method": "bench"})
    save_edit(edit, edit_dir)
    return edit.num_rows


SWE = """
import sys
from swe_cli.stages.apply import apply_edit_artifact
apply_edit_artifact(sys.argv[1], sys.argv[2], sys.argv[3], device=sys.argv[5], sync=sys.argv[4] == "1")
"""

NAIVE = """
import sys, torch
from transformers import AutoModelForCausalLM
from swe_cli.edit import load_edit
edit, base, out = load_edit(sys.argv[1]), sys.argv[2], sys.argv[3]
model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
parameters = dict(model.named_parameters())
with torch.no_grad():
    for item in edit.tensors:
        weight = parameters[item.name]
        weight[item.rows] = (weight[item.rows].float() + item.delta).to(weight.dtype)
model.save_pretrained(out, max_shard_size="500MB")
"""


def measure(command: list[str]) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, peak RSS in MB) of one subprocess. CPU time (user + system)
    does not depend on what else runs on the machine. GNU time reports peak RSS when present (a
    fork of this process would count this process's pages until exec), else os.wait4."""
    gnu_time = "/usr/bin/time" if Path("/usr/bin/time").exists() else None
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as report:
        prefix = [gnu_time, "-f", "%M", "-o", report.name] if gnu_time else []
        started = time.perf_counter()
        process = subprocess.Popen([*prefix, *command], cwd=REPO)
        _, status, usage = os.wait4(process.pid, 0)
        elapsed = time.perf_counter() - started
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"failed: {' '.join(command)}")
        peak_kb = float(report.read().split()[-1]) if gnu_time else usage.ru_maxrss
    return elapsed, usage.ru_utime + usage.ru_stime, peak_kb / 1024


def flush(folder: Path) -> None:
    """Write back and delete an output, untimed, so it does not slow down the next run."""
    if folder.exists():
        files = [str(p) for p in folder.rglob("*") if p.is_file()]
        if files:
            subprocess.run(["sync", *files], check=False)
        shutil.rmtree(folder)


def warm(folder: Path) -> None:
    for path in folder.iterdir():
        with path.open("rb") as handle:
            while handle.read(64 * 1024 * 1024):
                pass


def bench_size(
    root: Path, gigabytes: float, repeats: int, naive_repeats: int, device: str = "cpu"
) -> dict[str, Any]:
    from swe_cli.stages.verify import verify_checkpoint

    num_layers = layers_for(gigabytes)
    base, edit_dir = root / f"base-{gigabytes}g", root / f"edit-{gigabytes}g"
    print(f"\n== {gigabytes} GB: building a {num_layers}-layer bf16 Llama in {base}", flush=True)
    build_checkpoint(base, num_layers)
    rows = build_edit(base, edit_dir, num_layers)
    size = sum(p.stat().st_size for p in base.iterdir())
    shards = len(list(base.glob("*.safetensors")))
    out = root / "out"
    swe = [sys.executable, "-c", SWE, str(edit_dir), str(base), str(out)]
    commands = {
        "cp": ["cp", "-r", str(base), str(out)],
        "swe": [*swe, "0", device],
        "cp+sync": ["sh", "-c", f'cp -r "{base}" "{out}" && sync "{out}"/* "{out}"'],
        "swe+fsync": [*swe, "1", device],
        "naive": [sys.executable, "-c", NAIVE, str(edit_dir), str(base), str(out)],
    }
    runs: dict[str, list[tuple[float, float, float]]] = {method: [] for method in commands}
    warm(base)
    for repeat in range(repeats):
        for method in commands:
            if method == "naive" and repeat >= naive_repeats:
                continue
            flush(out)
            runs[method].append(measure(commands[method]))
            wall, cpu, rss = runs[method][-1]
            print(f"  {method:10s} {wall:6.2f} s wall {cpu:6.2f} s CPU {rss:7.0f} MB", flush=True)
            if method == "swe" and repeat == 0:
                report = verify_checkpoint(out, base)
                assert report.ok, report.problems
    flush(out)
    result: dict[str, Any] = {"gigabytes": round(size / 1e9, 2), "shards": shards, "rows": rows}
    for method, values in runs.items():
        if not values:  # --naive-repeats 0
            result[f"{method}_s"] = result[f"{method}_cpu_s"] = result[f"{method}_rss_mb"] = None
            continue
        result[f"{method}_s"] = round(statistics.median(v[0] for v in values), 2)
        result[f"{method}_cpu_s"] = round(statistics.median(v[1] for v in values), 2)
        result[f"{method}_rss_mb"] = round(max(v[2] for v in values))
    result["swe_over_cp"] = round(result["swe_s"] / result["cp_s"], 2)
    result["durable_swe_over_cp"] = round(result["swe+fsync_s"] / result["cp+sync_s"], 2)
    naive = result["naive_s"]
    result["naive_over_swe"] = round(naive / result["swe_s"], 1) if naive else None
    result["load_average"] = round(os.getloadavg()[0], 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="2,4", help="checkpoint sizes in GB, comma-separated")
    parser.add_argument("--root", type=Path, help="work folder (default: a new temporary one)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of cp and swe (median)")
    parser.add_argument("--naive-repeats", type=int, default=1, help="runs of the naive way")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic checkpoints")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--device", default="cpu", help="where swe computes the edited rows (cpu, cuda)"
    )
    args = parser.parse_args()
    args.root = args.root or Path(tempfile.mkdtemp(prefix="swe-bench-"))
    args.root.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for gigabytes in (float(s) for s in args.sizes.split(",")):
            results.append(
                bench_size(args.root, gigabytes, args.repeats, args.naive_repeats, args.device)
            )
    finally:
        if not args.keep:
            shutil.rmtree(args.root, ignore_errors=True)
    header = (
        "| size | shards | rows | cp | swe | swe/cp | cp+sync | swe+fsync | ratio | naive "
        "| naive/swe | CPU s cp / swe / naive | peak RSS cp / swe / naive | load |"
    )
    print("\n" + header + "\n|" + "---|" * 14)
    for r in results:
        print(
            f"| {r['gigabytes']} GB | {r['shards']} | {r['rows']} | {r['cp_s']} s | {r['swe_s']} s "
            f"| {r['swe_over_cp']} | {r['cp+sync_s']} s | {r['swe+fsync_s']} s "
            f"| {r['durable_swe_over_cp']} | {r['naive_s']} s | {r['naive_over_swe']} "
            f"| {r['cp_cpu_s']} / {r['swe_cpu_s']} / {r['naive_cpu_s']} "
            f"| {r['cp_rss_mb']} / {r['swe_rss_mb']} / {r['naive_rss_mb']} MB "
            f"| {r['load_average']} |"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
