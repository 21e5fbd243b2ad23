"""bench/recognition.py: the target size and the harmful/harmless separation per language, on
activations whose answers are known, and end to end on a probed workspace."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from common import load_bench

from swe_cli.methods.base import LayerData


def _data() -> LayerData:
    """HRL harmful streams 2*e1 and 4*e1 + e2, HRL harmless streams 0 and e2 (harmful mean
    3e1 + e2/2, harmless mean e2/2: the HRL's direction is e1). Language `same`: every stream equals the HRL's (target 0, separation 1). Language
    `blind`: its harmful streams sit where its harmless ones do (separation 0) and each differs
    from its HRL translation by that translation's own length (target 1). Language `half`: its
    harmful prompts are separated from its harmless ones by half the HRL's separation, shifted
    by 5*e3 off the direction (separation 0.5)."""
    e1, e2, e3 = torch.eye(3)
    hrl_harm = torch.stack([2 * e1, 4 * e1 + e2])
    hrl_safe = torch.stack([0 * e1, e2])
    same_harm, same_safe = hrl_harm.clone(), hrl_safe.clone()
    blind_harm = torch.stack([e2 / 2, e2 / 2])
    blind_safe = torch.stack([0 * e1, e2])
    half_harm = torch.stack([1.5 * e1 + 5 * e3, 1.5 * e1 + 5 * e3 + e2])
    half_safe = torch.stack([5 * e3, 5 * e3 + e2])
    r_low = torch.cat([same_harm, blind_harm, half_harm])
    r_hrl = torch.cat([hrl_harm, hrl_harm, hrl_harm])
    r_safe = torch.cat([hrl_safe, same_safe, blind_safe, half_safe])
    langs = ("same", "same", "blind", "blind", "half", "half")
    safe_langs = ("en", "en", "same", "same", "blind", "blind", "half", "half")
    empty = torch.zeros(6, 1)
    return LayerData(
        x_low=empty,
        x_hrl=empty,
        a_low=empty,
        r_low=r_low,
        r_hrl=r_hrl,
        x_safe=torch.zeros(8, 1),
        a_safe=torch.zeros(8, 1),
        r_safe=r_safe,
        n_safe_hrl=2,
        low_langs=langs,
        safe_ids=("a", "b") * 4,
        safe_langs=safe_langs,
    )


def test_target_and_separation_on_known_streams(monkeypatch: pytest.MonkeyPatch) -> None:
    import swe_cli.methods.base as base

    bench = load_bench("recognition")
    monkeypatch.setattr(base, "layer_data", lambda *args, **kwargs: _data())
    rows = {row["lang"]: row for row in bench.layer_rows(None, 7, "en", ["same", "blind", "half"])}
    tolerance = 1e-6  # float32 inputs, float64 arithmetic
    assert rows["same"]["target"] == pytest.approx(0.0, abs=tolerance)
    assert rows["same"]["separation"] == pytest.approx(1.0, abs=tolerance)
    assert rows["blind"]["separation"] == pytest.approx(0.0, abs=tolerance)
    # ||h - e2/2|| / ||h|| for h = 2e1 and 4e1 + e2
    expected = (math.sqrt(4 + 0.25) / 2 + math.sqrt(16 + 0.25) / math.sqrt(17)) / 2
    assert rows["blind"]["target"] == pytest.approx(expected, abs=tolerance)
    assert rows["half"]["separation"] == pytest.approx(0.5, abs=tolerance)
    assert {row["layer"] for row in rows.values()} == {7}
    assert [rows[lang]["n_harmful"] for lang in rows] == [2, 2, 2]
    assert [rows[lang]["n_harmless"] for lang in rows] == [2, 2, 2]


def test_a_probed_workspace_gives_one_finite_row_per_layer_and_language(
    probed_workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from swe_cli.workspace import Workspace

    manifest = Workspace(probed_workspace).manifest()
    layers = manifest.probed_layers[:2]
    out = tmp_path / "rows.json"
    code = load_bench("recognition").main(
        ["-w", str(probed_workspace), "--layers", ",".join(map(str, layers)), "--json", str(out)]
    )
    assert code == 0
    rows = json.loads(out.read_text(encoding="utf-8"))
    assert [(row["layer"], row["lang"]) for row in rows] == [
        (layer, lang) for layer in layers for lang in manifest.langs
    ]
    assert all(math.isfinite(row["target"]) and row["target"] > 0 for row in rows)
    assert all(math.isfinite(row["separation"]) for row in rows)
    table = capsys.readouterr().out.splitlines()
    assert [line.split(" | ")[0] for line in table[3:]] == [f"| {layer}" for layer in layers]
