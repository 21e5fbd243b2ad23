"""Per probed layer and target language, from a workspace's recorded activations (no model, no
generation): how far the edit's target is, and how much of the HRL's harmful/harmless
separation the model already shows in the language.

    python bench/recognition.py -w WS [--layers 6,9,12,15,18,21]

Two numbers per language and layer, on the residual stream after the layer at the last prompt
position, fit prompts only:
- target: mean over harmful prompts of ||h_HRL - h_LRL|| / ||h_HRL|| (what `residual` maps);
- separation: the LRL's mean harmful minus mean harmless stream, projected on the HRL's unit
  direction u = mean HRL harmful - mean HRL harmless, divided by the HRL's own separation
  (1: the language separates harmful from harmless requests along u as the HRL does, 0: not at
  all). The harmless prompts are a different set from the harmful ones, so the separation also
  carries the difference of style between the sets, in every language alike.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-w", "--workspace", type=Path, required=True)
    parser.add_argument("--layers", default=None, help="comma-separated (default: every probed)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    return parser.parse_args(argv)


def layer_rows(workspace: Any, layer: int, hrl: str, langs: list[str]) -> list[dict[str, Any]]:
    import torch

    from swe_cli.methods.base import layer_data

    data = layer_data(workspace, layer, hrl, langs)
    hrl_safe = data.r_safe[: data.n_safe_hrl].to(torch.float64)
    hrl_harm = data.r_hrl.to(torch.float64)
    u = hrl_harm.mean(0) - hrl_safe.mean(0)
    hrl_separation = u.norm().item()
    u = u / hrl_separation
    rows = []
    for lang in langs:
        harm = [row for row, name in enumerate(data.low_langs) if name == lang]
        safe = [row for row, name in enumerate(data.safe_langs) if name == lang]
        low, paired = data.r_low[harm].to(torch.float64), hrl_harm[harm]
        target = ((paired - low).norm(dim=1) / paired.norm(dim=1)).mean().item()
        separation = (low.mean(0) - data.r_safe[safe].to(torch.float64).mean(0)) @ u
        rows.append(
            {
                "layer": layer,
                "lang": lang,
                "target": target,
                "separation": separation.item() / hrl_separation,
                "n_harmful": len(harm),
                "n_harmless": len(safe),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    from swe_cli.workspace import Workspace

    args = parse_args(argv)
    workspace = Workspace(args.workspace)
    manifest = workspace.manifest()
    layers = (
        [int(layer) for layer in args.layers.split(",")] if args.layers else manifest.probed_layers
    )
    langs = list(manifest.langs)
    rows = [row for layer in layers for row in layer_rows(workspace, layer, manifest.hrl, langs)]
    print("target ||h_HRL - h_LRL|| / ||h_HRL|| and separation along the HRL's harmful direction")
    print("| layer | " + " | ".join(langs) + " |")
    print("|---:|" + "---|" * len(langs))
    for layer in layers:
        cells = [
            f"{row['target']:.2f} / {row['separation']:.2f}"
            for row in rows
            if row["layer"] == layer
        ]
        print(f"| {layer} | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
