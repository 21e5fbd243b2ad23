"""bench/hrl_moment.py: the moment's prompts, the moment itself, the patched C0, and a run on a
probed workspace."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from common import load_bench


def test_the_moment_never_reads_a_held_out_or_validation_id(
    probed_workspace: Path, prompt_files: dict[str, Path]
) -> None:
    from swe_cli.methods.base import context_from
    from swe_cli.prompts import HELDOUT, split_of
    from swe_cli.stages.tune import split_ids
    from swe_cli.workspace import Workspace

    bench = load_bench("hrl_moment")
    space = Workspace(probed_workspace)
    layer = space.manifest().probed_layers[1]
    args = bench.parse_args(
        ["-w", str(probed_workspace), "--harmful", str(prompt_files["harmful"])]
        + ["--layer", str(layer), "--specs", f"residual@{layer}", "--json", "x.json"]
    )
    context = context_from(space, space.manifest())
    prompts = bench.moment_prompts(space, context, args)
    validation = split_ids(context, [layer], 0.5).validation
    assert prompts, "the fixture has fit-side HRL prompts outside validation"
    for prompt in prompts:
        assert prompt.lang == "en" and prompt.id not in validation
        assert split_of(prompt.id, 0.5) != HELDOUT
    # a fraction the workspace was not probed with is refused before any model is loaded
    args.heldout_fraction = 0.9
    with pytest.raises(SystemExit) as stopped:
        bench.moment_prompts(space, context, args)
    assert stopped.value.code == 2


def test_patched_moment_adds_g_times_the_hrl_moment_at_its_layer_only(
    probed_workspace: Path,
) -> None:
    import swe_cli.methods.residual as residual
    from swe_cli.workspace import Workspace, load_moment

    bench = load_bench("hrl_moment")
    space = Workspace(probed_workspace)
    layers = space.manifest().probed_layers
    C0 = load_moment(space, layers[1]).to(torch.float64)
    extra = torch.eye(C0.shape[0], dtype=torch.float64)
    weight = {"g": 0.0}
    with bench.patch_moment(layers[1], extra, weight):
        assert torch.equal(residual.load_moment(space, layers[1]).to(torch.float64), C0)
        weight["g"] = 3.0
        patched = residual.load_moment(space, layers[1]).to(torch.float64)
        tolerance = 1e-5 * float(C0.abs().max() + 3)  # one float32 rounding of C0 + 3 I
        assert torch.allclose(patched, C0 + 3 * extra, atol=tolerance)
        other = load_moment(space, layers[0])
        assert torch.equal(residual.load_moment(space, layers[0]), other)
    # afterwards the method reads the workspace's moment again
    assert residual.load_moment is load_moment


def test_a_run_gives_asr_rows_and_a_positive_semidefinite_moment(
    probed_workspace: Path, prompt_files: dict[str, Path], tmp_path: Path, one_thread: None
) -> None:
    from swe_cli.workspace import Workspace

    bench = load_bench("hrl_moment")
    layer = Workspace(probed_workspace).manifest().probed_layers[1]
    out = tmp_path / "hrl.json"
    code = bench.main(
        ["-w", str(probed_workspace), "--harmful", str(prompt_files["harmful"])]
        + ["--layer", str(layer), "--specs", f"residual@{layer} rank=4 keep_hrl=true"]
        + ["--weights", "0,1000", "--eval-tokens", "4", "--answer-tokens", "4"]
        + ["--max-prompts", "4", "--json", str(out)]
    )
    assert code == 0
    import swe_cli.methods.residual as residual
    from swe_cli.workspace import load_moment

    assert residual.load_moment is load_moment  # the patch ends with the run
    summary = json.loads(out.read_text(encoding="utf-8"))
    assert summary["moment_prompts"] > 0
    rows = summary["rows"]
    assert [(row["spec"], row["g"]) for row in rows] == [
        ("base", 0.0),
        (f"residual@{layer} rank=4 keep_hrl=true", 0.0),
        (f"residual@{layer} rank=4 keep_hrl=true", 1000.0),
    ]
    for row in rows:
        assert all(0 <= value <= 1 and math.isfinite(value) for value in row["asr"].values())
    for row in rows[1:]:
        assert all(flip["base"] != flip["edited"] for flip in row["hrl_flips"])


def test_the_moment_is_the_mean_outer_product_over_every_token(
    tiny_llama: Path, one_thread: None
) -> None:
    from swe_cli.architectures import adapter_for
    from swe_cli.models import load_model

    bench = load_bench("hrl_moment")
    model, tokenizer = load_model(tiny_llama, device="cpu", dtype="float32")
    texts = ["hello world", "a b c d"]
    moment = bench.hrl_moment(model, tokenizer, adapter_for(model.config.model_type), 1, texts)
    captured = []
    down = model.model.layers[1].mlp.down_proj
    handle = down.register_forward_pre_hook(lambda _m, a: captured.append(a[0][0]))
    with torch.no_grad():
        for text in texts:
            model(**tokenizer(text, return_tensors="pt", add_special_tokens=False))
    handle.remove()
    rows = torch.cat(captured).to(torch.float64)
    expected = rows.T @ rows / rows.shape[0]
    assert torch.allclose(moment, expected, rtol=1e-10, atol=1e-12)
    assert torch.linalg.eigvalsh(moment).min() > -1e-9 * float(moment.abs().max())
