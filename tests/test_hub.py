"""Model card, provenance helpers and the Hub push, offline: HfApi is mocked, the card's front
matter is parsed with huggingface_hub's own reader."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import torch

from swe_cli.card import ModelCard, edit_card
from swe_cli.edit import Edit, TensorEdit
from swe_cli.errors import HubError
from swe_cli.hub import (
    complete_provenance,
    hub_repo_id,
    neuron_counts,
    normalise_languages,
    public_source,
    push_to_hub,
)
from swe_cli.prompts import Prompt, PromptSet, merge_sets

EVAL_TABLE = "| lang | ASR before | ASR after |\n|---|---:|---:|\n| bn | 0.98 | 0.60 |\n"


def tiny_edit() -> Edit:
    gate = TensorEdit(
        name="model.layers.3.mlp.gate_proj.weight",
        rows=torch.tensor([4, 9, 11]),
        delta=torch.zeros(3, 8),
        base_sha256="a" * 64,
        shape=(16, 8),
        dtype="BF16",
    )
    down = TensorEdit(
        name="model.layers.5.mlp.down_proj.weight",
        rows=torch.arange(8),
        delta=torch.zeros(8, 2),
        base_sha256="b" * 64,
        shape=(8, 16),
        dtype="BF16",
        cols=torch.tensor([1, 7]),
    )
    fused = TensorEdit(
        name="model.layers.6.mlp.gate_up_proj.weight",
        rows=torch.tensor([1, 2, 17]),  # neuron 1 (gate and up halves) and neuron 2
        delta=torch.zeros(3, 8),
        base_sha256="c" * 64,
        shape=(32, 8),
        dtype="BF16",
    )
    return Edit((gate, down, fused), {"method": "paper"})


def provenance(hub_id: str | None = "meta-llama/Llama-3.2-1B-Instruct") -> dict[str, Any]:
    caller = {
        "base_model": {"id": hub_id or "/models/llama", "hub_id": hub_id, "commit": "abc123"},
        "languages": ["en", "bn", "sw"],
        "solver": {"method": "paper", "params": {"rank": 32, "gamma": 1.0}},
    }
    return complete_provenance(caller, tiny_edit(), "f" * 64, {})


def front_matter(text: str, tmp_path: Path) -> dict[str, Any]:
    from huggingface_hub.repocard import metadata_load

    path = tmp_path / "README.md"
    path.write_text(text)
    return metadata_load(path) or {}


def test_model_card_has_hub_metadata_and_body(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    (base / "README.md").write_text(
        "---\nlicense: llama3.2\nlanguage: [en]\ntags: [facebook]\n---\n# Llama\n"
    )
    record = provenance()
    card = ModelCard.for_provenance(record, base, EVAL_TABLE)
    text = card.render(record)
    meta = front_matter(text, tmp_path)
    assert meta["base_model"] == "meta-llama/Llama-3.2-1B-Instruct"
    assert meta["base_model_relation"] == "finetune"
    assert meta["language"] == ["en", "bn", "sw"]
    assert {"safety", "multilingual"} <= set(meta["tags"])
    assert meta["library_name"] == "transformers"
    assert meta["license"] == "llama3.2"
    from huggingface_hub import ModelCardData

    assert ModelCardData(**meta).base_model == meta["base_model"]
    assert "| bn | 0.98 | 0.60 |" in text
    assert "`model.layers.3.mlp.gate_proj.weight` | 3 | 3 | all" in text
    assert "`model.layers.5.mlp.down_proj.weight` | 5 | 8 | 2" in text
    assert "swe apply --edit swe_edit/ --base meta-llama/Llama-3.2-1B-Instruct" in text
    assert "f" * 64 in text and "abc123" in text


def test_local_base_has_no_base_model_key_and_an_unevaluated_note(tmp_path: Path) -> None:
    record = provenance(hub_id=None)
    text = ModelCard.for_provenance(record, None).render(record)
    meta = front_matter(text, tmp_path)
    assert "base_model" not in meta and "license" not in meta
    assert "`llama`" in text
    assert "## Evaluation\n\nUnevaluated: this checkpoint was written without `--eval`" in text


def test_edit_card_is_an_adapter_not_a_transformers_model(tmp_path: Path) -> None:
    record = provenance()
    card = edit_card(ModelCard.for_provenance(record, None, EVAL_TABLE))
    text = card.render(record, kind="edit")
    meta = front_matter(text, tmp_path)
    assert meta["base_model_relation"] == "adapter" and "library_name" not in meta
    assert "swe-edit" in meta["tags"] and "| bn | 0.98 | 0.60 |" in text
    assert "swe apply --edit" in text


def test_provenance_fields() -> None:
    record = provenance()
    assert record["tool"]["name"] == "swe" and record["format"].startswith("swe-provenance")
    assert record["layers"] == [3, 5, 6]
    assert record["neurons"] == {"3": 3, "5": 2, "6": 2}
    assert record["edit"]["rows"] == 14 and record["edit"]["sha256"] == "f" * 64
    assert record["solver"]["params"]["rank"] == 32
    assert neuron_counts(tiny_edit(), {"layers": {3: {"neurons": 7}}})["3"] == 7


def test_hub_ids_and_languages() -> None:
    assert hub_repo_id({"id": "Qwen/Qwen2.5-7B-Instruct", "commit": "abc"}) == (
        "Qwen/Qwen2.5-7B-Instruct"
    )
    snapshot = "/root/.cache/huggingface/hub/models--Qwen--Qwen2.5-7B/snapshots/0123abcd"
    assert hub_repo_id({"id": "/x", "path": snapshot}) == "Qwen/Qwen2.5-7B"
    assert hub_repo_id({"id": "models/llama", "path": "/data/models/llama"}) is None
    assert normalise_languages("en", ["bn", "sw", "en"]) == ["en", "bn", "sw"]
    assert normalise_languages(None, "bn, sw") == ["bn", "sw"]
    assert normalise_languages(None, {"hrl": "en", "targets": ["th"]}) == ["en", "th"]


# -- push ---------------------------------------------------------------------------------------
@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "model.safetensors").write_bytes(b"\0" * 64)
    return out


def test_push_creates_repo_and_uploads(folder: Path) -> None:
    with mock.patch("huggingface_hub.HfApi") as api_class:
        api = api_class.return_value
        del api.upload_large_folder  # huggingface_hub >= 2: upload_folder does large folders
        url = push_to_hub(folder, "me/model", private=True, revision="v1", token="hf_x")
    assert url == "https://huggingface.co/me/model/tree/v1"
    assert api_class.call_args.kwargs["token"] == "hf_x"
    api.create_repo.assert_called_once_with(
        "me/model", private=True, repo_type="model", exist_ok=True
    )
    api.create_branch.assert_called_once_with(
        "me/model", branch="v1", repo_type="model", exist_ok=True
    )
    upload = api.upload_folder.call_args.kwargs
    assert upload["folder_path"] == folder and upload["repo_id"] == "me/model"
    assert upload["revision"] == "v1" and ".cache/**" in upload["ignore_patterns"]


def test_large_folder_uses_large_folder_upload_when_available(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import swe_cli.hub as hub

    monkeypatch.setattr(hub, "LARGE_FOLDER_BYTES", 10)
    with mock.patch("huggingface_hub.HfApi") as api_class:
        api = api_class.return_value
        url = push_to_hub(folder, "me/model", token="hf_x")
    assert url == "https://huggingface.co/me/model"
    api.upload_large_folder.assert_called_once()
    assert api.upload_large_folder.call_args.kwargs["repo_type"] == "model"
    api.upload_folder.assert_not_called()
    api.create_branch.assert_not_called()


def test_token_from_environment(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_env")
    with mock.patch("huggingface_hub.HfApi") as api_class:
        push_to_hub(folder, "me/model")
    assert api_class.call_args.kwargs["token"] == "hf_env"


def test_missing_token_is_a_clear_error(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with (
        mock.patch("huggingface_hub.get_token", return_value=None),
        mock.patch("huggingface_hub.HfApi") as api_class,
        pytest.raises(HubError, match="no Hugging Face token") as caught,
    ):
        push_to_hub(folder, "me/model")
    assert "HF_TOKEN" in caught.value.hint and "complete" in caught.value.hint
    api_class.assert_not_called()
    assert (folder / "config.json").exists()


def test_refused_repo_is_a_clear_error(folder: Path) -> None:
    from huggingface_hub.errors import HfHubHTTPError

    response = mock.Mock(status_code=403, headers={}, url="https://huggingface.co/api/repos/create")
    refused = HfHubHTTPError("403 Forbidden: you cannot create repos in 'org'", response=response)
    with mock.patch("huggingface_hub.HfApi") as api_class:
        api_class.return_value.create_repo.side_effect = refused
        with pytest.raises(HubError, match="HTTP 403") as caught:
            push_to_hub(folder, "org/model", token="hf_x")
    assert "org/model" in caught.value.message and str(folder) in caught.value.hint
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(HubError, match="no such folder"):
        push_to_hub(tmp_path / "nope", "me/model", token="hf_x")


def test_public_source_names_every_part_of_a_merged_set(tmp_path: Path) -> None:
    harmless = tmp_path / "sets" / "harmless.jsonl"
    borderline = tmp_path / "other" / "borderline.jsonl"
    first = PromptSet(
        name="harmless", prompts=(Prompt("1", "en", "hi", "fit"),), source=str(harmless)
    )
    second = PromptSet(
        name="b", prompts=(Prompt("b1", "en", "kill a process", "fit"),), source=str(borderline)
    )
    merged = merge_sets(first, second)
    assert public_source(merged.source) == "harmless.jsonl + borderline.jsonl"
    assert str(tmp_path) not in public_source(merged.source)
    assert public_source(f"DAMO-NLP-SG/MultiJail + {borderline}") == (
        "DAMO-NLP-SG/MultiJail + borderline.jsonl"
    )
