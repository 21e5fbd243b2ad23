"""The model card: README.md of an edited checkpoint or an edit artifact, with the Hub's YAML
front matter (base model, languages, licence, tags), the evaluation section and what was edited.
huggingface_hub is imported only to write the metadata block (its ModelCardData)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from swe_cli import DISTRIBUTION

CARD_TAGS = ("safety", "multilingual", "model-editing", "sparse-weight-editing", "swe")
LICENSE_KEYS = ("license", "license_name", "license_link")


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
# residual and refusal share one solver (refusal only changes the target), so one parameter list
_RESIDUAL_PARAMETERS = (
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
    "harmless_targets",
    "lang_strength",
    "positions",
)
METHOD_PARAMETERS = {
    "paper": ("layers", "rank", "gamma", "lam", "projections", "hard", "threshold"),
    "residual": _RESIDUAL_PARAMETERS,
    "refusal": _RESIDUAL_PARAMETERS,
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
    # the language-mapping options name themselves only when they changed the target
    if not chosen.get("harmless_targets"):
        chosen.pop("harmless_targets", None)
    if not chosen.get("lang_strength"):
        chosen.pop("lang_strength", None)
    if chosen.get("positions") == 1:
        chosen.pop("positions", None)
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
