"""Benchmark of the closed-form solvers at real model sizes (Llama-3.1-8B: d=4096, f=14336).

Random data of the shapes `swe solve` builds from a probed workspace: the paper's gate-row edit
(N_h LRL keys, N_s harmless keys, m safety neurons) and the residual down_proj edit, dense (f x f
system) and restricted to the safety-neuron columns. Prints wall time per solve on the chosen
device, measured in one run (first call excluded as warm-up).

    python bench/solve.py --device cuda --hidden 4096 --intermediate 14336
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch

from swe_cli.methods.linalg import solve_paper, solve_residual


def timed(function: Callable[[], object], device: str, repeats: int) -> float:
    function()  # warm-up (allocations, kernels)
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        function()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--intermediate", type=int, default=14336)
    parser.add_argument("--neurons", type=int, default=300, help="safety neurons m")
    parser.add_argument(
        "--harmful", type=int, default=450, help="LRL harmful keys N_h (3 languages x 150)"
    )
    parser.add_argument("--harmless", type=int, default=600, help="harmless keys N_s")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    d, f, m = args.hidden, args.intermediate, args.neurons

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).to(args.device)

    X_low, X_en, X_safe, W_S = (
        randn(args.harmful, d),
        randn(args.harmful, d),
        randn(args.harmless, d),
        randn(d, m),
    )
    K, R, Kn = randn(f, args.harmful), randn(d, args.harmful), randn(f, args.harmless)
    Z = randn(f, 2 * f)
    C0 = Z @ Z.T / Z.shape[1]
    sparse = torch.randperm(f, generator=generator)[:m].to(args.device)
    results = {
        "device": args.device,
        "sizes": {"d": d, "f": f, "m": m, "N_h": args.harmful, "N_s": args.harmless},
        "paper_seconds": timed(
            lambda: solve_paper(
                X_low, X_en, X_safe, W_S, rank=32, gamma=1.0, lam=0.1, device=args.device
            ),
            args.device,
            args.repeats,
        ),
        "residual_sparse_seconds": timed(
            lambda: solve_residual(
                K[sparse],
                R,
                C0=C0[sparse][:, sparse],
                Kn=Kn[sparse],
                alpha=1.0,
                beta=1.0,
                lam=0.1,
                device=args.device,
            ),
            args.device,
            args.repeats,
        ),
        "residual_dense_seconds": timed(
            lambda: solve_residual(
                K, R, C0=C0, Kn=Kn, alpha=1.0, beta=1.0, lam=0.1, device=args.device
            ),
            args.device,
            max(1, args.repeats // 2),
        ),
    }
    print(json.dumps(results, indent=2))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
