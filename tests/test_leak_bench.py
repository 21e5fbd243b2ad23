"""bench/leak.py: where an edit's push lands on unseen prompts, on keys whose answer is known, and
end to end on a probed workspace."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from common import load_bench


def test_leak_and_alignment_on_known_keys() -> None:
    """dW = identity on 2 dims. Harmful keys e1 and 3 e1 (mean push 2 e1, sizes 1 and 3: mean 2);
    unseen harmless keys e1 + 2 e2 and -e1 (pushed along e1 by 1 and -1: 0 on average, sizes
    sqrt(5) and 1); fitted harmless key e2 / 2 (size 1/2)."""
    bench = load_bench("leak")
    delta = torch.eye(2, dtype=torch.float64)
    harmful = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
    harmless = torch.tensor([[1.0, 2.0], [-1.0, 0.0]])
    fitted = torch.tensor([[0.0, 0.5]])
    row = bench.leak_row(delta, harmful, harmless, fitted)
    tolerance = 1e-12  # float64 arithmetic on exact inputs
    assert row["aligned"] == pytest.approx(0.0, abs=tolerance)
    assert row["leak"] == pytest.approx((math.sqrt(5) + 1) / 2 / 2, abs=tolerance)
    assert row["fitted"] == pytest.approx(0.25, abs=tolerance)
    # harmless keys that are harmful keys scaled by 1/2 move half as far, all along the push
    half = bench.leak_row(delta, harmful, harmful / 2, fitted)
    assert (half["aligned"], half["leak"]) == pytest.approx((0.5, 0.5), abs=tolerance)


def test_hrl_leak_is_relative_to_the_unseen_low_resource_push() -> None:
    """dW = identity. Unseen LRL harmful keys of sizes 1 and 3 (mean push 2); unseen HRL keys of
    sizes 1 and 2 (mean 1.5); fitted HRL key 0 (kept exactly)."""
    bench = load_bench("leak")
    delta = torch.eye(2, dtype=torch.float64)
    low = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    unseen = torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    fitted = torch.zeros(1, 2)
    row = bench.hrl_row(delta, unseen, fitted, low)
    assert row == pytest.approx({"leak": 0.75, "fitted": 0.0}, abs=1e-12)


def test_a_probed_workspace_gives_finite_rows_for_each_spec_and_share(
    probed_workspace: Path, tmp_path: Path
) -> None:
    from swe_cli.workspace import Workspace

    manifest = Workspace(probed_workspace).manifest()
    layer = manifest.probed_layers[len(manifest.probed_layers) // 2]
    out = tmp_path / "leak.json"
    specs = "rank=4 keep_hrl=true; rank=4 alpha=100 beta=100; rank=4"
    args = ["-w", str(probed_workspace), "--layer", str(layer), "--specs", specs]
    assert load_bench("leak").main([*args, "--shares", "0.5,1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text(encoding="utf-8"))
    assert [(row["spec"], row["share"]) for row in rows] == [
        (spec, share)
        for spec in ("rank=4 keep_hrl=true", "rank=4 alpha=100 beta=100", "rank=4")
        for share in (0.5, 1.0)
    ]
    kept = [row["kept_rows"] for row in rows]
    assert kept[0] < kept[1] == kept[3] and kept[0] == kept[2]  # half the rows, then all of them
    for row in rows:
        assert all(math.isfinite(value) and value >= 0 for value in row["hrl"].values())
        assert math.isfinite(row["val_residual"]) and row["val_residual"] >= 0
        assert set(row["langs"]) == set(manifest.langs)
        for cell in row["langs"].values():
            assert cell["n_harmful"] > 0 and cell["n_harmless"] > 0
            assert math.isfinite(cell["aligned"]) and cell["leak"] >= 0 and cell["fitted"] >= 0
    # a hundred times the preservation weight moves unseen harmless prompts less
    loose, tight = rows[1]["langs"], rows[3]["langs"]
    assert sum(c["leak"] for c in tight.values()) < sum(c["leak"] for c in loose.values())
    # keep_hrl penalises the tune-fit HRL rows' push: they move less than without it
    assert rows[1]["hrl"]["fitted"] < rows[5]["hrl"]["fitted"]


def test_bad_shares_are_a_usage_error(probed_workspace: Path) -> None:
    args = ["-w", str(probed_workspace), "--layer", "1", "--shares", "0,1"]
    assert load_bench("leak").main(args) == 2


def test_the_mapping_residual_reads_the_per_language_target(probed_workspace: Path) -> None:
    """A lang_strength factor of 2 in every language is strength=2: the same edit, the same
    target, so the same unseen mapping residual (it was measured against the unscaled target)."""
    from swe_cli.workspace import Workspace

    space = Workspace(probed_workspace)
    manifest = space.manifest()
    layer = manifest.probed_layers[len(manifest.probed_layers) // 2]
    factors = ",".join(f"{lang}=2" for lang in manifest.langs)
    bench = load_bench("leak")
    rows = bench.rows_for(
        space,
        layer,
        ["rank=4 keep_hrl=true strength=2", f"rank=4 keep_hrl=true lang_strength={factors}"],
        [1.0],
        0.5,
    )
    tolerance = 1e-6  # one float64 solve of the same system, then float32 keys
    assert rows[0]["val_residual"] == pytest.approx(rows[1]["val_residual"], abs=tolerance)
