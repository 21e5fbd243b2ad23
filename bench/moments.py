"""Benchmark of probe's second moments per layer at real model shapes, on random data.

For one layer, probe keeps sum x x^T (d x d) and sum a a^T (f x f) over every token. Two ways
of adding one batch of token rows are timed, each in its own process (so its peak memory is
its own):
- float64: the rows cast to float64, a new product per batch added to the sum (swe before);
- swe: stages/probe.SecondMoment (float32 products of upper-triangle column blocks, added in
  place to one float64 sum).
Prints seconds per batch, token rows per second, peak resident memory of the process and the
accumulators' own size, and the speed ratio, all measured in one run.

    python bench/moments.py --rows 1024 --shapes 0.5B,1.5B,8B
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

SHAPES = {  # hidden d, MLP width f
    "0.5B": (896, 4864),  # Qwen2.5-0.5B
    "1.5B": (1536, 8960),  # Qwen2.5-1.5B
    "8B": (4096, 14336),  # Llama-3.1-8B
}
METHODS = ("float64", "swe")


def measure(shape: str, method: str, rows: int, batches: int) -> dict[str, float]:
    import torch

    from swe_cli.stages.probe import SecondMoment

    d, f = SHAPES[shape]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows, d, generator=generator)
    a = torch.randn(rows, f, generator=generator)
    if method == "swe":
        moments = [SecondMoment(d, "cpu"), SecondMoment(f, "cpu")]

        def add() -> None:
            moments[0].add(x)
            moments[1].add(a)

    else:
        sums: list = [None, None]

        def add() -> None:
            for index, values in enumerate((x, a)):
                product = values.to(torch.float64).T @ values.to(torch.float64)
                sums[index] = product if sums[index] is None else sums[index] + product

    add()  # first batch: allocations
    start = time.perf_counter()
    for _ in range(batches):
        add()
    seconds = (time.perf_counter() - start) / batches
    if method == "swe":
        moments[0].total(), moments[1].total()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "seconds_per_batch": seconds,
        "rows_per_second": rows / seconds,
        "peak_rss_mb": peak / 2**20,
        "accumulators_mb": 8 * (d * d + f * f) / 2**20,
        "inputs_mb": 4 * rows * (d + f) / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1024, help="token rows per batch")
    parser.add_argument("--batches", type=int, default=2, help="timed batches after the first")
    parser.add_argument("--shapes", default="0.5B,1.5B,8B")
    parser.add_argument("--json", default=None)
    parser.add_argument("--one", nargs=2, metavar=("SHAPE", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], args.one[1], args.rows, args.batches)))
        return
    results = {}
    for shape in args.shapes.split(","):
        for method in METHODS:
            command = [sys.executable, __file__, "--one", shape, method]
            command += ["--rows", str(args.rows), "--batches", str(args.batches)]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            results[(shape, method)] = json.loads(output.strip().splitlines()[-1])
    print(f"rows per batch {args.rows}, one layer (x: d x d and a: f x f accumulators)")
    print("| shape (d, f) | method | s/batch | rows/s | peak RSS MB | accumulators MB | speed |")
    print("|---|---|---|---|---|---|---|")
    for shape in args.shapes.split(","):
        old = results[(shape, "float64")]["seconds_per_batch"]
        for method in METHODS:
            row = results[(shape, method)]
            print(
                f"| {shape} {SHAPES[shape]} | {method} | {row['seconds_per_batch']:.3f} | "
                f"{row['rows_per_second']:.0f} | {row['peak_rss_mb']:.0f} | "
                f"{row['accumulators_mb']:.0f} | {old / row['seconds_per_batch']:.2f}x |"
            )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({f"{s} {m}": r for (s, m), r in results.items()}, handle, indent=2)


if __name__ == "__main__":
    main()
