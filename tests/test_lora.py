"""The edit as a PEFT LoRA adapter: exact factors, PEFT's file layout, base + adapter (forward and
merge_and_unload) equal to the patched checkpoint, verification, refusals. Tiny Llama, Qwen2 and
Gemma2 checkpoints here; the organism with a solved edit at the end (slow)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from common import make_tiny_checkpoint

pytest.importorskip("peft")

INPUT_IDS = torch.tensor(
    [[1, 5, 9, 13, 20, 30, 40, 50, 7, 3], [1, 8, 16, 24, 32, 41, 49, 2, 6, 11]]
)


def low_rank(rows: int, cols: int, rank: int, scale: float, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    left = torch.randn(rows, rank, generator=generator)
    return left @ torch.randn(rank, cols, generator=generator) * scale


def mixed_edit(model_dir: Path) -> Any:
    """An edit over several layers and projections, as the solvers write them: paper gate rows,
    up rows, a dense residual down_proj (every row), sparse down_proj columns (safety neurons)."""
    from swe_cli.edit import Edit, tensor_edit_from_base

    hidden, intermediate = 32, 48
    items = [
        tensor_edit_from_base(
            model_dir,
            "model.layers.0.mlp.gate_proj.weight",
            [3, 7, 11, 40],
            low_rank(4, hidden, 2, 0.05, 1),
        ),
        tensor_edit_from_base(
            model_dir, "model.layers.0.mlp.up_proj.weight", [5, 6], low_rank(2, hidden, 1, 0.05, 2)
        ),
        tensor_edit_from_base(
            model_dir,
            "model.layers.1.mlp.down_proj.weight",
            list(range(hidden)),
            low_rank(hidden, intermediate, 4, 0.01, 3),
        ),
        tensor_edit_from_base(
            model_dir,
            "model.layers.2.mlp.down_proj.weight",
            list(range(hidden)),
            low_rank(hidden, 5, 3, 0.02, 4),
            cols=[1, 4, 9, 20, 33],
        ),
    ]
    return Edit(tuple(items), {"base_model": str(model_dir), "method": "test"})


def export(edit: Any, base: Path, output: Path, **options: Any) -> Any:
    from swe_cli.stages.export import export_lora

    return export_lora(
        edit,
        base,
        output,
        provenance={"base_model": {"id": str(base)}},
        base_model_name_or_path=str(base),
        **options,
    )


def patched(edit: Any, base: Path, output: Path) -> Path:
    from swe_cli.stages.apply import apply_edit

    apply_edit(edit, base, output, provenance={}, device="cpu")
    return output


def load(model_dir: Path, dtype: torch.dtype) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype).eval()


def logits(model: Any) -> torch.Tensor:
    with torch.no_grad():
        return model(INPUT_IDS).logits.float()


@pytest.fixture(scope="module")
def bf16_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bf16")
    return make_tiny_checkpoint(root / "llama-bf16", "llama", dtype=torch.bfloat16)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma2"])
def test_adapter_on_base_equals_patched_checkpoint(
    family: str, tiny_checkpoint: Callable[[str], Path], tmp_path: Path
) -> None:
    from swe_cli.stages.export import load_with_adapter

    base = tiny_checkpoint(family)
    edit = mixed_edit(base)
    result = export(edit, base, tmp_path / "adapter")
    reference = load(patched(edit, base, tmp_path / "patched"), torch.float32)
    assert result.rank == 4 and result.max_reconstruction_error <= 1e-6

    with_adapter = load_with_adapter(load(base, torch.float32), tmp_path / "adapter")
    expected = logits(reference)
    assert (logits(load(base, torch.float32)) - expected).abs().max() > 1e-3  # the edit matters
    assert torch.allclose(logits(with_adapter), expected, rtol=0, atol=1e-5)

    merged = with_adapter.merge_and_unload().state_dict()
    edited = {item.name for item in edit.tensors}
    for name, tensor in reference.state_dict().items():
        if name in edited:
            assert torch.allclose(merged[name], tensor, rtol=0, atol=1e-7), name
        else:
            assert torch.equal(merged[name], tensor), name


def test_bf16_base_within_its_rounding(bf16_llama: Path, tmp_path: Path) -> None:
    from swe_cli.stages.export import load_with_adapter

    edit = mixed_edit(bf16_llama)
    result = export(edit, bf16_llama, tmp_path / "adapter")
    reference = load(patched(edit, bf16_llama, tmp_path / "patched"), torch.bfloat16)
    assert all(module["within_rounding"] for module in result.modules)

    with_adapter = load_with_adapter(load(bf16_llama, torch.bfloat16), tmp_path / "adapter")
    expected = logits(reference)
    bf16_step = 2.0**-8 * float(expected.abs().max())
    assert float((logits(with_adapter) - expected).abs().max()) <= 4 * bf16_step

    merged = with_adapter.merge_and_unload().state_dict()
    for name, tensor in reference.state_dict().items():
        # PEFT adds the bf16-cast delta to the bf16 base: one more rounding than `swe apply`
        ulp = torch.finfo(torch.bfloat16).eps * tensor.float().abs().clamp_min(1e-30)
        assert ((merged[name].float() - tensor.float()).abs() <= ulp).all(), name


def test_adapter_folder_is_standard_peft(tiny_llama: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    edit = mixed_edit(tiny_llama)
    result = export(edit, tiny_llama, tmp_path / "adapter")
    folder = tmp_path / "adapter"
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "swe_edit",  # the edit it was exported from, so it verifies without a workspace
        "swe_edit.json",
    ]
    from swe_cli.io.files import current_umask

    expected_mode = 0o666 & ~current_umask()  # readable by a serving process, as cp would make it
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert all(p.stat().st_mode & 0o777 == expected_mode for p in files)
    config = json.loads((folder / "adapter_config.json").read_text())
    ranks = {
        "model.layers.0.mlp.gate_proj": 2,
        "model.layers.0.mlp.up_proj": 1,
        "model.layers.1.mlp.down_proj": 4,
        "model.layers.2.mlp.down_proj": 3,
    }
    assert config["peft_type"] == "LORA" and config["r"] == config["lora_alpha"] == 4
    assert config["target_modules"] == sorted(ranks)
    assert (
        config["rank_pattern"]
        == config["alpha_pattern"]
        == {module: rank for module, rank in ranks.items() if rank != 4}
    )
    assert config["base_model_name_or_path"] == str(tiny_llama)
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    for module, rank in ranks.items():
        out_features, in_features = (48, 32) if "down" not in module else (32, 48)
        A = tensors[f"base_model.model.{module}.lora_A.weight"]
        B = tensors[f"base_model.model.{module}.lora_B.weight"]
        assert A.shape == (rank, in_features) and B.shape == (out_features, rank)
        assert A.dtype == B.dtype == torch.float32
    assert len(tensors) == 2 * len(ranks)
    # factors are zero outside the edited rows / columns
    gate_B = tensors["base_model.model.model.layers.0.mlp.gate_proj.lora_B.weight"]
    assert gate_B.abs().sum(dim=1).nonzero().flatten().tolist() == [3, 7, 11, 40]
    sparse_A = tensors["base_model.model.model.layers.2.mlp.down_proj.lora_A.weight"]
    assert sparse_A.abs().sum(dim=0).nonzero().flatten().tolist() == [1, 4, 9, 20, 33]

    provenance = json.loads((folder / "swe_edit.json").read_text())
    assert provenance["artifact"] == "lora" and provenance["lora"]["rank"] == 4
    assert provenance["lora"]["max_reconstruction_error"] == result.max_reconstruction_error
    assert provenance["edit"]["sha256"] == result.edit_sha256
    assert result.adapter_bytes == (folder / "adapter_model.safetensors").stat().st_size
    card = (folder / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: peft" in card and "Rank: 4" in card


def test_verify_accepts_the_adapter_and_finds_tampering(tiny_llama: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from swe_cli.edit import Edit
    from swe_cli.stages.verify import verify_adapter

    edit = mixed_edit(tiny_llama)
    folder = tmp_path / "adapter"
    export(edit, tiny_llama, folder)
    report = verify_adapter(folder, tiny_llama, edit)
    assert report.ok and report.modules_checked == 4 and report.rank == 4, report.problems
    assert verify_adapter(folder, tiny_llama).ok  # without an edit: structure + hashes

    other = Edit(edit.tensors[:3], edit.metadata)
    problems = verify_adapter(folder, tiny_llama, other).problems
    assert any("not the one the adapter was exported from" in p for p in problems)
    assert any("the edit does not change it" in p for p in problems)

    weights = folder / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    key = "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"
    tensors[key] = tensors[key] * 1.01
    save_file(tensors, str(weights))
    problems = verify_adapter(folder, tiny_llama, edit).problems
    assert any("differs from the one swe wrote" in p for p in problems)
    assert any("more than the F32 rounding" in p for p in problems)


def test_verify_refuses_another_base(tiny_llama: Path, tmp_path: Path) -> None:
    from swe_cli.stages.verify import verify_adapter

    other = make_tiny_checkpoint(tmp_path / "other", "llama", seed=1)
    folder = tmp_path / "adapter"
    export(mixed_edit(tiny_llama), tiny_llama, folder)
    problems = verify_adapter(folder, other).problems
    assert len(problems) == 4 and all("another base model" in p for p in problems)


def test_over_rank_refused_and_nothing_written(tiny_llama: Path, tmp_path: Path) -> None:
    from swe_cli.edit import Edit, tensor_edit_from_base
    from swe_cli.errors import LoraError

    full = torch.randn(32, 48, generator=torch.Generator().manual_seed(5)) * 0.01
    item = tensor_edit_from_base(tiny_llama, "model.layers.1.mlp.down_proj.weight", range(32), full)
    with pytest.raises(LoraError, match="rank 32, above the LoRA rank limit 16"):
        export(Edit((item,)), tiny_llama, tmp_path / "adapter", max_rank=16)
    assert list(tmp_path.iterdir()) == []
    assert export(Edit((item,)), tiny_llama, tmp_path / "adapter", max_rank=32).rank == 32


def test_existing_output_needs_force(tiny_llama: Path, tmp_path: Path) -> None:
    from swe_cli.errors import CheckpointError

    edit, folder = mixed_edit(tiny_llama), tmp_path / "adapter"
    export(edit, tiny_llama, folder)
    with pytest.raises(CheckpointError, match="already exists"):
        export(edit, tiny_llama, folder)
    export(edit, tiny_llama, folder, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_export_refuses_another_base(tiny_llama: Path, tmp_path: Path) -> None:
    from swe_cli.errors import EditError

    other = make_tiny_checkpoint(tmp_path / "other", "llama", seed=1)
    with pytest.raises(EditError, match="do not match the edit's base"):
        export(mixed_edit(tiny_llama), other, tmp_path / "adapter")


def test_missing_peft_is_one_clear_error(
    monkeypatch: pytest.MonkeyPatch, tiny_llama: Path, tmp_path: Path
) -> None:
    import sys

    from swe_cli.errors import LoraError
    from swe_cli.stages.export import load_with_adapter

    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(LoraError) as raised:
        load_with_adapter(object(), tmp_path)
    assert 'pip install -e ".[lora]"' in raised.value.hint


def test_numerical_rank_ignores_float32_rounding() -> None:
    from swe_cli.stages.factor import numerical_rank

    delta = low_rank(40, 30, 3, 1.0, 6).to(torch.float32)  # rank 3, rounded to float32
    singular_values = torch.linalg.svdvals(delta.double()).numpy()
    assert singular_values[3] > 0  # rounding leaves tiny singular values...
    assert numerical_rank(singular_values, (40, 30)) == 3  # ...that do not count
    assert numerical_rank(singular_values * 0, (40, 30)) == 0


# --- the organism: a solved edit, end to end (slow) ----------------------------------------------


@pytest.fixture(scope="module")
def organism_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The organism aligned with its recipe (residual down_proj edit of layers 1-3, no eval)."""
    from common import run_swe

    from swe_cli.organism import cached_organism

    organism = cached_organism(0)
    root = tmp_path_factory.mktemp("organism-lora")
    code, _ = run_swe(
        "align",
        str(organism.model_dir),
        "--langs",
        ",".join(organism.lrls),
        "-o",
        str(root / "aligned"),
        "-w",
        str(root / "ws"),
        "--harmful",
        str(organism.harmful),
        "--harmless",
        str(organism.harmless),
        "--general",
        str(organism.general),
        "--hrl",
        organism.hrl,
        "--dtype",
        "float32",
        "--quiet",
    )
    assert code == 0
    return {"organism": organism, "root": root, "ws": root / "ws", "aligned": root / "aligned"}


def organism_prompts(organism: Any) -> dict[str, torch.Tensor]:
    """Harmful prompts in every language through the organism's chat template (padded batch)."""
    import csv

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(organism.model_dir))
    tokenizer.padding_side = "left"
    with open(organism.harmful, encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))[:4]
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": row[lang]}], tokenize=False, add_generation_prompt=True
        )
        for row in rows
        for lang in (organism.hrl, *organism.lrls)
    ]
    return dict(tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False))


def assert_round_trip(
    base: Path, adapter: Path, edited: Path, batch: dict[str, Any], factor_error: float
) -> None:
    """The adapter on the base gives the edited checkpoint's logits, and merged, its weights: each
    merged weight within the factors' own error (factor_error, the largest |B A - delta| swe
    reports) plus float32 rounding of the two sums (base + delta written, base + B A merged)."""
    from swe_cli.stages.export import load_with_adapter

    reference = load(edited, torch.float32)
    with_adapter = load_with_adapter(load(base, torch.float32), adapter)
    with torch.no_grad():
        expected = reference(**batch).logits
        got = with_adapter(**batch).logits
        before = load(base, torch.float32)(**batch).logits
    assert float((before - expected).abs().max()) > 1e-2  # the edit changes the answers
    assert torch.allclose(got, expected, rtol=0, atol=1e-4), float((got - expected).abs().max())
    merged = with_adapter.merge_and_unload().state_dict()
    eps = torch.finfo(torch.float32).eps
    for name, tensor in reference.state_dict().items():
        tolerance = 2 * (factor_error + eps * float(tensor.abs().max()))
        difference = float((merged[name] - tensor).abs().max())
        assert difference <= tolerance, (name, difference, tolerance)


@pytest.mark.slow
def test_organism_edit_round_trips_as_adapter(organism_run: dict[str, Any]) -> None:
    from common import run_swe

    organism, root, ws = organism_run["organism"], organism_run["root"], organism_run["ws"]
    # the recipe's residual edit is unrestricted: full rank (the hidden size, 128) per layer
    code, _ = run_swe("apply", "-w", str(ws), "--as-lora", "-o", str(root / "refused"))
    assert code == 1 and not (root / "refused").exists()
    adapter = root / "adapter"
    code, out = run_swe(
        "apply", "-w", str(ws), "--as-lora", "--max-lora-rank", "128", "-o", str(adapter), "--json"
    )
    assert code == 0
    result = json.loads(out)
    assert result["rank"] == 128 and len(result["modules"]) == 3
    assert all(module["within_rounding"] for module in result["modules"])
    # 3 x 128 x (128 + 256) float32 values: about a fifth of the 3.3 MB checkpoint
    assert result["adapter_bytes"] < 600_000
    code, out = run_swe("verify", str(adapter), "--base", str(organism.model_dir), "--json")
    assert code == 0 and json.loads(out)["edit_checked"]
    batch = organism_prompts(organism)
    worst = max(module["factor_error"] for module in result["modules"])
    assert_round_trip(organism.model_dir, adapter, organism_run["aligned"], batch, worst)


@pytest.mark.slow
def test_organism_rank_capped_edit_fits_the_default_limit(
    organism_run: dict[str, Any], tmp_path: Path
) -> None:
    import shutil

    from common import run_swe

    from swe_cli.stages.apply import apply_workspace
    from swe_cli.stages.export import export_workspace_lora
    from swe_cli.workspace import Workspace

    organism = organism_run["organism"]
    shutil.copytree(organism_run["ws"], tmp_path / "ws")
    code, _ = run_swe(
        "solve", "-w", str(tmp_path / "ws"), "--method", "residual", "--layers", "1,2,3",
        "--rank", "16", "--quiet",
    )  # fmt: skip
    assert code == 0
    workspace = Workspace(tmp_path / "ws")
    result = export_workspace_lora(workspace, tmp_path / "adapter")
    assert result.rank == 16 and [m["rank"] for m in result.modules] == [16, 16, 16]
    apply_workspace(workspace, tmp_path / "edited", device="cpu")
    batch = organism_prompts(organism)
    worst = max(module["factor_error"] for module in result.modules)
    assert_round_trip(organism.model_dir, tmp_path / "adapter", tmp_path / "edited", batch, worst)


# --- the command line ------------------------------------------------------------------------------


@pytest.fixture()
def solved_workspace(
    workspace_copy: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> Path:
    from test_cli import run_cli

    for args in (["localize"], ["solve", "--method", "residual"]):
        code, _, err = run_cli([*args, "-w", str(workspace_copy), "--quiet"], monkeypatch, capsys)
        assert code == 0, err
    return workspace_copy


def test_cli_apply_as_lora_verify_and_eval(
    solved_workspace: Path,
    tiny_llama: Path,
    prompt_files: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    from test_cli import assert_user_error, run_cli

    def swe(*args: str) -> Any:
        return run_cli([str(arg) for arg in args], monkeypatch, capsys)

    ws, adapter, patched_dir = str(solved_workspace), tmp_path / "adapter", tmp_path / "patched"
    code, out, err = swe("apply", "-w", ws, "--as-lora", "-o", adapter, "--json")
    assert code == 0, err
    exported = json.loads(out)
    assert 1 <= exported["rank"] <= 16 and exported["adapter_bytes"] > 0
    assert {m["module"] for m in exported["modules"]} == {
        "model.layers.1.mlp.down_proj",
        "model.layers.2.mlp.down_proj",
    }
    assert swe("apply", "-w", ws, "-o", patched_dir, "--quiet")[0] == 0

    code, out, err = swe("verify", adapter, "--base", tiny_llama, "--json")
    assert code == 0, err
    verified = json.loads(out)
    assert verified["ok"] and verified["kind"] == "lora" and verified["edit_checked"]

    # the edit inside the patched checkpoint gives the same adapter
    again = tmp_path / "again"
    code, _, err = swe(
        "apply", "--edit", patched_dir, "--base", tiny_llama, "--as-lora", "-o", again
    )
    assert code == 0, err
    assert (again / "adapter_model.safetensors").read_bytes() == (
        adapter / "adapter_model.safetensors"
    ).read_bytes()

    eval_args = ["--langs", "es,sw", "--harmful", prompt_files["harmful"], "--split", "all"]
    eval_args += ["--max-prompts", "3", "--max-new-tokens", "4", "--json", "--quiet"]
    eval_args += ["--utility", "none", "--mc", "none", "--over-refusal", "none"]
    code, out, err = swe(
        "eval", tiny_llama, "--adapter", adapter, *eval_args, "-o", tmp_path / "e1"
    )
    assert code == 0, err
    with_adapter = json.loads(out)
    code, out, err = swe("eval", patched_dir, *eval_args, "-o", tmp_path / "e2")
    assert code == 0, err

    def responses(folder: Path) -> list[str]:
        lines = (folder / "generations.jsonl").read_text(encoding="utf-8").splitlines()
        return [json.loads(line)["response"] for line in lines]

    assert len(responses(tmp_path / "e1")) == 9  # 3 prompts in en, es, sw
    assert responses(tmp_path / "e1") == responses(tmp_path / "e2")
    assert with_adapter["model"]["languages"] == json.loads(out)["model"]["languages"]
    assert with_adapter["model"]["name"].endswith(f" + {adapter}")

    assert_user_error(swe("apply", "-w", ws, "--as-lora", "-o", adapter), "already exists")
    assert_user_error(
        swe("apply", "-w", ws, "--as-lora", "--max-lora-rank", "1", "-o", tmp_path / "r1"),
        "above the LoRA rank limit 1",
    )
    monkeypatch.setitem(sys.modules, "peft", None)
    result = swe("eval", tiny_llama, "--adapter", adapter, *eval_args)
    assert_user_error(result, "peft is not installed")
    assert 'pip install -e ".[lora]"' in result[2]


def test_cli_verify_finds_a_changed_adapter(
    solved_workspace: Path,
    tiny_llama: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    from safetensors.torch import load_file, save_file
    from test_cli import run_cli

    adapter = tmp_path / "adapter"
    code, _, err = run_cli(
        ["apply", "-w", str(solved_workspace), "--as-lora", "-o", str(adapter), "--quiet"],
        monkeypatch,
        capsys,
    )
    assert code == 0, err
    weights = adapter / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    key = next(key for key in tensors if key.endswith("lora_A.weight"))
    tensors[key] = tensors[key] * 1.001
    save_file(tensors, str(weights))
    code, out, err = run_cli(
        ["verify", str(adapter), "--base", str(tiny_llama), "-w", str(solved_workspace), "--json"],
        monkeypatch,
        capsys,
    )
    assert code == 1
    report = json.loads(out)
    assert not report["ok"] and any("rounding" in problem for problem in report["problems"])
    assert "mismatch:" in err
