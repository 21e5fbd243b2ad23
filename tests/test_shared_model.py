"""One model load per `swe align` run: probe, select and the in-memory eval share the base
(models.SharedModel). Probe records the same activations and moments with the shared model as
with its own load, each stage gets the weights its own load would have given (also when probe's
checkpoint dtype and eval's float32 differ), and one `swe align --eval` reads the weights once."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import probe_workspace
from safetensors.torch import load_file
from test_align import align_args
from test_cli import run_cli

from swe_cli.io.checkpoint import resolve_model
from swe_cli.models import SharedModel, load_model
from swe_cli.workspace import Workspace


def _tensors(workspace: Path) -> dict[str, dict[str, torch.Tensor]]:
    files = sorted((workspace / "acts").rglob("*.safetensors"))
    files += sorted((workspace / "stats").glob("*.safetensors"))
    assert files
    return {str(path.relative_to(workspace)): load_file(path) for path in files}


def test_probe_with_the_shared_model_records_what_its_own_load_records(
    tmp_path: Path, tiny_llama: Path, prompt_files: dict[str, Path], one_thread: None
) -> None:
    own = probe_workspace(tmp_path / "own", tiny_llama, prompt_files)
    shared = SharedModel(resolve_model(str(tiny_llama)).path)
    passed = probe_workspace(tmp_path / "shared", tiny_llama, prompt_files, shared=shared)
    assert shared.loads == 1
    assert own.counts == passed.counts and own.stats_layers == passed.stats_layers  # type: ignore[attr-defined]
    ours, theirs = _tensors(tmp_path / "shared"), _tensors(tmp_path / "own")
    assert ours.keys() == theirs.keys()
    for name, tensors in theirs.items():
        for key, expected in tensors.items():
            got = ours[name][key]
            assert got.dtype == expected.dtype and got.shape == expected.shape, (name, key)
            if not expected.is_floating_point():
                assert torch.equal(got, expected), (name, key)
                continue
            # the same weights and batches: only the order of float32 sums may differ, bounded by
            # a few units of float32 rounding on the largest magnitude of the tensor
            scale = float(expected.abs().max()) or 1.0
            assert float((got - expected).abs().max()) <= 64 * 2**-24 * scale, (name, key)
    # the shared copy was handed over unchanged: the next stage gets the base
    model, _ = shared.get(float32_on_cpu=False)
    base, _ = load_model(tiny_llama, float32_on_cpu=False)
    for (name, value), (_, expected) in zip(
        model.state_dict().items(), base.state_dict().items(), strict=True
    ):
        assert torch.equal(value, expected), name


@pytest.fixture(scope="module")
def bfloat16_llama(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> Path:
    """The tiny llama saved in bfloat16: probe reads it as bfloat16 on the CPU, eval as float32."""
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("bf16") / "llama"
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    model.to(torch.bfloat16).save_pretrained(folder)
    for path in tiny_llama.iterdir():
        if path.suffix != ".safetensors" and path.name not in {
            "config.json",
            "model.safetensors.index.json",
        }:
            shutil.copy(path, folder / path.name)
    return folder


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


def test_each_stage_gets_the_dtype_its_own_load_gives_from_one_load(bfloat16_llama: Path) -> None:
    shared = SharedModel(resolve_model(str(bfloat16_llama)).path)
    probe_model, _ = shared.get(float32_on_cpu=False)  # probe: the checkpoint's own dtype
    assert probe_model.dtype == torch.bfloat16
    probe_own, _ = load_model(bfloat16_llama, float32_on_cpu=False)
    for name, value in _weights(probe_own).items():
        assert _weights(probe_model)[name].dtype == value.dtype, name
    eval_model, _ = shared.get()  # eval: float32 on the CPU
    assert eval_model is probe_model and shared.loads == 1
    eval_own, _ = load_model(bfloat16_llama)
    ours, theirs = _weights(eval_model), _weights(eval_own)
    assert ours.keys() == theirs.keys()
    for name, value in theirs.items():
        assert ours[name].dtype == value.dtype == torch.float32, name
        assert torch.equal(ours[name], value), name  # bfloat16 -> float32 is exact


def test_a_half_precision_buffer_is_loaded_again_not_cast(bfloat16_llama: Path) -> None:
    """A buffer computed at load time in half precision may be rounded where a float32 load
    computes it exactly: casting it would hand eval other numbers than its own load."""
    shared = SharedModel(resolve_model(str(bfloat16_llama)).path)
    model, _ = shared.get(float32_on_cpu=False)
    model.register_buffer("scale", torch.tensor(0.1, dtype=torch.bfloat16), persistent=False)
    fresh, _ = shared.get()
    assert fresh is not model and shared.loads == 2
    assert fresh.dtype == torch.float32 and not hasattr(fresh, "scale")


def test_load_model_serves_the_shared_copy_only_for_the_same_request(tiny_llama: Path) -> None:
    """select loads its model itself: within shared.serving() that load is the shared copy."""
    shared = SharedModel(resolve_model(str(tiny_llama)).path)
    with shared.serving():
        first, _ = load_model(tiny_llama, device="cpu", dtype="auto")
        again, _ = load_model(str(tiny_llama) + "/", device="cpu", dtype="auto")
        other, _ = load_model(tiny_llama, device="cpu", dtype="bfloat16")
    outside, _ = load_model(tiny_llama)
    assert first is again and shared.loads == 1
    assert other is not first and other.dtype == torch.bfloat16
    assert outside is not first


def test_align_eval_reads_the_base_weights_once(
    tmp_path: Path,
    tiny_llama: Path,
    prompt_files: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    from transformers import AutoModelForCausalLM

    loads: list[str] = []
    original = AutoModelForCausalLM.from_pretrained.__func__  # type: ignore[attr-defined]

    def counting(cls: type, path: object, *args: object, **kwargs: object) -> object:
        loads.append(str(path))
        return original(cls, path, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(counting))
    from swe_cli import report_files
    from swe_cli.stages import base_cache

    # a cache of this test's own: the first run measures the base, the second reads it
    monkeypatch.setattr(base_cache, "default_cache_dir", lambda: tmp_path / "base-eval")

    reports: list[Path] = []
    write_report = report_files.write_report

    def counting_reports(report: object, directory: Path) -> object:
        reports.append(directory)
        return write_report(report, directory)  # type: ignore[arg-type]

    monkeypatch.setattr(report_files, "write_report", counting_reports)
    output, workspace = tmp_path / "out", tmp_path / "ws"
    args = [*align_args(tiny_llama, prompt_files, output, workspace), "--method", "residual"]
    args += ["--eval", "--no-gate", "--set", "eval.max_new_tokens=2", "--json"]
    code, out, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    assert loads == [str(tiny_llama)]  # probe and eval: one load
    assert len(reports) == 1  # the eval report (and its chart) written once, into the workspace
    summary = json.loads(out)
    assert summary["model_loads"] == 1
    # where the time went, per step, in --json and in the workspace manifest
    probe_steps = summary["steps"]["probe"]["seconds"]
    assert set(probe_steps) == {"load", "activations", "hrl_check", "own_answers", "moments"}
    eval_steps = summary["steps"]["eval"]
    assert set(eval_steps["seconds"]) == {"prepare", "load", "base", "kl", "edited", "report"}
    assert eval_steps["cached"] == []  # a fresh cache: the base was measured
    assert all(value >= 0 for value in [*probe_steps.values(), *eval_steps["seconds"].values()])
    recorded = Workspace(workspace).manifest()
    assert recorded.stage("probe").outputs["seconds"].keys() == probe_steps.keys()  # type: ignore[union-attr]
    assert recorded.stage("eval").outputs["seconds"].keys() == eval_steps["seconds"].keys()  # type: ignore[union-attr]
    # a second run on the same base reads the base's eval from the cache, still with one load
    loads.clear()
    args[args.index(str(output))] = str(tmp_path / "out2")
    code, out, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    assert loads == [str(tiny_llama)]
    assert json.loads(out)["steps"]["eval"]["cached"] == ["base"]


def test_the_timings_table_lists_each_stage_with_its_steps() -> None:
    from rich.console import Console

    from swe_cli.report import timings_table

    steps = {
        "probe": {"seconds": {"load": 1.0, "moments": 2.5}},
        "eval": {"seconds": {"base": 0.01, "edited": 3.0}, "cached": ["base"]},
    }
    table = timings_table({"probe": 4.0, "solve": 1.0, "eval": 3.5}, Path("out"), steps)
    console = Console(width=60, record=True)
    console.print(table)
    lines = [line.strip("│ ") for line in console.export_text().splitlines()]
    cells = [" ".join(line.replace("│", " ").split()) for line in lines]
    assert cells.index("probe 4.0") < cells.index("load 1.0") < cells.index("moments 2.5")
    assert cells.index("moments 2.5") < cells.index("solve 1.0") < cells.index("eval 3.5")
    assert cells.index("base (cached) 0.0") > cells.index("eval 3.5")
    assert "total 8.5" in cells  # the stages' sum: steps are not counted twice


def test_an_edit_not_applicable_in_memory_is_evaluated_on_disk_without_the_shared_copy(
    tmp_path: Path,
    tiny_llama: Path,
    prompt_files: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    """The fallback loads the base and the edited checkpoint itself: the shared copy is dropped
    first (three models in memory otherwise) and the eval still runs and ships."""
    from swe_cli.measure import EditNotInMemory
    from swe_cli.stages import evaluate

    released: list[bool] = []
    release = SharedModel.release

    def refusing(*args: object, shared: SharedModel | None = None, **kwargs: object) -> None:
        assert shared is not None and shared.loads == 1  # probe's load, handed to eval
        raise EditNotInMemory("the test's model keeps its weights elsewhere")

    def recording(self: SharedModel) -> None:
        released.append(self._loaded is not None)
        release(self)

    monkeypatch.setattr(evaluate, "run_eval_edit", refusing)
    monkeypatch.setattr(SharedModel, "release", recording)
    output, workspace = tmp_path / "out", tmp_path / "ws"
    args = [*align_args(tiny_llama, prompt_files, output, workspace), "--method", "residual"]
    args += ["--eval", "--no-gate", "--set", "eval.max_new_tokens=2", "--json"]
    code, out, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    # dropped while still loaded, before the on-disk eval; align's own release at its end then
    # finds nothing left to drop
    assert released == [True, False]
    assert (output / "config.json").is_file() and json.loads(out)["eval"]["model"]["languages"]
