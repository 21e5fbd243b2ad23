"""The model card as the Hub reads it: huggingface_hub parses the front matter into ModelCardData
with base_model (a Hub id, never a path), base_model_relation, license carried from the base,
language (the HRL and the targets), tags, pipeline_tag, library_name; the title names the base;
every column of the eval table is defined beneath it; the method's own parameters only; the
gate's decision; a line when the base is the synthetic organism; no local path anywhere."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard as HubCard
from test_hub import provenance
from test_report import _report

from swe_cli.card import ModelCard, edit_card, method_parameters
from swe_cli.report import card_markdown
from swe_cli.stages.export import adapter_card, render_card

GATE = "Shipping gate: passed (no target language's ASR up)."


def record(method: str = "residual", hub_id: str | None = "meta-llama/Llama-3.2-1B-Instruct"):  # type: ignore[no-untyped-def]
    data = provenance(hub_id)
    data["hrl"] = "en"
    data["solver"] = {
        "method": method,
        "params": {
            "method": method,
            "layers": [12],
            "rank": 32,
            "gamma": 1.0,
            "lam": 0.1,
            "alpha": 10.0,
            "beta": 10.0,
            "hard": False,
            "threshold": 0.01,
            "projections": ["gate"],
            "sparse": False,
            "keep_hrl": True,
            "strength": 1.5,
            "device": "cpu",
        },
    }
    return data


def base_folder(
    tmp_path: Path, card: str | None = None, config: dict[str, Any] | None = None
) -> Path:
    base = tmp_path / "model"
    base.mkdir(parents=True)
    (base / "config.json").write_text(json.dumps(config or {"model_type": "llama"}))
    if card is not None:
        (base / "README.md").write_text(card)
    return base


def parse(text: str) -> HubCard:
    return HubCard(text)


def defined_terms(text: str) -> set[str]:
    return set(re.findall(r"^- \*\*(.+?)\*\*:", text, flags=re.M))


def test_hub_card_metadata_title_and_eval(tmp_path: Path) -> None:
    base = base_folder(tmp_path, "---\nlicense: llama3.2\nlanguage: [en]\n---\n# Llama\n")
    data = record()
    card = ModelCard.for_provenance(data, base, card_markdown(_report(utility=True)))
    text = ModelCard(**{**card.__dict__, "gate_note": GATE, "chart": "swe_edit/eval.png"}).render(
        data
    )
    hub = parse(text)
    assert hub.data.base_model == "meta-llama/Llama-3.2-1B-Instruct"
    assert hub.data.base_model_relation == "finetune"
    assert hub.data.license == "llama3.2"
    assert hub.data.language == ["en", "bn", "sw"]
    assert hub.data.pipeline_tag == "text-generation" and hub.data.library_name == "transformers"
    assert {"safety", "multilingual", "model-editing"} <= set(hub.data.tags)
    body = hub.text
    assert body.lstrip().startswith(
        "# meta-llama/Llama-3.2-1B-Instruct with a multilingual safety edit"
    )
    evaluation = body[body.index("## Evaluation") : body.index("## What was edited")]
    assert evaluation.index(GATE) < evaluation.index("](swe_edit/eval.png)")
    assert evaluation.index("](swe_edit/eval.png)") < evaluation.index("| Language |")
    header = next(line for line in evaluation.splitlines() if line.startswith("| Language"))
    terms = defined_terms(evaluation)
    for column in [cell.strip() for cell in header.strip("|").split("|")][1:]:
        name = column.split(" (n=")[0].removesuffix(" base → edited")
        assert any(name == term or name.split()[0] == term.split()[0] for term in terms), column
    assert "Over-refusal" in terms and "Utility acc." in terms and "KL(base‖edited)" in terms
    assert "Synthetic base" not in body and "out/edited" not in body and "org/base" not in body
    assert str(tmp_path) not in text


def test_only_the_methods_own_parameters(tmp_path: Path) -> None:
    residual = ModelCard.for_provenance(record("residual"), None).render(record("residual"))
    line = next(line for line in residual.splitlines() if line.startswith("Method:"))
    assert line.startswith("Method: `residual`; parameters: layers=[12], rank=32, alpha=10.0")
    for foreign in ("gamma", "projections", "device", "method=", "threshold"):
        assert foreign not in line, foreign
    assert "lambda=0.1" in line and "keep_hrl=True" in line and "strength=1.5" in line
    paper = ModelCard.for_provenance(record("paper"), None).render(record("paper"))
    line = next(line for line in paper.splitlines() if line.startswith("Method:"))
    assert "gamma=1.0" in line and "projections=['gate']" in line
    for foreign in ("alpha", "beta", "keep_hrl", "strength", "sparse"):
        assert foreign not in line, foreign


def test_organism_base_is_named_and_flagged(tmp_path: Path) -> None:
    base = base_folder(tmp_path / "v2-seed3")
    (base.parent / "organism.json").write_text(json.dumps({"seed": 3, "hrl": "en"}))
    data = record(hub_id=None)
    data["base_model"]["id"] = str(base)
    text = ModelCard.for_provenance(data, base).render(data)
    hub = parse(text)
    assert hub.data.base_model is None and hub.data.language == ["en", "bn", "sw"]
    assert hub.text.lstrip().startswith("# swe model organism (seed 3) with a multilingual")
    assert "**Synthetic base.**" in hub.text and "not a usable model" in hub.text
    assert str(tmp_path) not in text and "`model`" not in text


def test_licence_from_the_base_config_and_local_base_named_by_folder(tmp_path: Path) -> None:
    base = base_folder(tmp_path, config={"model_type": "qwen2", "license": "apache-2.0"})
    data = record(hub_id=None)
    data["base_model"]["id"] = str(tmp_path / "Qwen2.5-0.5B-Instruct")
    text = ModelCard.for_provenance(data, base).render(data)
    hub = parse(text)
    assert hub.data.license == "apache-2.0" and "base_model" not in hub.data.to_dict()
    assert "# Qwen2.5-0.5B-Instruct with a multilingual safety edit" in text
    assert str(tmp_path) not in text


def test_edit_and_lora_cards_parse_and_name_no_local_path(tmp_path: Path) -> None:
    data = record()
    card = ModelCard.for_provenance(data, None, card_markdown(_report()))
    edit = parse(edit_card(card).render(data, kind="edit"))
    assert edit.data.base_model_relation == "adapter" and "swe-edit" in edit.data.tags
    data["lora"] = {
        "rank": 4,
        "max_reconstruction_error": 1e-7,
        "adapter_bytes": 2048,
        "modules": [
            {
                "module": "model.layers.12.mlp.down_proj",
                "rank": 4,
                "rows": 8,
                "cols": None,
                "dtype": "F32",
                "reconstruction_error": 1e-7,
            }
        ],
    }
    local = str(tmp_path / "models" / "llama")
    text = render_card(adapter_card(card), data, {"base_model_name_or_path": local})
    lora = parse(text)
    assert lora.data.base_model == "meta-llama/Llama-3.2-1B-Instruct"
    assert lora.data.base_model_relation == "adapter" and lora.data.library_name == "peft"
    assert local not in text and "| Language |" in text
    assert 'from_pretrained("meta-llama/Llama-3.2-1B-Instruct")' in text


def test_the_cards_chart_is_uploaded(tmp_path: Path) -> None:
    from swe_cli.hub import EVAL_CHART, upload_files

    for name in ("README.md", "swe_edit.json", EVAL_CHART, "swe_edit/notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    uploaded = upload_files(tmp_path)
    assert EVAL_CHART in uploaded and "swe_edit/notes.txt" not in uploaded


def test_language_mapping_options_are_named_only_when_used() -> None:
    base = {"layers": [12], "rank": 32, "harmless_targets": 0.0, "lang_strength": ""}
    assert "harmless_targets" not in method_parameters("residual", base)
    assert "lang_strength" not in method_parameters("refusal", base)
    used = {**base, "harmless_targets": 0.25, "lang_strength": "sw=2,th=2"}
    shown = method_parameters("residual", used)
    assert shown["harmless_targets"] == 0.25 and shown["lang_strength"] == "sw=2,th=2"
    assert "harmless_targets" not in method_parameters("paper", used)  # not a paper parameter
