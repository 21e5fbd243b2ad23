"""The export stage: the edit as a standard PEFT LoRA adapter, so a server that holds one base model (PEFT, vLLM
multi-LoRA, TGI) can serve the safety patch without a second copy of the weights.

Every edited weight W (out x in) changes by a delta that is zero outside the edited rows (and
columns): D = E_rows * delta * E_cols^T. Its thin SVD, computed on the small delta block in
float64 and truncated at the numerical rank, gives an exact factorisation D = B A with
B = U S^(1/2) (out x r, zero outside the edited rows) and A = S^(1/2) V^T (r x in, zero outside
the edited columns), computed in stages/factor.py. The singular values are split evenly between the factors so both have the
same scale (safe to cast to half precision, and what LoRA training would converge to). Each
module gets its own rank (PEFT rank_pattern) and lora_alpha = rank, so PEFT's scaling is 1.
The folder also holds a card (README.md) and swe_edit.json: rank, largest reconstruction error
(base + B A, cast to the base dtype, against the rows `swe apply` writes) and the hashes that
`swe verify` checks (stages/verify.py). Exporting reads only the edited rows of the base; peft is
needed only to load the adapter (`require_peft`)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from swe_cli import DISTRIBUTION
from swe_cli.card import (
    ModelCard,
    base_link,
    evaluation_section,
    license_section,
    organism_note,
    summary,
)
from swe_cli.edit import EDIT_FILE, Edit, edit_sha256, load_edit, save_edit, solved_edit
from swe_cli.errors import LoraError
from swe_cli.hub import (
    CARD_FILE,
    EDIT_DIR,
    PROVENANCE_FILE,
    artifact_provenance,
    complete_provenance,
    public_name,
    public_source,
    workspace_provenance,
    write_provenance,
)
from swe_cli.io.checkpoint import ResolvedModel, fingerprint
from swe_cli.io.files import (
    atomic_write_text,
    current_umask,
    move_into_place,
    sync_tree,
    temporary_folder,
)
from swe_cli.stages.apply import locate_edit
from swe_cli.stages.factor import DEFAULT_MAX_RANK, LoraFactor, factor_edit
from swe_cli.stages.output import check_output
from swe_cli.workspace import Workspace

ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_HINT = 'install the LoRA extra: pip install -e ".[lora]" (or pip install "peft>=0.11")'
PEFT_PREFIX = "base_model.model."  # PEFT's key prefix for a model wrapped by PeftModel
ARTIFACT = "lora"
_MODULE_KEY = re.compile(
    r"^" + re.escape(PEFT_PREFIX) + r"(?P<module>.+)\.lora_(?P<factor>[AB])\.weight$"
)


# -- factorisation --------------------------------------------------------------------------------


# -- the adapter folder ---------------------------------------------------------------------------
def adapter_config(factors: tuple[LoraFactor, ...], base_model_name_or_path: str) -> dict[str, Any]:
    """adapter_config.json: full module names as target_modules, r = the largest rank, and per
    module rank (and alpha = rank, so scaling is 1) where ranks differ. Only keys that every
    PEFT release since 0.11 accepts."""
    return config_for_ranks({f.module: f.rank for f in factors}, base_model_name_or_path)


def config_for_ranks(ranks: dict[str, int], base_model_name_or_path: str) -> dict[str, Any]:
    """The adapter_config.json swe writes for modules of these ranks (verify compares with it)."""
    rank = max(ranks.values())
    pattern = {module: value for module, value in sorted(ranks.items()) if value != rank}
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "revision": None,
        "inference_mode": True,
        "r": rank,
        "lora_alpha": rank,
        "lora_dropout": 0.0,
        "target_modules": sorted(ranks),
        "rank_pattern": pattern,
        "alpha_pattern": dict(pattern),
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
    }


def adapter_tensors(factors: tuple[LoraFactor, ...]) -> dict[str, Any]:
    """adapter_model.safetensors under PEFT's key names (lora_A [r, in], lora_B [out, r])."""
    tensors: dict[str, Any] = {}
    for factor in factors:
        tensors[f"{PEFT_PREFIX}{factor.module}.lora_A.weight"] = factor.A.contiguous()
        tensors[f"{PEFT_PREFIX}{factor.module}.lora_B.weight"] = factor.B.contiguous()
    return tensors


@dataclass(frozen=True)
class LoraResult:
    """What an export wrote."""

    output: Path
    base: Path
    rank: int  # the largest per-module rank (adapter_config r)
    modules: tuple[dict[str, Any], ...]  # LoraFactor.summary() per module
    max_reconstruction_error: float
    adapter_bytes: int  # size of adapter_model.safetensors
    edit_sha256: str
    seconds: float

    def summary(self) -> dict[str, Any]:
        return {
            "output": str(self.output),
            "base": str(self.base),
            "rank": self.rank,
            "modules": list(self.modules),
            "max_reconstruction_error": self.max_reconstruction_error,
            "adapter_bytes": self.adapter_bytes,
            "edit_sha256": self.edit_sha256,
            "seconds": self.seconds,
        }


def export_lora(
    edit: Edit,
    base_dir: Path,
    output: Path,
    *,
    provenance: dict[str, Any],
    base_model_name_or_path: str,
    card: ModelCard | None = None,
    max_rank: int = DEFAULT_MAX_RANK,
    force: bool = False,
    edit_file: Path | None = None,
    protected: tuple[tuple[str, Path], ...] = (),
) -> LoraResult:
    """Write the PEFT adapter folder `output` for `edit` on `base_dir`: adapter_config.json,
    adapter_model.safetensors, swe_edit.json (provenance: `provenance` is the caller's part) and
    README.md. Written to a temporary folder beside `output` and renamed into place at the end;
    an existing `output` is replaced only with `force`, and never overlaps the base or the
    `protected` folders. `edit_file`, where the edit was read from, is recorded so `swe verify`
    can find it again."""
    from safetensors.torch import save_file

    started = time.perf_counter()
    base_dir, output = Path(base_dir), Path(output)
    check_output(output, [("base model folder", base_dir), *protected], force)
    factors = factor_edit(edit, base_dir, max_rank)
    config = adapter_config(factors, base_model_name_or_path)
    rank = int(config["r"])
    worst = max(factor.reconstruction_error for factor in factors)
    temporary = temporary_folder(output)
    try:
        weights = temporary / ADAPTER_WEIGHTS_FILE
        save_file(adapter_tensors(factors), str(weights), metadata={"format": "pt"})
        carried = save_edit(edit, temporary / EDIT_DIR)
        carried.chmod(0o666 & ~current_umask())
        weights.chmod(0o666 & ~current_umask())  # safetensors creates it 0600; follow the umask
        lora = {
            "rank": rank,
            "max_rank": max_rank,
            "lora_alpha": rank,
            "factorisation": "B = U S^1/2, A = S^1/2 V^T (float64 SVD, float32 factors)",
            "max_reconstruction_error": worst,
            "within_dtype_rounding": all(factor.within_rounding for factor in factors),
            "adapter_sha256": file_sha256(weights),
            "adapter_bytes": weights.stat().st_size,
            # the edit travels inside the adapter, so it can be verified without a workspace
            "edit_file": f"{EDIT_DIR}/{EDIT_FILE}",
            "modules": [factor.summary() for factor in factors],
        }
        record = complete_provenance(
            provenance, edit, edit_sha256(edit), {"artifact": ARTIFACT, "lora": lora}
        )
        atomic_write_text(temporary / ADAPTER_CONFIG_FILE, json.dumps(config, indent=2) + "\n")
        write_provenance(temporary / PROVENANCE_FILE, record)
        card = adapter_card(card or ModelCard.for_provenance(record, base_dir))
        atomic_write_text(temporary / CARD_FILE, render_card(card, record, config))
        sync_tree(temporary)
        move_into_place(temporary, output, force)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return LoraResult(
        output=output,
        base=base_dir,
        rank=rank,
        modules=tuple(lora["modules"]),
        max_reconstruction_error=worst,
        adapter_bytes=int(lora["adapter_bytes"]),
        edit_sha256=str(record["edit"]["sha256"]),
        seconds=time.perf_counter() - started,
    )


def export_workspace_lora(
    workspace: Workspace, output: Path, *, max_rank: int = DEFAULT_MAX_RANK, force: bool = False
) -> LoraResult:
    """`swe apply -w WS --as-lora -o OUT`: the workspace's edit as an adapter of its base model."""
    manifest = workspace.manifest()
    base_dir = workspace.base_dir()
    check_output(Path(output), [("workspace", workspace.root)], force)
    workspace.check_writable()
    edit_file, edit_yaml = solved_edit(workspace)
    workspace.check_model(fingerprint(base_dir), manifest.model.id)
    provenance = workspace_provenance(manifest.data, edit_yaml)
    result = export_lora(
        load_edit(edit_file),
        base_dir,
        output,
        provenance=provenance,
        base_model_name_or_path=public_name(manifest.data.get("model") or {}),
        max_rank=max_rank,
        force=force,
        edit_file=edit_file,
        protected=(("workspace", workspace.root),),
    )
    workspace.record_stage(
        "apply",
        {"output": str(result.output), "as_lora": True, "max_lora_rank": max_rank},
        {"edit_sha256": result.edit_sha256, "lora_rank": result.rank},
    )
    return result


def export_artifact_lora(
    edit: Path | str,
    base: Path | ResolvedModel,
    output: Path,
    *,
    max_rank: int = DEFAULT_MAX_RANK,
    force: bool = False,
) -> LoraResult:
    """`swe apply --edit EDIT --base MODEL --as-lora -o OUT`. EDIT is a folder written by
    `--edit-only`, a checkpoint written by `apply`, an edit.safetensors, or a Hub repo of either."""
    edit_file, artifact = locate_edit(edit)
    base_dir = base.path if isinstance(base, ResolvedModel) else Path(base)
    provenance = artifact_provenance(edit_file, artifact)
    recorded = provenance.get("base_model") or {}
    name = recorded.get("hub_id") or public_source(
        base.model_id if isinstance(base, ResolvedModel) else str(base_dir)
    )
    return export_lora(
        load_edit(edit_file),
        base_dir,
        output,
        provenance=provenance,
        base_model_name_or_path=str(name),
        max_rank=max_rank,
        force=force,
        edit_file=edit_file,
        protected=(("edit folder", artifact),),
    )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# -- the card -------------------------------------------------------------------------------------
def adapter_card(card: ModelCard) -> ModelCard:
    """Hub metadata of an adapter: relation `adapter`, library `peft`, a `lora` tag."""
    return replace(card, relation="adapter", library_name="peft", tags=(*card.tags, "lora", "peft"))


def render_card(card: ModelCard, provenance: dict[str, Any], config: dict[str, Any]) -> str:
    lora = provenance["lora"]
    # the adapter config may name a local folder; the card names the Hub id or a placeholder
    base = card.base_model or "BASE_MODEL_FOLDER"
    rows = [
        "| module | rank | rows | columns | base dtype | max error |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for module in lora["modules"]:
        cols = "all" if module["cols"] is None else module["cols"]
        rows.append(
            f"| `{module['module']}` | {module['rank']} | {module['rows']} | {cols} | "
            f"{module['dtype']} | {module['reconstruction_error']:.3g} |"
        )
    body = [
        f"# {card.base_name} with a multilingual safety edit, as a LoRA adapter",
        organism_note(card),
        f"A sparse multilingual safety edit of {base_link(card)} made by swe (sparse weight "
        "editing), exported as a standard PEFT LoRA adapter: load it on top of the base model "
        "instead of shipping a second copy of the weights. The factors are an exact factorisation "
        "of the edit (SVD truncated at its numerical rank), so base + adapter equals the edited "
        "checkpoint up to the rounding of the base dtype.",
        evaluation_section(card, base) if card.eval_report else None,
        "## The adapter\n\n"
        + summary(card, provenance)
        + "\n\n"
        + f"Rank: {lora['rank']} (lora_alpha = rank, scaling 1; per-module ranks in "
        f"`rank_pattern`). Largest reconstruction error against the edited rows: "
        f"{lora['max_reconstruction_error']:.3g}. Adapter weights: "
        f"{lora['adapter_bytes'] / 1024:.1f} KiB (float32).\n\n" + "\n".join(rows),
        "## Use\n\n```python\nfrom peft import PeftModel\nfrom transformers import "
        "AutoModelForCausalLM\n\n"
        f'base = AutoModelForCausalLM.from_pretrained("{base}")\n'
        'model = PeftModel.from_pretrained(base, "THIS_FOLDER_OR_REPO")\n'
        "merged = model.merge_and_unload()  # optional: the edited model itself\n```\n\n"
        f"```bash\npip install '{DISTRIBUTION}[lora]'\n"
        f"swe verify THIS_FOLDER --base {base}   # factors against the base and edit\n```",
        "## Provenance\n\n`swe_edit.json` records the base model, languages, solver, the edit's "
        "sha256 and, per module, the rank, errors and the hash of the base rows it applies to.",
        license_section(card),
    ]
    return card.front_matter() + "\n\n".join(part for part in body if part) + "\n"


# -- reading and checking an adapter ---------------------------------------------------------------
def is_adapter(folder: Path) -> bool:
    """Whether `folder` is a LoRA adapter folder (as opposed to a checkpoint or an edit)."""
    folder = Path(folder)
    return (folder / ADAPTER_CONFIG_FILE).is_file() and not (folder / "config.json").exists()


@dataclass(frozen=True)
class Adapter:
    """An adapter folder as read from disk: its config, provenance and factors per module."""

    folder: Path
    config: dict[str, Any]
    provenance: dict[str, Any]
    factors: dict[str, tuple[Any, Any]]  # module -> (A [r, in], B [out, r]), float32 torch


def read_adapter(folder: Path) -> Adapter:
    """Read adapter_config.json, swe_edit.json and the factors; raise LoraError on a bad layout."""
    import torch
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        config = json.loads((folder / ADAPTER_CONFIG_FILE).read_text(encoding="utf-8"))
        provenance_file = folder / PROVENANCE_FILE
        provenance = (
            json.loads(provenance_file.read_text(encoding="utf-8"))
            if provenance_file.exists()
            else {}
        )
        tensors = load_file(str(folder / ADAPTER_WEIGHTS_FILE))
    except (OSError, ValueError) as error:
        raise LoraError(
            f"{folder}: not a readable LoRA adapter ({type(error).__name__})",
            hint=f"pass a folder with {ADAPTER_CONFIG_FILE} and {ADAPTER_WEIGHTS_FILE}",
        ) from None
    parts: dict[str, dict[str, Any]] = {}
    for key, value in tensors.items():
        match = _MODULE_KEY.match(key)
        if match is None:
            raise LoraError(f"{folder}: unexpected adapter tensor '{key}'")
        parts.setdefault(match["module"], {})[match["factor"]] = value.to(torch.float32)
    factors = {}
    for module, pair in sorted(parts.items()):
        if set(pair) != {"A", "B"}:
            raise LoraError(f"{folder}: module '{module}' lacks lora_A or lora_B")
        factors[module] = (pair["A"], pair["B"])
    return Adapter(folder, config, provenance, factors)


# -- loading with PEFT ----------------------------------------------------------------------------
def require_peft() -> Any:
    """The peft module, or one clear LoraError naming the extra to install."""
    try:
        import peft
    except ImportError:
        raise LoraError(
            "peft is not installed; it is needed for LoRA adapters", hint=PEFT_HINT
        ) from None
    return peft


def load_with_adapter(model: Any, adapter_dir: Path) -> Any:
    """`model` (a loaded transformers model) wrapped with the adapter in `adapter_dir`, in
    inference mode. The adapter's factors stay float32 whatever the base dtype (PEFT's default)."""
    peft = require_peft()
    if not is_adapter(Path(adapter_dir)):
        raise LoraError(
            f"{adapter_dir}: no {ADAPTER_CONFIG_FILE} here",
            hint="pass a folder written by `swe apply --as-lora`",
        )
    wrapped = peft.PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
    wrapped.eval()
    return wrapped
