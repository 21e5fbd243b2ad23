"""Utility on the model organism (slow): its own short-answer and multiple-choice sets
(swe_cli/organism/utility_sets.py; the built-in 10-language sets mean nothing to the toy) are
answered almost perfectly by the base model, and a deliberately broken edit (a quarter of the
down_proj rows of every layer replaced by random values) lowers the accuracy."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow


def _broken_copy(model_dir: Path, target: Path, seed: int = 0) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.model.layers:
            weight = layer.mlp.down_proj.weight
            rows = torch.randperm(weight.shape[0], generator=generator)[: weight.shape[0] // 4]
            noise = torch.randn(len(rows), weight.shape[1], generator=generator)
            weight[rows] = noise * weight.std() * 3
    shutil.rmtree(target, ignore_errors=True)
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(target)
    return target


def test_broken_edit_lowers_organism_utility(organism: Any, tmp_path: Path) -> None:
    from swe_cli.accuracy import NONE, load_utility_sets
    from swe_cli.organism.utility_sets import write_utility_sets
    from swe_cli.prompts import load_prompt_set
    from swe_cli.stages.evaluate import EvalInputs, run_eval

    langs = [organism.hrl, *organism.lrls]
    short_answers, choices = write_utility_sets(tmp_path / "utility")
    sets = load_utility_sets(langs, short_answers=short_answers, choices=choices, probes=NONE)
    broken = _broken_copy(organism.model_dir, tmp_path / "broken")
    report = run_eval(
        broken,
        EvalInputs(
            harmful=load_prompt_set(organism.harmful, "harmful", langs, max_prompts=4),
            utility=sets,
            langs=langs,
            split="all",
            max_new_tokens=24,
            batch_size=32,
        ),
        baseline=organism.model_dir,
    )
    assert report.baseline is not None
    base, edited = report.baseline.by_lang(), report.model.by_lang()
    for lang in langs:
        assert base[lang].utility_n == 60 and base[lang].choice_n == 60
        assert base[lang].utility_accuracy >= 0.9, lang  # type: ignore[operator]
        assert base[lang].choice_accuracy >= 0.9, lang  # type: ignore[operator]
        assert edited[lang].utility_accuracy < base[lang].utility_accuracy, lang  # type: ignore[operator]
    base_mean, edited_mean = report.baseline.mean(), report.model.mean()
    assert edited_mean["utility_accuracy"] <= base_mean["utility_accuracy"] - 0.15  # type: ignore[operator]
    assert edited_mean["choice_accuracy"] < base_mean["choice_accuracy"]  # type: ignore[operator]
