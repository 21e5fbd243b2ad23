"""Wall time of each stage of `swe align MODEL --eval`, first run against second run on the same
base. They share one fresh base-eval cache (SWE_CACHE points at a new folder), so the first run
measures the base model and the second reads the base's measurements from the cache and
evaluates only the edited model. The second run is the same command again: it reuses the first
run's workspace (as `swe align` does with its default workspace, which is keyed by the model and
the languages), so probe finds its activations, answers and moments recorded and skips them;
`--fresh-workspace` gives the second run a workspace of its own instead (probe runs again). The stage and
step seconds are the ones swe records itself (`--json`: "seconds" per stage, "steps" for the
steps of probe and eval; the workspace manifest holds the same).

    python bench/align_stages.py --organism                         # the model organism (quick)
    python bench/align_stages.py QWEN_DIR --langs bn,sw,th --harmful MultiJail.csv \\
        --set probe.max_prompts=100                                  # any further swe align option

Every argument after the model (or --organism) goes to `swe align` unchanged. Prints one table:
stage or step, seconds of the first and the second run, and second / first.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any


def organism_args() -> list[str]:
    """MODEL and the options `swe demo` aligns the organism with (seed 0, built or cached)."""
    from swe_cli.organism import cached_organism

    organism = cached_organism(0)
    return [
        str(organism.model_dir), "--langs", ",".join(organism.lrls), "--hrl", organism.hrl,
        "--harmful", str(organism.harmful), "--harmless", str(organism.harmless),
        "--general", str(organism.general), "--patterns", str(organism.refusal_patterns),
        "--dtype", "float32",
    ]  # fmt: skip


def run_align(args: list[str], root: Path, name: str, cache: Path, ws: str) -> dict[str, Any]:
    """One `swe align ... --eval --no-gate --json` into the workspace WS-ws and a fresh output;
    its summary."""
    command = [sys.executable, "-m", "swe_cli.cli", "align", *args]
    command += ["-w", str(root / f"{ws}-ws"), "-o", str(root / f"{name}-out")]
    command += ["--eval", "--no-gate", "--json", "--quiet"]
    env = {**os.environ, "SWE_CACHE": str(cache)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"swe align failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout)


def rows(summary: dict[str, Any]) -> dict[str, float]:
    """Stage seconds, each stage followed by its steps ("probe/moments", "eval/base", ...)."""
    found: dict[str, float] = {}
    order = ["probe", "localize", "select", "solve", "eval", "apply"]
    stages = sorted(summary["seconds"], key=lambda s: order.index(s) if s in order else len(order))
    for stage in stages:
        seconds = summary["seconds"][stage]
        found[stage] = float(seconds)
        for step, value in (summary.get("steps", {}).get(stage, {}).get("seconds") or {}).items():
            found[f"{stage}/{step}"] = float(value)
    found["total"] = sum(float(value) for value in summary["seconds"].values())
    return found


def table(first: dict[str, Any], second: dict[str, Any]) -> str:
    a, b = rows(first), rows(second)
    cached = {f"eval/{step}" for step in second.get("steps", {}).get("eval", {}).get("cached", [])}
    lines = [f"{'stage/step':<24}{'first s':>10}{'second s':>10}{'second/first':>14}"]
    for key in [*a, *[k for k in b if k not in a]]:
        first_s, second_s = a.get(key), b.get(key)
        ratio = (
            f"{second_s / first_s:.2f}" if first_s and second_s is not None and first_s > 0 else "-"
        )
        label = key + (" (cached)" if key in cached else "")
        cells = [f"{v:.1f}" if v is not None else "-" for v in (first_s, second_s)]
        lines.append(f"{label:<24}{cells[0]:>10}{cells[1]:>10}{ratio:>14}")
    lines.append(f"model loads per run: {first.get('model_loads')} / {second.get('model_loads')}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--organism", action="store_true", help="align the model organism")
    parser.add_argument("--keep", type=Path, help="keep workspaces and outputs in this folder")
    parser.add_argument(
        "--fresh-workspace", action="store_true", help="the second run probes a workspace anew"
    )
    known, rest = parser.parse_known_args()
    if not known.organism and not rest:
        parser.error("give MODEL and swe align options, or --organism")
    args = [*(organism_args() if known.organism else []), *rest]
    with tempfile.TemporaryDirectory(prefix="swe-align-stages-") as scratch:
        root = known.keep or Path(scratch)
        root.mkdir(parents=True, exist_ok=True)
        cache = root / "cache"  # fresh: the first run measures the base
        first = run_align(args, root, "first", cache, "first")
        second = run_align(
            args, root, "second", cache, "second" if known.fresh_workspace else "first"
        )
    print(f"swe align {' '.join(args)} --eval, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    print(f"second run: {'a fresh workspace' if known.fresh_workspace else 'the same workspace'}")
    print(table(first, second))


if __name__ == "__main__":
    main()
