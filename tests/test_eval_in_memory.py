"""The edit evaluated in memory (the base loaded once, patched in place, restored) measures what
the on-disk edited checkpoint measures, and the base's measurements are cached between runs:
a second run generates nothing for the base."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from swe_cli.edit import Edit, load_edit, save_edit, tensor_edit_from_base
from swe_cli.measure import EditNotInMemory, edit_applied
from swe_cli.models import load_model
from swe_cli.prompts import load_prompt_set
from swe_cli.stages import answers as evaluate  # generate is called there
from swe_cli.stages.apply import apply_edit_artifact
from swe_cli.stages.evaluate import EvalInputs, run_eval, run_eval_edit

LANGS = ["en", "es", "sw"]


def _low_rank(rows: int, cols: int, scale: float, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    left = torch.randn(rows, 2, generator=generator)
    return left @ torch.randn(2, cols, generator=generator) * scale


@pytest.fixture(scope="module")
def edited(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(edit folder, the checkpoint `swe apply` writes from it): whole rows of a gate_proj and
    selected columns of a down_proj, large enough to change answers."""
    items = [
        tensor_edit_from_base(
            tiny_llama,
            "model.layers.0.mlp.gate_proj.weight",
            [3, 7, 11, 40],
            _low_rank(4, 32, 2, 1),
        ),
        tensor_edit_from_base(
            tiny_llama,
            "model.layers.2.mlp.down_proj.weight",
            list(range(32)),
            _low_rank(32, 5, 3.0, 2),
            cols=[1, 4, 9, 20, 33],
        ),
    ]
    root = tmp_path_factory.mktemp("edited")
    save_edit(Edit(tuple(items), {"base_model": str(tiny_llama), "method": "test"}), root / "edit")
    apply_edit_artifact(root / "edit", tiny_llama, root / "out", device="cpu")
    return root / "edit", root / "out"


def _sets(prompt_files: dict[str, Path]) -> dict[str, Any]:
    return {
        "harmful": load_prompt_set(prompt_files["harmful"], "harmful", LANGS),
        "harmless": load_prompt_set(prompt_files["harmless"], "harmless", LANGS),
    }


def test_patched_weights_equal_the_applied_checkpoint_and_are_restored_bit_exactly(
    tiny_llama: Path, edited: tuple[Path, Path]
) -> None:
    edit_dir, out = edited
    model, _ = load_model(tiny_llama, dtype="float32")
    on_disk, _ = load_model(out, dtype="float32")
    before = {name: value.clone() for name, value in model.state_dict().items()}
    with edit_applied(model, load_edit(edit_dir)):
        patched = model.state_dict()
        for name, value in on_disk.state_dict().items():
            assert torch.equal(patched[name], value), name
        assert not torch.equal(patched["model.layers.0.mlp.gate_proj.weight"], before[name])
    for name, value in model.state_dict().items():
        assert torch.equal(value.view(torch.uint8), before[name].view(torch.uint8)), name


def test_weights_are_restored_when_the_evaluation_fails(
    tiny_llama: Path, edited: tuple[Path, Path]
) -> None:
    model, _ = load_model(tiny_llama, dtype="float32")
    before = {name: value.clone() for name, value in model.state_dict().items()}
    with (
        pytest.raises(RuntimeError, match="interrupted"),
        edit_applied(model, load_edit(edited[0])),
    ):
        raise RuntimeError("interrupted")
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_an_edit_of_a_tensor_the_model_lacks_is_refused(tiny_llama: Path) -> None:
    model, _ = load_model(tiny_llama, dtype="float32")
    item = tensor_edit_from_base(
        tiny_llama, "model.layers.0.mlp.up_proj.weight", [0], torch.ones(1, 32)
    )
    wrong = replace(item, name="model.layers.9.mlp.up_proj.weight")
    before = model.get_parameter("model.layers.0.mlp.up_proj.weight").clone()
    with (
        pytest.raises(EditNotInMemory, match="no parameter 'model.layers.9.mlp.up_proj.weight'"),
        edit_applied(model, Edit((item, wrong))),
    ):
        pass
    assert torch.equal(model.get_parameter("model.layers.0.mlp.up_proj.weight"), before)


class GenerateCounter:
    """Counts evaluate's generate calls and the prompts they answer."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        self.prompts = 0
        original = evaluate.generate

        def counting(model: Any, tokenizer: Any, texts: Any, **options: Any) -> list[str]:
            self.calls += 1
            self.prompts += len(texts)
            return original(model, tokenizer, texts, **options)

        monkeypatch.setattr(evaluate, "generate", counting)


def test_in_memory_eval_equals_the_on_disk_eval_and_the_base_is_cached(
    tiny_llama: Path,
    edited: tuple[Path, Path],
    prompt_files: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    one_thread: None,
) -> None:
    edit_dir, out = edited
    sets = _sets(prompt_files)
    inputs = EvalInputs(langs=LANGS, max_new_tokens=6, batch_size=4, dtype="float32", **sets)
    on_disk_report = run_eval(out, inputs, baseline=tiny_llama)
    on_disk = on_disk_report.to_dict()
    counter = GenerateCounter(monkeypatch)
    cache = tmp_path / "cache"
    first = run_eval_edit(tiny_llama, load_edit(edit_dir), inputs, cache=cache, label=str(out))
    per_model = counter.calls // 2
    assert per_model > 0 and counter.calls == 2 * per_model  # base and edited model
    assert len(list(cache.glob("*.json"))) == 1
    second = run_eval_edit(tiny_llama, load_edit(edit_dir), inputs, cache=cache, label=str(out))
    assert counter.calls == 3 * per_model  # the second run answered for the edited model only

    for report in (first.to_dict(), second.to_dict()):
        for role in ("model", "baseline"):
            for lang, theirs in on_disk[role]["languages"].items():
                ours = report[role]["languages"][lang]
                assert ours["verdicts"] == theirs["verdicts"], (role, lang)
                for key in ("asr", "harmless_refusal", "harmless_accuracy"):
                    assert ours[key] == theirs[key], (role, lang, key)
                if theirs["kl"] is not None:
                    # same weights, same batches: only the order of float32 sums may differ
                    assert ours["kl"] == pytest.approx(theirs["kl"], rel=1e-4, abs=1e-7)
    answers = {(s.role, s.prompt_set, s.lang, s.id): (s.response, s.verdict) for s in first.samples}
    assert answers == {
        (s.role, s.prompt_set, s.lang, s.id): (s.response, s.verdict)
        for s in on_disk_report.samples
    }
    assert any(
        language["kl"] for language in first.to_dict()["model"]["languages"].values()
    )  # the edit changes the model, so the comparison is not between two copies of the base


def test_the_cache_key_covers_the_generation_settings(
    tiny_llama: Path,
    edited: tuple[Path, Path],
    prompt_files: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    one_thread: None,
) -> None:
    sets = _sets(prompt_files)
    cache = tmp_path / "cache"
    edit = load_edit(edited[0])
    options: dict[str, Any] = dict(langs=["en", "es"], batch_size=4, dtype="float32", **sets)
    run_eval_edit(tiny_llama, edit, EvalInputs(max_new_tokens=4, **options), cache=cache)
    counter = GenerateCounter(monkeypatch)
    run_eval_edit(tiny_llama, edit, EvalInputs(max_new_tokens=5, **options), cache=cache)
    assert counter.calls % 2 == 0 and counter.calls > 0  # base answered again: other settings
    assert len(list(cache.glob("*.json"))) == 2
    # a damaged cache file is ignored and rewritten, never trusted
    for path in cache.glob("*.json"):
        path.write_text("{not json", encoding="utf-8")
    calls = counter.calls
    run_eval_edit(tiny_llama, edit, EvalInputs(max_new_tokens=5, **options), cache=cache)
    assert counter.calls - calls == calls  # both models answered again, as in the run before
