"""Where a residual edit's push lands on prompts it was not fitted on, without generating.

The probe's fit ids are split by id as `swe select` splits them (validation_fraction, salt
`swe-tune`); the edit is solved on the tune-fit part, optionally preserving only a share of the
tune-fit harmless rows (a fixed seed-0 draw over all languages), and applied to the recorded keys
(MLP activations) of the validation part. Per target language:

- leak: mean |dW k| of the unseen plain harmless prompts over that of the unseen harmful ones;
- aligned: the unseen harmless prompts' mean displacement along the language's mean harmful
  displacement, over the harmful prompts' own (1: harmless prompts pushed as far towards what the
  edit makes of harm as harmful ones; 0: pushed elsewhere or not at all);
- fitted: leak of the harmless rows the edit preserved (what the solve saw);

and per setting the relative residual of the unseen harmful mapping ||dW K - T|| / ||T|| (lower:
the unseen harmful prompts land nearer their HRL translations; T is the edit's own target, with
any lang_strength factor), and for the HRL's harmful prompts, which the edit should leave alone:
`hrl.leak`, mean |dW k| of the unseen ones over that of the unseen LRL harmful prompts, and
`hrl.fitted`, the same for the tune-fit ones (what keep_hrl preserves). Borderline requests (probe
--borderline) are preserved with the harmless prompts but left out of the unseen harmless rows.

    python bench/leak.py -w WS --layer 12 --json leak.json \\
        --specs "rank=32 alpha=10 beta=10 keep_hrl=true strength=1.5; rank=32 alpha=100 beta=10" \\
        --shares 0.125,0.25,0.5,1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-w", "--workspace", type=Path, required=True)
    parser.add_argument("--layer", type=int, required=True, help="one layer with moments")
    parser.add_argument(
        "--specs",
        default="rank=32 alpha=10 beta=10 lam=0.1 keep_hrl=true strength=1.5",
        help="residual solve settings, 'key=value ...' separated by ';'",
    )
    parser.add_argument("--shares", default="1", help="shares of the tune-fit harmless rows kept")
    parser.add_argument("--validation-fraction", type=float, default=0.5)
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args(argv)


def leak_row(delta: Any, harmful: Any, harmless: Any, fitted: Any) -> dict[str, float]:
    """delta: d x f edit; harmful, harmless, fitted: n x f keys (unseen harmful, unseen harmless,
    preserved harmless rows of one language)."""
    import torch

    push = harmful.to(torch.float64) @ delta.T
    direction = push.mean(0) / torch.linalg.vector_norm(push.mean(0))
    moved = harmless.to(torch.float64) @ delta.T
    kept = fitted.to(torch.float64) @ delta.T
    size = push.norm(dim=1).mean()
    return {
        "leak": float(moved.norm(dim=1).mean() / size),
        "aligned": float((moved @ direction).mean() / (push @ direction).mean()),
        "fitted": float(kept.norm(dim=1).mean() / size) if len(kept) else float("nan"),
    }


def hrl_row(delta: Any, unseen: Any, fitted: Any, low: Any) -> dict[str, float]:
    """delta: d x f edit; unseen, fitted: n x f keys of HRL harmful prompts the solve did not and
    did see; low: the unseen LRL harmful keys (the push the sizes are relative to)."""
    import torch

    size = (low.to(torch.float64) @ delta.T).norm(dim=1).mean()

    def moved(keys: Any) -> float:
        return float((keys.to(torch.float64) @ delta.T).norm(dim=1).mean() / size)

    return {"leak": moved(unseen), "fitted": moved(fitted)}


def rows_of(langs: Any, lang: str) -> list[int]:
    """The rows whose language (langs: one name per row) is lang."""
    return [row for row, name in enumerate(langs) if name == lang]


def keep_rows(data: Any, share: float) -> Any:
    """data with only `share` of its harmless rows (a seed-0 draw; HRL rows stay first)."""
    import torch

    order = torch.randperm(len(data.safe_ids), generator=torch.Generator().manual_seed(0))
    keep = sorted(order[: max(1, round(share * len(order)))].tolist())
    return dataclasses.replace(
        data,
        x_safe=data.x_safe[keep],
        a_safe=data.a_safe[keep],
        r_safe=None if data.r_safe is None else data.r_safe[keep],
        safe_ids=tuple(data.safe_ids[row] for row in keep),
        safe_langs=tuple(data.safe_langs[row] for row in keep),
        n_safe_hrl=sum(row < data.n_safe_hrl for row in keep),
    )


def rows_for(space: Any, layer: int, specs: list[str], shares: list[float], fraction: float):
    import torch

    from swe_cli.methods.base import TuneData, context_from
    from swe_cli.methods.residual import ResidualMethod, _keys, edit_target, residual_step
    from swe_cli.settings import SolveSettings
    from swe_cli.stages.select import borderline_ids, parse_candidate
    from swe_cli.stages.tune import split_ids

    context = context_from(space, space.manifest())
    border = borderline_ids(space)
    split = split_ids(context, [layer], fraction)
    fit, val = TuneData(context, split.fit, split.validation).pair(layer)
    plain = [row for row, prompt_id in enumerate(val.safe_ids) if prompt_id not in border]
    method = ResidualMethod()
    base = SolveSettings(method="residual").resolve()
    num_layers = space.manifest().model.num_layers
    rows = []
    for spec in specs:  # read as select reads its candidates
        config = parse_candidate(f"residual@{layer} {spec}", base, num_layers)
        for share in shares:
            kept = keep_rows(fit, share)
            keys = _keys(context, layer, (kept, val), None, config)
            target = edit_target(kept, config, method.target(kept, config))
            solution, _ = residual_step(
                keys.K, keys.Kn, keys.C0, target, 1, config, kept.a_low.shape[0]
            )
            delta = solution.delta.to(torch.float64)
            harmful_columns = val.a_low.shape[0]
            wanted = edit_target(val, config, method.target(val, config))[:, :harmful_columns].T
            mapped = val.a_low.to(torch.float64) @ delta.T
            residual = float((mapped - wanted).norm() / wanted.norm())
            langs = {}
            for lang in context.langs:
                harmful = rows_of(val.low_langs, lang)
                harmless = [row for row in plain if val.safe_langs[row] == lang]
                fitted = rows_of(kept.safe_langs, lang)
                langs[lang] = {
                    **leak_row(
                        delta, val.a_low[harmful], val.a_safe[harmless], kept.a_safe[fitted]
                    ),
                    "n_harmful": len(harmful),
                    "n_harmless": len(harmless),
                }
            first = context.langs[0]  # each HRL prompt once (its rows repeat per language)
            hrl = hrl_row(
                delta,
                val.a_hrl[rows_of(val.low_langs, first)],
                kept.a_hrl[rows_of(kept.low_langs, first)],
                val.a_low,
            )
            rows.append(
                {
                    "spec": spec,
                    "share": share,
                    "kept_rows": len(kept.safe_ids),
                    "val_residual": residual,
                    "hrl": hrl,
                    "langs": langs,
                }
            )
            _say(rows[-1])
    return rows


def _say(row: dict[str, Any]) -> None:
    cells = "  ".join(
        f"{lang} {v['aligned']:+.2f}/{v['leak']:.2f}/{v['fitted']:.2f}"
        for lang, v in row["langs"].items()
    )
    print(
        f"{row['spec'][:60]:<60} share {row['share']:.3f} ({row['kept_rows']} rows) "
        f"residual {row['val_residual']:.3f}  hrl {row['hrl']['leak']:.2f}/{row['hrl']['fitted']:.2f}"
        f"  {cells}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    from swe_cli.workspace import Workspace

    args = parse_args(argv)
    specs = [spec.strip() for spec in args.specs.split(";") if spec.strip()]
    shares = [float(share) for share in args.shares.split(",")]
    if not specs or not all(0 < share <= 1 for share in shares):
        print("give at least one spec and shares in (0, 1]", file=sys.stderr)
        return 2
    print("hrl: leak / fitted; per language: aligned / leak / fitted (see the docstring)")
    rows = rows_for(Workspace(args.workspace), args.layer, specs, shares, args.validation_fraction)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
