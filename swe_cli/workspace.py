"""The on-disk workspace shared by all stages: layout, manifest (workspace.yaml), model binding
and its safetensors files. Every file is written atomically (swe_cli.io.files), so an interrupted
stage never leaves a half-written file that a later stage would read."""

from __future__ import annotations

import copy
import datetime as _dt
from pathlib import Path
from typing import Any

import yaml

from swe_cli import __version__
from swe_cli.errors import WorkspaceError
from swe_cli.io.files import atomic_path, atomic_write_text

MANIFEST = "workspace.yaml"
FORMAT_VERSION = 1


def save_tensors(
    path: Path, tensors: dict[str, Any], metadata: dict[str, str] | None = None
) -> None:
    """Atomically write a safetensors file."""
    from safetensors.torch import save_file

    with atomic_path(path) as temporary:
        save_file(
            {k: v.contiguous() for k, v in tensors.items()}, str(temporary), metadata=metadata
        )


def load_tensors(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Read a workspace safetensors file; a truncated or corrupted file is a WorkspaceError."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            return {key: handle.get_tensor(key) for key in handle.keys()}, metadata  # noqa: SIM118
    except FileNotFoundError:
        raise WorkspaceError(
            f"{path}: missing", hint="run the stage that writes it first"
        ) from None
    except Exception as error:  # noqa: BLE001 - any decoding failure means a damaged file
        raise WorkspaceError(
            f"{path}: unreadable or truncated ({type(error).__name__})",
            hint="delete the file and re-run the stage that wrote it",
        ) from None


def valid_tensor_file(path: Path) -> bool:
    """True when the file exists and its header and data are complete (cheap: header only)."""
    from swe_cli.errors import CheckpointError
    from swe_cli.io.safetensors import read_header

    if not path.exists():
        return False
    try:
        read_header(path)
    except CheckpointError:
        return False
    return True


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()


class Workspace:
    """A folder holding every stage's inputs and outputs, bound to one base model."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # -- layout -----------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    @property
    def prompts_dir(self) -> Path:
        return self.root / "prompts"

    @property
    def acts_dir(self) -> Path:
        return self.root / "acts"

    @property
    def stats_dir(self) -> Path:
        return self.root / "stats"

    @property
    def answers_path(self) -> Path:
        """The model's own answers to the harmless fit prompts (probe's preservation text)."""
        return self.root / "answers" / "harmless.jsonl"

    @property
    def masks_path(self) -> Path:
        return self.root / "masks" / "neurons.safetensors"

    @property
    def edit_dir(self) -> Path:
        return self.root / "edit"

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    def layer_dir(self, layer: int) -> Path:
        return self.acts_dir / f"L{layer}"

    def shard_path(self, layer: int, prompt_set: str, lang: str, chunk: int) -> Path:
        return self.layer_dir(layer) / f"{prompt_set}-{lang}-{chunk:05d}.safetensors"

    def stats_path(self, layer: int) -> Path:
        return self.stats_dir / f"L{layer}.safetensors"

    # -- manifest ---------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.manifest_path.exists()

    def load(self) -> dict[str, Any]:
        if not self.manifest_path.exists():
            raise WorkspaceError(
                f"{self.root}: not a workspace (no {MANIFEST})",
                hint="run `swe probe MODEL -w DIR` first, or pass the right -w/--workspace",
            )
        try:
            data = yaml.safe_load(self.manifest_path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as error:
            raise WorkspaceError(
                f"{self.manifest_path}: unreadable ({type(error).__name__})",
                hint="restore or delete the workspace",
            ) from None
        if not isinstance(data, dict):
            raise WorkspaceError(
                f"{self.manifest_path}: not a mapping", hint="delete the workspace"
            )
        return data

    def save(self, manifest: dict[str, Any]) -> None:
        atomic_write_text(
            self.manifest_path, yaml.safe_dump(manifest, sort_keys=False, allow_unicode=True)
        )

    def check_writable(self) -> None:
        """A stage that records itself here must be able to, checked before it writes anything
        elsewhere (apply would otherwise write OUT and then fail)."""
        import os
        import tempfile

        try:
            descriptor, probe = tempfile.mkstemp(prefix=".swe-write-check-", dir=self.root)
            os.close(descriptor)
            os.unlink(probe)
        except OSError as error:
            raise WorkspaceError(
                f"workspace {self.root} is not writable ({error.strerror or type(error).__name__})",
                hint="apply records itself in the workspace: make it writable, or copy it",
            ) from None

    def require_stage(self, stage: str) -> dict[str, Any]:
        """The recorded parameters/outputs of a finished stage, or a clear error."""
        manifest = self.load()
        record = manifest.get("stages", {}).get(stage)
        if record and record.get("status") == "running":
            raise WorkspaceError(
                f"{self.root}: stage '{stage}' started at {record.get('started')} and did not "
                "finish (interrupted, or still running)",
                hint=f"re-run `swe {stage} -w {self.root}`",
            )
        if not record or record.get("status") != "done":
            raise WorkspaceError(
                f"{self.root}: stage '{stage}' has not finished in this workspace",
                hint=f"run `swe {stage} -w {self.root}` first",
            )
        return record

    def bind_model(self, model: dict[str, Any]) -> dict[str, Any]:
        """Create the workspace for a model, or check that it already belongs to the same one.

        `model` holds id, path, revision, commit, fingerprint, model_type, dtype."""
        if self.exists():
            manifest = self.load()
            bound = manifest.get("model", {})
            if bound.get("fingerprint") != model["fingerprint"]:
                raise WorkspaceError(
                    self._other_model(bound, str(model["id"]), str(model["fingerprint"])),
                    hint="use another -w/--workspace for this model",
                )
            return manifest
        self.root.mkdir(parents=True, exist_ok=True)
        manifest = {
            "format": FORMAT_VERSION,
            "tool_version": __version__,
            "created": _now(),
            "model": dict(model),
            "stages": {},
            "history": [],
        }
        self.save(manifest)
        return manifest

    def check_model(self, fingerprint: str, model_id: str) -> None:
        bound = self.load().get("model", {})
        if bound.get("fingerprint") != fingerprint:
            raise WorkspaceError(
                self._other_model(bound, model_id, fingerprint),
                hint="use the workspace's own model or another -w/--workspace",
            )

    def _other_model(self, bound: dict[str, Any], model_id: str, fingerprint: str) -> str:
        """Why a model is not the workspace's: another model, or the same name whose weights or
        config changed since the workspace was made."""
        ours, theirs = str(bound.get("fingerprint"))[:12], fingerprint[:12]
        if str(bound.get("id")) == str(model_id):
            return (
                f"workspace {self.root} was made with '{model_id}' (fingerprint {ours}), but "
                f"'{model_id}' now has fingerprint {theirs}: its weights or config changed"
            )
        return (
            f"workspace {self.root} belongs to model '{bound.get('id')}' (fingerprint {ours}), "
            f"not to '{model_id}' (fingerprint {theirs})"
        )

    def model(self) -> dict[str, Any]:
        return dict(self.load()["model"])

    def begin_stage(self, stage: str) -> None:
        """Mark a stage running before it writes anything: a run killed before record_stage then
        leaves 'running', which later stages refuse, instead of the previous run's 'done'."""
        manifest = self.load()
        stages = manifest.setdefault("stages", {})
        stages[stage] = {**(stages.get(stage) or {}), "status": "running", "started": _now()}
        self.save(manifest)

    def record_stage(
        self, stage: str, params: dict[str, Any], outputs: dict[str, Any], status: str = "done"
    ) -> None:
        """Record a stage's parameters and outputs (latest under stages, all runs in history)."""
        manifest = self.load()
        record = {
            "status": status,
            "finished": _now(),
            "tool_version": __version__,
            "params": params,
            "outputs": outputs,
        }
        manifest.setdefault("stages", {})[stage] = record
        # a copy, so YAML writes plain values instead of &anchors/*aliases shared with `stages`
        manifest.setdefault("history", []).append({"stage": stage, **copy.deepcopy(record)})
        self.save(manifest)

    def invalidate_after(self, stage: str) -> None:
        """A re-run stage makes every later stage's result stale."""
        order = ["probe", "localize", "select", "solve", "apply", "eval", "gate"]
        manifest = self.load()
        stages = manifest.get("stages", {})
        for later in order[order.index(stage) + 1 :]:
            if later in stages:
                stages[later]["status"] = "stale"
        self.save(manifest)
