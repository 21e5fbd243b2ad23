"""Probe tests: the recorded x (MLP input), a (down_proj input) and r (layer output) equal an
independent computation from the checkpoint weights and an unpadded forward of each prompt, on
tiny random llama, qwen2, gemma2 and phi3 (fused gate_up_proj) checkpoints; batching and padding
do not change them; only the fit split is recorded; the all-position moments are exact sums."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import LANGS, probe_workspace
from safetensors import safe_open
from torch.nn import functional

from swe_cli.workspace import Workspace, load_acts, load_tensors

ATOL = 1e-5

# Per family, written out here (not taken from swe_cli.architectures) so the test is independent:
# checkpoint names of G and U (row offsets into a fused tensor), activation, and how the layer
# output r is built from the mid-layer residual h and the MLP output: r = h + post(down(a)),
# x = norm(h).
FAMILIES: dict[str, dict[str, Any]] = {
    "llama": {
        "gate": ("mlp.gate_proj.weight", None),
        "up": ("mlp.up_proj.weight", None),
        "act": functional.silu,
        "norm": "post_attention_layernorm",
        "post": None,
    },
    "qwen2": {
        "gate": ("mlp.gate_proj.weight", None),
        "up": ("mlp.up_proj.weight", None),
        "act": functional.silu,
        "norm": "post_attention_layernorm",
        "post": None,
    },
    "gemma2": {
        "gate": ("mlp.gate_proj.weight", None),
        "up": ("mlp.up_proj.weight", None),
        "act": lambda t: functional.gelu(t, approximate="tanh"),
        "norm": "pre_feedforward_layernorm",
        "post": "post_feedforward_layernorm",
    },
    "phi3": {
        "gate": ("mlp.gate_up_proj.weight", "first"),
        "up": ("mlp.gate_up_proj.weight", "second"),
        "act": functional.silu,
        "norm": "post_attention_layernorm",
        "post": None,
    },
}


def checkpoint_tensor(model_dir: Path, name: str) -> torch.Tensor:
    """One tensor read straight from the shard that the index names (safetensors only)."""
    weight_map = json.loads((model_dir / "model.safetensors.index.json").read_text())["weight_map"]
    with safe_open(str(model_dir / weight_map[name]), framework="pt") as handle:
        return handle.get_tensor(name).float()


def mlp_rows(model_dir: Path, layer: int, family: str, which: str) -> torch.Tensor:
    name, half = FAMILIES[family][which]
    weight = checkpoint_tensor(model_dir, f"model.layers.{layer}.{name}")
    if half is None:
        return weight
    rows = weight.shape[0] // 2
    return weight[:rows] if half == "first" else weight[rows:]


def stored_prompts(workspace: Path, prompt_set: str) -> list[dict[str, Any]]:
    lines = (workspace / "prompts" / f"{prompt_set}.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def own_answers(workspace: Path) -> dict[tuple[str, str], str]:
    path = Workspace(workspace).answers_path
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return {(row["lang"], row["id"]): row["answer"] for row in rows}


def fit_texts(workspace: Path, prompt_set: str, lang: str) -> dict[str, str]:
    return {
        p["id"]: p["text"]
        for p in stored_prompts(workspace, prompt_set)
        if p["lang"] == lang and p["split"] == "fit"
    }


class Reference:
    """The model and tokenizer loaded with plain transformers; forwards one unpadded text."""

    def __init__(self, model_dir: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)

    def chat(self, prompt: str) -> str:
        messages = [{"role": "user", "content": prompt}]
        return self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )

    def ids(self, text: str) -> torch.Tensor:
        return self.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]

    @torch.no_grad()
    def hidden_states(self, text: str) -> tuple[torch.Tensor, ...]:
        output = self.model(input_ids=self.ids(text), output_hidden_states=True, use_cache=False)
        return tuple(h[0] for h in output.hidden_states)  # [tokens, d] each

    def layer(self, index: int) -> Any:
        return self.model.model.layers[index]


@pytest.fixture(scope="module")
def family_workspaces(
    tiny_checkpoint: Callable[[str], Path],
    prompt_files: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("family-probes")
    workspaces = {}
    for family in FAMILIES:
        workspaces[family] = root / family
        probe_workspace(root / family, tiny_checkpoint(family), prompt_files, batch_size=5)
    return workspaces


@pytest.mark.parametrize("family", list(FAMILIES))
@torch.no_grad()
def test_recorded_activations_match_manual_computation(
    family: str, family_workspaces: dict[str, Path], tiny_checkpoint: Callable[[str], Path]
) -> None:
    model_dir = tiny_checkpoint(family)
    workspace = Workspace(family_workspaces[family])
    spec = FAMILIES[family]
    reference = Reference(model_dir)
    num_layers = reference.model.config.num_hidden_layers
    checked = 0
    for prompt_set, lang in (("harmful", "sw"), ("harmless", "en")):
        texts = fit_texts(workspace.root, prompt_set, lang)
        for layer in range(num_layers):
            acts, ids = load_acts(workspace, layer, prompt_set, lang)
            assert ids == sorted(texts, key=int)
            G = mlp_rows(model_dir, layer, family, "gate")
            U = mlp_rows(model_dir, layer, family, "up")
            down = checkpoint_tensor(model_dir, f"model.layers.{layer}.mlp.down_proj.weight")
            assert G.shape == U.shape == (down.shape[1], down.shape[0])
            x, a, r = acts["x"][:, -1], acts["a"][:, -1], acts["r"][:, -1]
            # a = act(G x) * (U x) from the recorded x and the checkpoint rows
            torch.testing.assert_close(a, spec["act"](x @ G.T) * (x @ U.T), atol=ATOL, rtol=1e-4)
            for row, prompt_id in enumerate(ids[:3]):
                hidden = reference.hidden_states(reference.chat(texts[prompt_id]))
                block = reference.layer(layer)
                if layer + 1 < num_layers:
                    expected_r = hidden[layer + 1][-1]
                    torch.testing.assert_close(r[row], expected_r, atol=ATOL, rtol=1e-4)
                else:  # the last hidden state is the final norm of the last layer's output
                    normed = reference.model.model.norm(r[row])
                    torch.testing.assert_close(normed, hidden[-1][-1], atol=ATOL, rtol=1e-4)
                    expected_r = r[row]
                # r = h + post(down a): recover h, then x = norm(h)
                mlp_out = a[row] @ down.T
                if spec["post"]:
                    mlp_out = getattr(block, spec["post"])(mlp_out)
                expected_x = getattr(block, spec["norm"])(expected_r - mlp_out)
                torch.testing.assert_close(x[row], expected_x, atol=1e-4, rtol=1e-3)
                checked += 1
    assert checked == 2 * num_layers * 3


def _all_shards(workspace: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {
        str(path.relative_to(workspace)): load_tensors(path)[0]
        for path in sorted((workspace / "acts").rglob("*.safetensors"))
    }


def test_batch_size_and_padding_side_do_not_change_values(
    probed_workspace: Path,
    tiny_llama: Path,
    prompt_files: dict[str, Path],
    tmp_path: Path,
) -> None:
    # prompts have 2..9 words: with batch size > 1 they are padded, with 1 they are not
    lengths = {len(text.split()) for text in fit_texts(probed_workspace, "harmful", "es").values()}
    assert len(lengths) > 1
    expected = _all_shards(probed_workspace)  # batch size 4
    assert len(expected) == 3 * 2 * len(LANGS)
    left_padded_model = tmp_path / "left"
    shutil.copytree(tiny_llama, left_padded_model)
    config_path = left_padded_model / "tokenizer_config.json"
    tokenizer_config = json.loads(config_path.read_text())
    tokenizer_config["padding_side"] = "left"
    config_path.write_text(json.dumps(tokenizer_config))
    for name, model_dir, batch_size in (
        ("b1", tiny_llama, 1),
        ("all", tiny_llama, 64),
        ("left", left_padded_model, 3),
    ):
        probe_workspace(tmp_path / name, model_dir, prompt_files, batch_size=batch_size)
        got = _all_shards(tmp_path / name)
        assert got.keys() == expected.keys()
        for shard, tensors in expected.items():
            for key in ("x", "a", "r"):
                torch.testing.assert_close(
                    got[shard][key], tensors[key], atol=ATOL, rtol=0, msg=f"{name} {shard} {key}"
                )


def test_only_the_fit_split_is_recorded(probed_workspace: Path) -> None:
    workspace = Workspace(probed_workspace)
    for prompt_set in ("harmful", "harmless"):
        stored = stored_prompts(probed_workspace, prompt_set)
        for lang in LANGS:
            fit = [p["id"] for p in stored if p["lang"] == lang and p["split"] == "fit"]
            heldout = {p["id"] for p in stored if p["lang"] == lang and p["split"] == "heldout"}
            assert fit and heldout
            for layer in range(3):
                acts, ids = load_acts(workspace, layer, prompt_set, lang)
                assert ids == sorted(fit, key=int)
                assert not heldout & set(ids)
                assert acts["x"].shape == (len(fit), 1, 32)
                assert acts["a"].shape == (len(fit), 1, 48)
                assert acts["r"].shape == (len(fit), 1, 32)


@torch.no_grad()
def test_moments_are_exact_sums_over_non_pad_tokens(
    probed_workspace: Path, tiny_llama: Path
) -> None:
    reference = Reference(tiny_llama)
    stored = stored_prompts(probed_workspace, "harmless")
    own = own_answers(probed_workspace)
    texts = [
        reference.chat(p["text"]) + answer
        for lang in LANGS
        for p in stored
        if p["lang"] == lang and p["split"] == "fit"
        for answer in (own[(lang, p["id"])], p["answer"])
        if answer  # an empty own answer (eos first) adds no text of its own
    ]
    captured: dict[int, list[torch.Tensor]] = {}
    handles = []
    for layer in range(3):
        mlp = reference.layer(layer).mlp

        def keep(_module: Any, args: tuple[Any, ...], layer: int = layer) -> None:
            captured.setdefault(layer, []).append(args[0][0].double())

        handles.append(mlp.down_proj.register_forward_pre_hook(keep))
    tokens = 0
    for text in texts:
        ids = reference.ids(text)
        tokens += ids.shape[1]
        reference.model(input_ids=ids, use_cache=False)
    for handle in handles:
        handle.remove()
    for layer in range(3):
        stats, metadata = load_tensors(Workspace(probed_workspace).stats_path(layer))
        assert int(stats["count"].item()) == tokens
        assert metadata["texts"] == str(len(texts))
        a = torch.cat(captured[layer])
        assert a.shape == (tokens, 48)
        assert stats["aa"].dtype == torch.float64
        torch.testing.assert_close(stats["aa"], a.T @ a, atol=1e-6, rtol=1e-5)
        assert stats["xx"].shape == (32, 32)


@torch.no_grad()
def test_positions_two_records_the_last_two_prompt_positions(
    probed_workspace: Path, tiny_llama: Path, prompt_files: dict[str, Path], tmp_path: Path
) -> None:
    probe_workspace(tmp_path / "ws", tiny_llama, prompt_files, positions=2, layers=(0, 2))
    workspace = Workspace(tmp_path / "ws")
    assert sorted(p.name for p in workspace.acts_dir.iterdir()) == ["L0", "L2"]
    reference = Reference(tiny_llama)
    texts = fit_texts(tmp_path / "ws", "harmful", "es")
    for layer in (0, 2):
        acts, ids = load_acts(workspace, layer, "harmful", "es")
        n = len(texts)
        assert acts["x"].shape == (n, 2, 32)
        assert acts["a"].shape == (n, 2, 48)
        assert acts["r"].shape == (n, 2, 32)
        one, _ = load_acts(Workspace(probed_workspace), layer, "harmful", "es")
        for key in ("x", "a", "r"):  # the last position is what positions=1 records
            torch.testing.assert_close(acts[key][:, -1], one[key][:, 0], atol=ATOL, rtol=0)
        if layer == 0:
            hidden = reference.hidden_states(reference.chat(texts[ids[0]]))
            torch.testing.assert_close(acts["r"][0], hidden[1][-2:], atol=ATOL, rtol=1e-4)
    # re-probing the same workspace with positions=1 replaces the shards
    probe_workspace(tmp_path / "ws", tiny_llama, prompt_files, positions=1, layers=(0, 2))
    acts, _ = load_acts(workspace, 0, "harmful", "es")
    assert acts["x"].shape == (len(texts), 1, 32)


@torch.no_grad()
def test_truncation_keeps_the_last_prompt_positions(
    tiny_llama: Path, prompt_files: dict[str, Path], tmp_path: Path
) -> None:
    """With prompts longer than --max-length the recorded positions are still the last ones
    (the generation prompt), computed on the prompt's last max_length tokens."""
    probe_workspace(tmp_path / "ws", tiny_llama, prompt_files, max_length=4, layers=(0,))
    reference = Reference(tiny_llama)
    texts = fit_texts(tmp_path / "ws", "harmful", "en")
    acts, ids = load_acts(Workspace(tmp_path / "ws"), 0, "harmful", "en")
    assistant = reference.tokenizer.convert_tokens_to_ids("<|assistant|>")
    for row, prompt_id in enumerate(ids):
        tokens = reference.ids(reference.chat(texts[prompt_id]))
        assert tokens.shape[1] > 4 and int(tokens[0, -1]) == assistant
        output = reference.model(input_ids=tokens[:, -4:], output_hidden_states=True)
        torch.testing.assert_close(
            acts["r"][row, -1], output.hidden_states[1][0, -1], atol=ATOL, rtol=1e-4
        )


def test_device_map_auto_records_the_same_values(
    probed_workspace: Path, tiny_llama: Path, prompt_files: dict[str, Path], tmp_path: Path
) -> None:
    """--device-map auto (accelerate, for models larger than one device) gives the same shards."""
    pytest.importorskip("accelerate")
    expected = _all_shards(probed_workspace)
    probe_workspace(tmp_path / "mapped", tiny_llama, prompt_files, device_map="auto")
    got = _all_shards(tmp_path / "mapped")
    assert got.keys() == expected.keys()
    for shard, tensors in expected.items():
        for key in ("x", "a", "r"):
            torch.testing.assert_close(got[shard][key], tensors[key], atol=ATOL, rtol=0)


@torch.no_grad()
def test_own_answers_are_the_models_greedy_answers_and_are_reused(
    probed_workspace: Path, tiny_llama: Path, prompt_files: dict[str, Path], tmp_path: Path
) -> None:
    """The preservation text includes the model's own greedy answer to every harmless fit
    prompt (48 tokens at most), generated once: a re-run with the same prompts generates none."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    own = own_answers(probed_workspace)
    stored = [p for p in stored_prompts(probed_workspace, "harmless") if p["split"] == "fit"]
    assert sorted(own) == sorted((p["lang"], p["id"]) for p in stored)
    for p in stored[:3]:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": p["text"]}], add_generation_prompt=True, tokenize=False
        )
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        out = model.generate(ids, max_new_tokens=48, do_sample=False)
        new_tokens = out[0, ids.shape[1] :].tolist()
        if tokenizer.eos_token_id in new_tokens:
            new_tokens = new_tokens[: new_tokens.index(tokenizer.eos_token_id)]
        assert own[(p["lang"], p["id"])] == tokenizer.decode(new_tokens, skip_special_tokens=True)

    copy = tmp_path / "ws"
    shutil.copytree(probed_workspace, copy)
    seen: list[str] = []
    probe_workspace(copy, tiny_llama, prompt_files, progress=lambda task, *_: seen.append(task))
    assert "own answers" not in seen
    assert own_answers(copy) == own


def test_own_answers_zero_streams_prompts_and_references_only(
    tiny_llama: Path, prompt_files: dict[str, Path], tmp_path: Path
) -> None:
    probe_workspace(tmp_path / "ws", tiny_llama, prompt_files, own_answers=0, layers=[0])
    assert not Workspace(tmp_path / "ws").answers_path.exists()
    stats, metadata = load_tensors(Workspace(tmp_path / "ws").stats_path(0))
    fit = [p for p in stored_prompts(tmp_path / "ws", "harmless") if p["split"] == "fit"]
    assert metadata["texts"] == str(len(fit))


def test_a_rerun_generates_nothing_when_every_answer_is_cached(
    probed_workspace: Path,
    tiny_llama: Path,
    prompt_files: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Own answers and the HRL refusal check are both cached in WS/answers/: re-probing the same
    prompts calls generation not once, and the check gives the same rate."""
    import yaml

    import swe_cli.stages.probe as probe_stage

    copy = tmp_path / "ws"
    shutil.copytree(probed_workspace, copy)
    assert (copy / "answers" / "hrl_check.jsonl").is_file()
    calls: list[int] = []
    original = probe_stage.generate

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(probe_stage, "generate", counting)
    result = probe_workspace(copy, tiny_llama, prompt_files)
    assert calls == []
    before = yaml.safe_load((probed_workspace / "workspace.yaml").read_text())
    rate = before["stages"]["probe"]["outputs"]["hrl_refusal"]
    assert result.hrl_refusal == rate  # type: ignore[attr-defined]
