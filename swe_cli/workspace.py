"""The on-disk workspace shared by all stages: layout, the typed manifest (workspace.yaml), model
binding, and every reader of the files the stages leave there (activation shards, safety-neuron
selections, activation moments). Stages write through it and methods read through it, so no
method needs a stage. Every file is written atomically (swe_cli.io.files), so an interrupted
stage never leaves a half-written file that a later stage would read."""

from __future__ import annotations

import copy
import datetime as _dt
from collections.abc import Mapping
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class ModelRecord:
    """What a workspace remembers about its base model (written by probe)."""

    id: str
    path: Path
    fingerprint: str
    model_type: str
    num_layers: int
    hidden_size: int
    intermediate_size: int
    revision: str | None = None
    commit: str | None = None
    dtype: str = "auto"

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> ModelRecord:
        return cls(
            id=str(data.get("id") or ""),
            path=Path(str(data.get("path") or "")),
            fingerprint=str(data.get("fingerprint") or ""),
            model_type=str(data.get("model_type") or ""),
            num_layers=int(data.get("num_layers") or 0),
            hidden_size=int(data.get("hidden_size") or 0),
            intermediate_size=int(data.get("intermediate_size") or 0),
            revision=data.get("revision"),
            commit=data.get("commit"),
            dtype=str(data.get("dtype") or "auto"),
        )


@dataclass(frozen=True)
class StageRecord:
    """One stage's latest run: status (running, done, stale), parameters and outputs."""

    name: str
    status: str
    params: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    started: str | None = None

    @classmethod
    def parse(cls, name: str, data: Mapping[str, Any]) -> StageRecord:
        return cls(
            name=name,
            status=str(data.get("status") or ""),
            params=dict(data.get("params") or {}),
            outputs=dict(data.get("outputs") or {}),
            started=data.get("started"),
        )

    @property
    def done(self) -> bool:
        return self.status == "done"


@dataclass(frozen=True)
class Manifest:
    """The typed view of workspace.yaml. `data` is the file as read, for the provenance record
    that copies whole sections of it."""

    model: ModelRecord
    hrl: str
    langs: tuple[str, ...]
    prompt_sets: dict[str, Any]
    stages: dict[str, StageRecord]
    data: dict[str, Any]

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> Manifest:
        stages = data.get("stages") or {}
        return cls(
            model=ModelRecord.parse(data.get("model") or {}),
            hrl=str(data.get("hrl") or ""),
            langs=tuple(data.get("langs") or ()),
            prompt_sets=dict(data.get("prompt_sets") or {}),
            stages={name: StageRecord.parse(name, record or {}) for name, record in stages.items()},
            data=dict(data),
        )

    def stage(self, name: str) -> StageRecord | None:
        return self.stages.get(name)

    @property
    def probed_layers(self) -> list[int]:
        """The layers probe recorded activations of."""
        probe = self.stage("probe")
        return [int(layer) for layer in probe.params.get("layers", [])] if probe else []

    def neuron_counts(self, lang: str) -> dict[int, int]:
        """Per localized layer, the size of the language's safety-neuron set."""
        localize = self.stage("localize")
        layers = localize.outputs.get("layers", {}) if localize else {}
        return {int(layer): int(entry["sizes"][lang]) for layer, entry in layers.items()}


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

    def manifest(self) -> Manifest:
        """workspace.yaml, typed."""
        return Manifest.parse(self.load())

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

    def require_stage(self, stage: str) -> StageRecord:
        """The recorded parameters/outputs of a finished stage, or a clear error."""
        record = self.manifest().stage(stage)
        if record and record.status == "running":
            raise WorkspaceError(
                f"{self.root}: stage '{stage}' started at {record.started} and did not "
                "finish (interrupted, or still running)",
                hint=f"re-run `swe {stage} -w {self.root}`",
            )
        if not record or not record.done:
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

    def base_dir(self) -> Path:
        """The base checkpoint: the recorded local folder, or the Hub snapshot of the recorded
        id at the recorded commit (or revision)."""
        from swe_cli.io.checkpoint import resolve_model

        model = self.load().get("model") or {}
        path = Path(str(model.get("path") or ""))
        if model.get("path") and (path / "config.json").exists():
            return path
        if not model.get("id"):
            raise WorkspaceError(
                "the workspace records no base model", hint="run `swe probe` first"
            )
        return resolve_model(str(model["id"]), model.get("commit") or model.get("revision")).path

    def eval_report(self, edit_hash: str) -> str | None:
        """The evaluation section of a model card from the last `swe eval -w`, only when that eval
        measured this very edit (its sha256 is recorded with the eval): a table of another edit,
        or of a re-solved one, is never shown. Built from WS/eval/report.json (report.md names
        local paths, which a published card must not)."""
        from swe_cli.io.files import check_inside
        from swe_cli.report import JSON_NAME, EvalReport, card_markdown

        path = self.eval_dir / JSON_NAME
        record = (self.load().get("stages") or {}).get("eval") or {}
        measured = (record.get("outputs") or {}).get("edit_sha256")
        if not path.exists() or record.get("status") != "done" or measured != edit_hash:
            return None
        check_inside(path, self.root, WorkspaceError)
        try:
            return card_markdown(EvalReport.read(path))
        except (OSError, ValueError, KeyError, TypeError):
            raise WorkspaceError(
                f"{path}: not a readable evaluation report",
                hint="re-run `swe eval` with -w, or delete the file",
            ) from None

    def gate_note(self, edit_hash: str, shipped_by: str = "") -> str | None:
        """What the shipping gate decided about this edit, when it was judged (align --eval
        records it); shipped_by names the command writing it anyway after a refusal."""
        record = (self.load().get("stages") or {}).get("gate") or {}
        outputs = record.get("outputs") or {}
        if outputs.get("edit_sha256") != edit_hash or "passed" not in outputs:
            return None
        if outputs["passed"]:
            return str(outputs.get("note") or "Shipping gate: passed.")
        reasons = "; ".join(map(str, outputs.get("reasons") or []))
        if shipped_by:
            return f"Shipping gate: **failed** ({reasons}); written anyway by {shipped_by}."
        return str(outputs.get("note") or f"Shipping gate: **failed**: {reasons}.")

    def record_languages(self, hrl: str, langs: list[str], prompt_sets: dict[str, Any]) -> None:
        """The HRL, the target languages and the prompt sets' sources and hashes (probe)."""
        manifest = self.load()
        manifest["langs"] = list(langs)
        manifest["hrl"] = hrl
        manifest["prompt_sets"] = prompt_sets
        self.save(manifest)

    # -- stage data ---------------------------------------------------------------------------
    def shard_paths(self, layer: int, prompt_set: str, lang: str) -> list[Path]:
        """The chunk files of one (layer, set, language) in order; the 5-digit pattern keeps 'zh'
        from matching 'zh-TW'."""
        pattern = f"{prompt_set}-{lang}-{'[0-9]' * 5}.safetensors"
        return sorted(self.layer_dir(layer).glob(pattern))

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


def load_acts(
    workspace: Workspace, layer: int, prompt_set: str, lang: str
) -> tuple[dict[str, Any], list[str]]:
    """All recorded shards of one (layer, set, language) from probe, concatenated in id order."""
    import torch

    paths = workspace.shard_paths(layer, prompt_set, lang)
    if not paths:
        raise WorkspaceError(
            f"no activations for layer {layer}, set '{prompt_set}', language '{lang}' in {workspace.root}",
            hint="re-run `swe probe` with this layer and language",
        )
    parts: dict[str, list[Any]] = {}
    ids: list[str] = []
    for path in paths:
        tensors, metadata = load_tensors(path)
        for key, value in tensors.items():
            parts.setdefault(key, []).append(value)
        ids += metadata.get("ids", "").split("\n")
    return {key: torch.cat(values) for key, values in parts.items()}, ids


def load_selected(workspace: Workspace, layer: int, lang: str) -> Any:
    """The selected safety neurons of one layer for one language (from localize)."""
    workspace.require_stage("localize")
    tensors, _ = load_tensors(workspace.masks_path)
    key = f"L{layer}/{lang}/selected"
    if key not in tensors:
        raise WorkspaceError(
            f"no safety-neuron selection for layer {layer} in '{lang}'",
            hint="probe and localize this layer first",
        )
    return tensors[key]


def load_moment(workspace: Workspace, layer: int) -> Any:
    """Mean second moment of the neuron activations over all streamed positions (probe)."""
    path = workspace.stats_path(layer)
    if not path.exists():
        raise WorkspaceError(
            f"no activation moments for layer {layer} in {workspace.root}",
            hint=f"re-run `swe probe` with --stats-layers including {layer}",
        )
    tensors, _ = load_tensors(path)
    return tensors["aa"] / float(tensors["count"].item())
