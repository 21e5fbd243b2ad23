"""What an edited checkpoint says about itself, and publishing it: the provenance record
(swe_edit.json), the model card (README.md with Hub YAML front matter), and the upload to the
Hugging Face Hub. huggingface_hub is imported only inside the functions that use it (the upload,
and the card's metadata block, which its ModelCardData writes)."""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from swe_cli import DISTRIBUTION, __version__
from swe_cli.errors import EditError, HubError
from swe_cli.io.files import atomic_write_text, check_inside
from swe_cli.io.safetensors import read_header

PROVENANCE_FORMAT = "swe-provenance/1"
PROVENANCE_FILE = "swe_edit.json"
EDIT_DIR = "swe_edit"  # OUT/swe_edit/edit.safetensors: the edit travels with the checkpoint
CARD_FILE = "README.md"
EVAL_FILE = "eval_report.md"  # an exported edit keeps the workspace's eval table here
EVAL_CHART = f"{EDIT_DIR}/eval.png"  # the eval chart (asr.png) that a gated model's card shows
REPLACED = (CARD_FILE, PROVENANCE_FILE)  # base files that swe writes anew
CALLER_KEYS = ("base_model", "languages", "hrl", "prompt_sets", "solver")
CARD_TAGS = ("safety", "multilingual", "model-editing", "sparse-weight-editing", "swe")
LICENSE_KEYS = ("license", "license_name", "license_link")
# Above this size upload_large_folder (resumable, several commits) replaces one upload_folder.
LARGE_FOLDER_BYTES = 5 * 1024**3
UPLOAD_IGNORE = [".cache/**", ".*.tmp", ".*.tmp/**"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_SNAPSHOT = re.compile(r"models--(?P<owner>[^/]+?)--(?P<name>[^/]+)/snapshots/[^/]+/?$")
_LAYER = re.compile(r"\.layers\.(\d+)\.")


# -- provenance ---------------------------------------------------------------------------------
def now() -> str:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()


def hub_repo_id(model: dict[str, Any]) -> str | None:
    """The Hub repo id of a workspace model record, or None when the base is a local folder.

    A record resolved from the Hub carries a commit; a local path inside the HF cache still names
    its repo (models--owner--name/snapshots/<commit>)."""
    model_id = str(model.get("id") or "")
    if model.get("commit") and _HUB_ID.match(model_id) and not Path(model_id).exists():
        return model_id
    match = _SNAPSHOT.search(str(model.get("path") or "").replace(os.sep, "/"))
    if match:
        return f"{match['owner']}/{match['name']}"
    if model.get("hub_id"):
        return str(model["hub_id"])
    return None


def public_name(model: dict[str, Any]) -> str:
    """How files meant to be pushed name a base model: its Hub id when it came from the Hub,
    else its folder's name (never a local path, which would leak the user's home)."""
    return hub_repo_id(model) or public_source(str(model.get("id") or "")) or "base model"


def public_source(source: str) -> str:
    """A prompt set's or model's source as pushed files may name it: a Hub id as it is, a local
    file or folder by its name alone."""
    text = str(source or "")
    if not text:
        return text
    local = text.startswith(("/", ".", "~")) or Path(text).expanduser().exists()
    if local or not _HUB_ID.match(text):
        return Path(text.rstrip("/\\")).name or text
    return text


def normalise_languages(hrl: str | None, langs: Any) -> list[str]:
    """The HRL first, then the target languages, from a list, a dict or a comma string."""
    if isinstance(langs, str):
        items = [part.strip() for part in langs.split(",")]
    elif isinstance(langs, dict):
        items = [str(langs.get("hrl") or ""), *map(str, langs.get("targets") or [])]
    else:
        items = [str(item) for item in langs or []]
    ordered = [hrl, *items] if hrl else items
    return list(dict.fromkeys(item for item in ordered if item))


def layer_of(tensor_name: str) -> int | None:
    match = _LAYER.search(tensor_name)
    return int(match.group(1)) if match else None


def edit_summary(edit: Any) -> dict[str, Any]:
    """Per tensor: layer, rows and columns edited, dtype, shape; and the edited layers."""
    tensors = []
    for item in edit.tensors:
        tensors.append(
            {
                "name": item.name,
                "layer": layer_of(item.name),
                "rows": len(item.rows),
                "cols": None if item.cols is None else len(item.cols),
                "shape": list(item.shape),
                "dtype": item.dtype,
            }
        )
    layers = sorted({t["layer"] for t in tensors if t["layer"] is not None})
    return {"layers": layers, "tensors": tensors, "rows": sum(t["rows"] for t in tensors)}


def neuron_counts(edit: Any, diagnostics: dict[str, Any] | None = None) -> dict[str, int]:
    """Safety neurons edited per layer: the solver's own count when recorded, else the edited
    rows of gate/up (a fused gate_up tensor holds each neuron twice) or the columns of down."""
    recorded = (diagnostics or {}).get("layers") or {}
    counts: dict[str, int] = {}
    for item in edit.tensors:
        layer = layer_of(item.name)
        if layer is None:
            continue
        if isinstance(recorded.get(layer), dict) and "neurons" in recorded[layer]:
            counts[str(layer)] = int(recorded[layer]["neurons"])
            continue
        if "down" in item.name:
            count = item.shape[1] if item.cols is None else len(item.cols)
        elif "gate_up" in item.name:
            count = len({int(row) % (item.shape[0] // 2) for row in item.rows.tolist()})
        else:
            count = len(item.rows)
        counts[str(layer)] = max(counts.get(str(layer), 0), count)
    return counts


def workspace_provenance(
    manifest: dict[str, Any], edit_yaml: dict[str, Any] | None
) -> dict[str, Any]:
    """The caller-side part of swe_edit.json for a workspace: base model, languages, solver."""
    model = dict(manifest.get("model") or {})
    solve = (manifest.get("stages") or {}).get("solve") or {}
    prompt_sets = {
        name: {**record, "source": public_source(str(record.get("source") or ""))}
        if isinstance(record, dict)
        else record
        for name, record in (manifest.get("prompt_sets") or {}).items()
    }
    return {
        "base_model": {
            "id": public_name(model),
            "hub_id": hub_repo_id(model),
            "revision": model.get("revision"),
            "commit": model.get("commit"),
            "fingerprint": model.get("fingerprint"),
            "model_type": model.get("model_type"),
            "dtype": model.get("dtype"),
        },
        "languages": normalise_languages(manifest.get("hrl"), manifest.get("langs")),
        "hrl": manifest.get("hrl"),
        "prompt_sets": prompt_sets or None,
        "solver": {
            "method": (edit_yaml or {}).get("method") or (solve.get("params") or {}).get("method"),
            "params": solve.get("params"),
            "outputs": solve.get("outputs"),
            "diagnostics": (edit_yaml or {}).get("layers"),
        },
    }


def edit_provenance(edit_metadata: dict[str, str]) -> dict[str, Any]:
    """The caller-side part of swe_edit.json rebuilt from an edit file's own metadata (used when
    an edit comes without its swe_edit.json)."""
    params: Any = edit_metadata.get("params")
    with contextlib.suppress(yaml.YAMLError):
        params = yaml.safe_load(params) if params else None
    base_id = edit_metadata.get("base_model")
    return {
        "base_model": {
            "id": base_id,
            "hub_id": base_id if base_id and _HUB_ID.match(base_id) else None,
            "commit": edit_metadata.get("base_revision") or None,
            "fingerprint": edit_metadata.get("base_fingerprint"),
        },
        "languages": normalise_languages(edit_metadata.get("hrl"), edit_metadata.get("langs")),
        "hrl": edit_metadata.get("hrl"),
        "solver": {"method": edit_metadata.get("method"), "params": params},
    }


def complete_provenance(
    provenance: dict[str, Any], edit: Any, edit_hash: str, extra: dict[str, Any]
) -> dict[str, Any]:
    """swe_edit.json: the caller's record plus what swe knows about the edit and this run."""
    summary = edit_summary(edit)
    solver = provenance.get("solver") or {}
    return {
        "format": PROVENANCE_FORMAT,
        "tool": {"name": "swe", "version": __version__},
        "created": now(),
        **provenance,
        "layers": summary["layers"],
        "neurons": neuron_counts(edit, {"layers": solver.get("diagnostics") or {}}),
        "edit": {
            "sha256": edit_hash,
            "rows": summary["rows"],
            "tensors": summary["tensors"],
            "metadata": {k: v for k, v in edit.metadata.items() if k != "params"},
        },
        **extra,
    }


def write_provenance(path: Path, data: dict[str, Any]) -> None:
    """swe_edit.json, atomically."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def edited_model_hash(folder: Path) -> str | None:
    """The edit sha256 an edited checkpoint or adapter records in its swe_edit.json."""
    try:
        data = json.loads((Path(folder) / PROVENANCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = (data.get("edit") or {}).get("sha256") if isinstance(data, dict) else None
    return str(value) if value else None


def artifact_provenance(edit_file: Path, artifact: Path) -> dict[str, Any]:
    """The caller-side provenance of an edit artifact: its swe_edit.json (beside it, or in the
    checkpoint folder above swe_edit/), else the edit file's own metadata."""
    candidates = [edit_file.parent / PROVENANCE_FILE]
    if edit_file.parent.name == EDIT_DIR:
        candidates.append(edit_file.parent.parent / PROVENANCE_FILE)
    for candidate in candidates:
        if candidate.exists():
            check_inside(candidate, artifact, EditError)
            try:
                data = json.loads(candidate.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                raise EditError(
                    f"{candidate}: not valid JSON", hint="restore the file or delete it"
                ) from None
            return {k: v for k, v in data.items() if k in CALLER_KEYS}
    return edit_provenance(read_header(edit_file).metadata)


# -- model card ---------------------------------------------------------------------------------
def read_card_metadata(readme: Path) -> dict[str, Any]:
    """The YAML front matter of a model card, or {} when there is none or it does not parse."""
    try:
        text = Path(readme).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return {}
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, flags=re.DOTALL)
    if not match:
        return {}
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


# The parameters each method reads (swe_cli/methods/): the card lists these and no others.
METHOD_PARAMETERS = {
    "paper": ("layers", "rank", "gamma", "lam", "projections", "hard", "threshold"),
    "residual": (
        "layers",
        "rank",
        "alpha",
        "beta",
        "lam",
        "sparse",
        "keep_hrl",
        "strength",
        "hard",
        "threshold",
    ),
    "refusal": (
        "layers",
        "rank",
        "alpha",
        "beta",
        "lam",
        "sparse",
        "keep_hrl",
        "strength",
        "hard",
        "threshold",
    ),
}
PARAMETER_NAMES = {"lam": "lambda"}


def organism_seed(base_dir: Path | None) -> int | None:
    """The seed of swe's synthetic model organism when base_dir is one (its build writes
    organism.json beside the model folder), else None."""
    if base_dir is None:
        return None
    manifest = Path(base_dir).parent / "organism.json"
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return int(data["seed"]) if isinstance(data, dict) and "seed" in data else None


def base_license(base_dir: Path | None) -> dict[str, str]:
    """license / license_name / license_link of the base: its card's front matter, else its
    config.json; {} when it declares none."""
    if base_dir is None:
        return {}
    meta = read_card_metadata(Path(base_dir) / "README.md")
    if not meta.get("license"):
        try:
            config = json.loads((Path(base_dir) / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            config = {}
        meta = config if isinstance(config, dict) else {}
    return {key: str(meta[key]) for key in LICENSE_KEYS if meta.get(key)}


@dataclass(frozen=True)
class ModelCard:
    """What README.md says beyond the provenance: the Hub metadata and the eval table.

    `base_model` must be a Hub repo id (the Hub rejects other values); None omits it, for a base
    that only exists as a local folder. `base_name` is what the title calls the base: the Hub id,
    else the folder's name, never a path. `eval_report` is the Markdown of the evaluation section
    (report.card_markdown), `gate_note` what the shipping gate of `swe align --eval` decided."""

    base_model: str | None = None
    base_name: str = "the base model"
    languages: tuple[str, ...] = ()
    hrl: str | None = None
    license: dict[str, str] = field(default_factory=dict)
    tags: tuple[str, ...] = CARD_TAGS
    eval_report: str | None = None
    gate_note: str | None = None
    organism_seed: int | None = None  # the base is swe's synthetic model organism
    chart: str | None = None  # relative path of the eval chart inside the folder, when shipped
    relation: str = "finetune"  # Hub values: adapter, merge, quantized, finetune
    library_name: str | None = "transformers"
    pipeline_tag: str | None = "text-generation"

    @classmethod
    def for_provenance(
        cls, provenance: dict[str, Any], base_dir: Path | None, eval_report: str | None = None
    ) -> ModelCard:
        """The default card: base and languages from the provenance, licence from the base."""
        base = provenance.get("base_model") or {}
        seed = organism_seed(base_dir)
        name = base.get("hub_id") or Path(str(base.get("id") or "base model")).name
        if seed is not None:
            name = f"swe model organism (seed {seed})"
        return cls(
            base_model=base.get("hub_id"),
            base_name=str(name),
            languages=tuple(provenance.get("languages") or ()),
            hrl=provenance.get("hrl"),
            license=base_license(base_dir),
            eval_report=eval_report,
            organism_seed=seed,
        )

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(lang for lang in self.languages if lang != self.hrl)

    def metadata(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        if self.base_model:
            data["base_model"] = self.base_model
            data["base_model_relation"] = self.relation
        if self.languages:
            data["language"] = list(self.languages)
        data.update(self.license)
        if self.library_name:
            data["library_name"] = self.library_name
        if self.pipeline_tag:
            data["pipeline_tag"] = self.pipeline_tag
        data["tags"] = list(dict.fromkeys(self.tags))
        return data

    def front_matter(self) -> str:
        """The YAML metadata block, written by huggingface_hub's ModelCardData (the Hub's own
        reader of it)."""
        from huggingface_hub import ModelCardData

        return f"---\n{ModelCardData(**self.metadata()).to_yaml()}\n---\n\n"

    def render(self, provenance: dict[str, Any], *, kind: str = "model") -> str:
        """README.md text; kind "model" for an edited checkpoint, "edit" for an edit artifact."""
        body = (
            _edit_card_body(self, provenance) if kind == "edit" else _model_body(self, provenance)
        )
        return self.front_matter() + body


def base_link(card: ModelCard) -> str:
    if card.base_model:
        return f"[{card.base_model}](https://huggingface.co/{card.base_model})"
    return f"`{card.base_name}`"


def organism_note(card: ModelCard) -> str | None:
    if card.organism_seed is None:
        return None
    return (
        f"> **Synthetic base.** The base is swe's model organism (seed {card.organism_seed}): a "
        "tiny Llama-architecture chat model that `swe demo` trains from scratch on made-up "
        "languages, with the safety gap built in. It shows what the edit does; it is not a "
        "usable model, and its numbers say nothing about real models."
    )


def _edited_table(provenance: dict[str, Any]) -> str:
    lines = ["| tensor | layer | rows | columns | dtype |", "|---|---:|---:|---:|---|"]
    for item in (provenance.get("edit") or {}).get("tensors", []):
        cols = "all" if item["cols"] is None else item["cols"]
        lines.append(
            f"| `{item['name']}` | {item['layer']} | {item['rows']} | {cols} | {item['dtype']} |"
        )
    return "\n".join(lines)


def method_parameters(method: str | None, params: dict[str, Any]) -> dict[str, Any]:
    """The parameters the method reads, by their card names; all of them for an unknown method.
    The null-space threshold only matters with `hard`."""
    names = METHOD_PARAMETERS.get(str(method))
    chosen = {
        key: value
        for key, value in params.items()
        if value is not None and (names is None or key in names) and key not in ("method", "device")
    }
    if not chosen.get("hard"):
        chosen.pop("threshold", None)
    return {
        PARAMETER_NAMES.get(key, key): chosen[key]
        for key in (names or sorted(chosen))
        if key in chosen
    }


def _solver_lines(provenance: dict[str, Any]) -> str:
    solver = provenance.get("solver") or {}
    method = solver.get("method") or "unknown"
    params = method_parameters(method, solver.get("params") or {})
    shown = ", ".join(f"{key}={value}" for key, value in params.items())
    return f"Method: `{method}`" + (f"; parameters: {shown}" if shown else "")


def summary(card: ModelCard, provenance: dict[str, Any]) -> str:
    base = provenance.get("base_model") or {}
    edit = provenance.get("edit") or {}
    commit = f" at commit `{base['commit']}`" if base.get("commit") else ""
    if card.hrl and card.targets:
        languages = (
            f"Target languages: {', '.join(card.targets)}; high-resource language whose "
            f"behaviour they are edited towards: {card.hrl}."
        )
    else:
        languages = f"Languages: {', '.join(card.languages) or 'unrecorded'}."
    return (
        f"Base model: {base_link(card)}{commit}.\n"
        f"{languages}\n"
        f"{_solver_lines(provenance)}.\n"
        f"Edited layers: {', '.join(map(str, provenance.get('layers') or [])) or 'none'}; "
        f"{edit.get('rows', 0)} rows in {len(edit.get('tensors', []))} tensors; "
        f"edit sha256 `{edit.get('sha256', '')}`."
    )


def evaluation_section(card: ModelCard, base_arg: str) -> str:
    """## Evaluation: the gate's decision first, then the table with its columns defined."""
    if not card.eval_report:
        return (
            "## Evaluation\n\nUnevaluated: this checkpoint was written without `--eval`, so "
            "nothing has measured whether the edit lowers attack success or what it costs. "
            f"Run `swe eval THIS_FOLDER --baseline {base_arg} --langs ...` before relying on it."
        )
    gate = f"{card.gate_note}\n\n" if card.gate_note else ""
    chart = (
        f"![Attack success, refusals of benign prompts, utility and KL per language, base and "
        f"edited]({card.chart})\n\n"
        if card.chart
        else ""
    )
    return "## Evaluation\n\n" + gate + chart + card.eval_report.strip()


def _model_body(card: ModelCard, provenance: dict[str, Any]) -> str:
    base_arg = card.base_model or "BASE_MODEL_FOLDER"
    targets = ", ".join(card.targets) or "the target languages"
    sections = [
        f"# {card.base_name} with a multilingual safety edit",
        organism_note(card),
        f"This checkpoint is {base_link(card)} with a sparse, closed-form weight edit made by "
        "swe (sparse weight editing) to close the "
        f"multilingual safety gap: it should refuse harmful requests in {targets} as it does in "
        f"{card.hrl or 'the high-resource language'}. Only the rows listed below differ from "
        "the base; every other tensor is byte-identical. It loads like the base model "
        "(`AutoModelForCausalLM.from_pretrained`).",
        evaluation_section(card, base_arg),
        "## What was edited\n\n" + summary(card, provenance) + "\n\n" + _edited_table(provenance),
        "## Reproduce\n\n"
        "The edit itself ships in `swe_edit/edit.safetensors`; `swe_edit.json` records the base "
        "revision, languages, layers, solver parameters and hashes.\n\n"
        f"```bash\npip install {DISTRIBUTION}\n"
        f"swe apply --edit swe_edit/ --base {base_arg} -o edited-model   # the same bytes\n"
        f"swe verify edited-model --base {base_arg}                   # tensor-by-tensor check\n```",
        license_section(card),
    ]
    return "\n\n".join(section for section in sections if section) + "\n"


def license_section(card: ModelCard) -> str | None:
    if not card.license:
        return None
    name = card.license.get("license_name") or card.license.get("license")
    link = card.license.get("license_link")
    return f"## License\n\nSame as the base model: `{name}`" + (f" ({link})." if link else ".")


def _edit_card_body(card: ModelCard, provenance: dict[str, Any]) -> str:
    base_arg = card.base_model or "BASE_MODEL_FOLDER"
    sections = [
        f"# Multilingual safety edit for {card.base_name}",
        organism_note(card),
        "A sparse multilingual safety edit made by swe: the row indices and float32 deltas of a "
        f"few weight rows of {base_link(card)} (`edit.safetensors`), with the sha256 of the base "
        "rows it was computed from, so it applies only to that base.",
        "## What it edits\n\n" + summary(card, provenance) + "\n\n" + _edited_table(provenance),
        evaluation_section(card, base_arg) if card.eval_report else None,
        f"## Apply\n\n```bash\npip install {DISTRIBUTION}\n"
        f"swe apply --edit THIS_FOLDER_OR_REPO --base {base_arg} -o edited-model\n```",
        license_section(card),
    ]
    return "\n\n".join(section for section in sections if section) + "\n"


def edit_card(card: ModelCard) -> ModelCard:
    """The card of an edit artifact: not a transformers model, an add-on to the base."""
    return replace(
        card,
        tags=(*card.tags, "swe-edit"),
        relation="adapter",
        library_name=None,
        pipeline_tag=None,
    )


# -- Hub ----------------------------------------------------------------------------------------
def _folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def _token(token: str | None) -> str:
    if token:
        return token
    from huggingface_hub import get_token

    found = os.environ.get("HF_TOKEN") or get_token()
    if not found:
        raise HubError(
            "no Hugging Face token: cannot push",
            hint="set HF_TOKEN or run `hf auth login`; the local output is complete, push it later",
        )
    return found


# What a checkpoint needs besides its weights and index (config, tokenizer, chat template,
# generation settings, licence): only these are uploaded from a folder copied from the base, so
# a user's notes or logs inside the base folder never reach the Hub.
CHECKPOINT_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "preprocessor_config.json",
    "processor_config.json",
    "LICENSE",
    "LICENSE.txt",
    "LICENSE.md",
    "NOTICE",
    "NOTICE.txt",
    "USE_POLICY.md",
)
SWE_FILES = (
    CARD_FILE,
    PROVENANCE_FILE,
    f"{EDIT_DIR}/edit.safetensors",
    EVAL_CHART,  # the chart the card of a gated model shows
    "edit.safetensors",  # an edit artifact (--edit-only)
    EVAL_FILE,
    "adapter_config.json",  # an adapter (--as-lora)
    "adapter_model.safetensors",
)


def upload_files(folder: Path) -> list[str]:
    """The files `--push-to-hub` uploads from `folder`: swe's own, the checkpoint's weights and
    what its index names, and the known checkpoint files (CHECKPOINT_FILES); nothing else."""
    from swe_cli.errors import CheckpointError
    from swe_cli.io.checkpoint import INDEX_NAME, weight_files

    folder = Path(folder)
    names = [*SWE_FILES, *CHECKPOINT_FILES, INDEX_NAME]
    with contextlib.suppress(CheckpointError):  # an adapter or an edit has no weights of its own
        names += [path.relative_to(folder).as_posix() for path in weight_files(folder)]
    return sorted(name for name in dict.fromkeys(names) if (folder / name).is_file())


def planned_upload(base_dir: Path) -> list[str]:
    """What `--push-to-hub` would upload for an edited checkpoint of `base_dir` (--dry-run):
    upload_files of the base, with swe's card, provenance and edit in place of the base's."""
    base = [name for name in upload_files(base_dir) if name not in SWE_FILES]
    return sorted([*base, CARD_FILE, PROVENANCE_FILE, f"{EDIT_DIR}/edit.safetensors"])


def push_to_hub(
    folder: Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Create the repo when needed and upload the folder (resumable multi-commit upload for large
    checkpoints); returns the URL of the uploaded revision. Every failure is one HubError, raised
    after nothing local has been touched."""
    folder = Path(folder)
    if not folder.is_dir():
        raise HubError(f"{folder}: no such folder to push", hint="run `swe apply` first")
    from huggingface_hub import HfApi

    allowed = upload_files(folder)

    api = HfApi(token=_token(token), library_name="swe", library_version=__version__)
    message = commit_message or "Upload multilingual safety edit made with swe"
    try:
        api.create_repo(repo_id, private=private, repo_type="model", exist_ok=True)
        if revision:
            api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
        large = getattr(api, "upload_large_folder", None)
        if large is not None and _folder_bytes(folder) > LARGE_FOLDER_BYTES:
            large(
                repo_id=repo_id,
                folder_path=folder,
                repo_type="model",
                revision=revision,
                private=private,
                allow_patterns=allowed,
                ignore_patterns=UPLOAD_IGNORE,
            )
        else:  # huggingface_hub >= 2 streams large folders in several commits by itself
            api.upload_folder(
                repo_id=repo_id,
                folder_path=folder,
                repo_type="model",
                revision=revision,
                commit_message=message,
                allow_patterns=allowed,
                ignore_patterns=UPLOAD_IGNORE,
            )
    except HubError:
        raise
    except Exception as error:  # noqa: BLE001 - every Hub failure becomes one user error
        raise HubError(
            f"pushing {folder} to '{repo_id}' failed: {_describe(error)}",
            hint="check the repo name, that your token has write access to it, and the network; "
            f"the local output in {folder} is complete, push it again later",
        ) from None
    suffix = f"/tree/{revision}" if revision else ""
    return f"https://huggingface.co/{repo_id}{suffix}"


def _describe(error: Exception) -> str:
    status = getattr(getattr(error, "response", None), "status_code", None)
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
    text = f"{type(error).__name__}" + (f" (HTTP {status})" if status else "")
    return f"{text}: {first_line[:200]}" if first_line else text


def download_edit(repo_id: str, revision: str | None = None, token: str | None = None) -> Path:
    """Fetch an edit artifact (or just the edit of an edited checkpoint) from the Hub."""
    from huggingface_hub import snapshot_download

    patterns = ["edit.safetensors", "swe_edit.json", "README.md", "swe_edit/*"]
    try:
        return Path(
            snapshot_download(repo_id, revision=revision, allow_patterns=patterns, token=token)
        )
    except Exception as error:  # noqa: BLE001
        raise HubError(
            f"cannot fetch the edit '{repo_id}' from the Hub: {_describe(error)}",
            hint="check the repo id, network and HF_TOKEN, or pass a local edit folder",
        ) from None
