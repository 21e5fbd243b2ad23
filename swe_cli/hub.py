"""What an edited checkpoint says about itself, and publishing it: the provenance record
(swe_edit.json), the files that travel with it, and the upload to and download from the Hugging
Face Hub. The model card (README.md) is card.py's. huggingface_hub is imported only inside the
functions that use it."""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import re
from pathlib import Path
from typing import Any

import yaml

from swe_cli import __version__
from swe_cli.errors import EditError, HubError
from swe_cli.io.files import atomic_write_text, check_inside
from swe_cli.io.safetensors import read_header
from swe_cli.prompts import MERGED_SOURCE

PROVENANCE_FORMAT = "swe-provenance/1"
PROVENANCE_FILE = "swe_edit.json"
EDIT_DIR = "swe_edit"  # OUT/swe_edit/edit.safetensors: the edit travels with the checkpoint
CARD_FILE = "README.md"
EVAL_FILE = "eval_report.md"  # an exported edit keeps the workspace's eval table here
EVAL_CHART = f"{EDIT_DIR}/eval.png"  # the eval chart (asr.png) that a gated model's card shows
REPLACED = (CARD_FILE, PROVENANCE_FILE)  # base files that swe writes anew
CALLER_KEYS = ("base_model", "languages", "hrl", "prompt_sets", "solver")
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
    file or folder by its name alone; each part of a merged set ("A + B") named alike."""
    text = str(source or "")
    if not text:
        return text
    if MERGED_SOURCE in text:
        parts = text.split(MERGED_SOURCE)
        return MERGED_SOURCE.join(public_source(part) for part in parts)
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
