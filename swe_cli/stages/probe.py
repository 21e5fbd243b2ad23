"""The probe stage: run the model over the prompt sets and record, per chosen layer, the MLP input x,
the neuron activations a (the input of down_proj) and the residual-stream output at the last prompt
positions, into atomic activation shards; and stream per-layer second moments of x and a over ALL
token positions of harmless prompts with the model's own answers (and reference answers, when
given) and general text.

Only the fit split is probed: the held-out split is for evaluation and never feeds the edit."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swe_cli.architectures import Adapter, ModelShape, adapter_for, model_shape
from swe_cli.errors import SweError, WorkspaceError
from swe_cli.io.checkpoint import ResolvedModel, fingerprint, load_config
from swe_cli.io.files import atomic_write_text
from swe_cli.models import SharedModel, chat_text, generate, length_batches, load_model
from swe_cli.prompts import FIT, Prompt, PromptSet
from swe_cli.settings import ProbeConfig
from swe_cli.timing import Steps
from swe_cli.workspace import Workspace, save_tensors, valid_tensor_file

Progress = Callable[[str, int, int], None]

# Fixed chunking (independent of batch size) so an interrupted probe resumes on the same shards.
CHUNK_SIZE = 64
STATS_BUDGET_BYTES = 2 * 1024**3


HRL_CHECK_PROMPTS = 16  # HRL harmful fit prompts answered to see whether there is refusal to copy
HRL_CHECK_TOKENS = 16
LOW_HRL_REFUSAL = 0.3


@dataclass
class ProbeResult:
    layers: list[int]
    stats_layers: list[int]
    shards_written: int
    shards_skipped: int
    counts: dict[str, int] = field(default_factory=dict)
    hrl_refusal: float | None = None  # share of checked HRL harmful fit prompts refused
    # wall seconds of each step: load, activations, hrl_check, own_answers, moments
    steps: Steps = field(default_factory=Steps)


def hrl_refusal_rate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    lang: str,
    patterns: Sequence[Path],
    cache: Path,
) -> float | None:
    """How often the model refuses a few HRL harmful fit prompts (greedy, short, pattern judge):
    an edit copies the HRL's refusal, so a model that rarely refuses there has little to copy.
    None without a chat template (a base model) or without prompts. The answers are cached in
    the workspace file `cache`: a re-run generates none of them again."""
    from swe_cli.judges import PatternJudge
    from swe_cli.measure import refusal_rate

    chosen = list(prompts)[:HRL_CHECK_PROMPTS]
    if not chosen or getattr(tokenizer, "chat_template", None) is None:
        return None
    judge = PatternJudge.from_files(patterns)
    wanted = [(lang, prompt) for prompt in chosen]
    found = cached_answers(
        cache, model, tokenizer, wanted, max_new_tokens=HRL_CHECK_TOKENS, batch_size=16
    )
    answers = [found[(lang, prompt.id)] for prompt in chosen]
    return refusal_rate(judge.judge([], answers, lang))


def model_record(resolved: ResolvedModel, dtype: str) -> dict[str, Any]:
    """What a workspace remembers about its base model."""
    config = load_config(resolved.path)
    shape = model_shape(config)
    return {
        "id": resolved.model_id,
        "path": str(resolved.path),
        "revision": resolved.revision,
        "commit": resolved.commit,
        "fingerprint": fingerprint(resolved.path),
        "model_type": shape.model_type,
        "num_layers": shape.num_layers,
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size,
        "dtype": dtype,
    }


def resolve_layers(requested: Sequence[int] | None, num_layers: int) -> list[int]:
    if requested is None:
        return list(range(num_layers))
    layers = sorted({layer + num_layers if layer < 0 else layer for layer in requested})
    bad = [layer for layer in layers if not 0 <= layer < num_layers]
    if bad:
        raise WorkspaceError(
            f"layer(s) {bad} out of range: the model has {num_layers} layers",
            hint=f"choose layers between 0 and {num_layers - 1} (negative counts from the end)",
        )
    return layers


class Recorder:
    """Forward hooks on each recorded layer's MLP input, down_proj input and layer output."""

    def __init__(self, model: Any, adapter: Adapter, layers: Sequence[int]) -> None:
        self.captured: dict[tuple[int, str], Any] = {}
        self.handles: list[Any] = []
        for layer in layers:
            mlp = model.get_submodule(adapter.mlp_module(layer))
            down = model.get_submodule(adapter.down_module(layer))
            block = model.get_submodule(adapter.layer_module(layer))
            self.handles.append(mlp.register_forward_pre_hook(self._keep(layer, "x")))
            self.handles.append(down.register_forward_pre_hook(self._keep(layer, "a")))
            self.handles.append(block.register_forward_hook(self._keep_output(layer)))

    def _keep(self, layer: int, key: str) -> Callable[..., None]:
        def hook(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any] | None = None) -> None:
            self.captured[(layer, key)] = args[0].detach()

        return hook

    def _keep_output(self, layer: int) -> Callable[..., None]:
        def hook(_module: Any, _args: Any, output: Any) -> None:
            hidden = output[0] if isinstance(output, tuple) else output
            self.captured[(layer, "r")] = hidden.detach()

        return hook

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def sorted_batches(
    tokenizer: Any, texts: Sequence[str], size: int, max_length: int
) -> list[list[int]]:
    """Indices of texts in batches of similar token length (longest first): a batch is padded
    to its longest text, so batches in file order paid for padding that sorted ones do not."""
    lengths = [
        min(len(ids), max_length)
        for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    ]
    return length_batches(lengths, size)


def forward_last_positions(
    model: Any, tokenizer: Any, recorder: Recorder, texts: Sequence[str], config: ProbeConfig
) -> dict[tuple[int, str], Any]:
    """Run texts in batches; return per (layer, x|a|r) float32 tensors [n, positions, dim]."""
    import torch

    collected: dict[tuple[int, str], list[Any]] = {}
    order: list[int] = []
    for batch in sorted_batches(tokenizer, texts, config.batch_size, config.max_length):
        order += batch
        encoded = tokenizer(
            [texts[i] for i in batch],
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=config.max_length,
            add_special_tokens=False,
        )
        lengths = encoded["attention_mask"].sum(dim=1)
        if int(lengths.min()) < config.positions:
            raise SweError(
                f"a prompt has fewer than {config.positions} tokens",
                hint="lower --positions",
            )
        device = model.get_input_embeddings().weight.device
        recorder.captured.clear()
        with torch.no_grad():
            model(
                **{k: v.to(device) for k, v in encoded.items()}, use_cache=False, logits_to_keep=1
            )
        for key, tensor in recorder.captured.items():
            # left padding: the last prompt positions are the last columns for every row
            collected.setdefault(key, []).append(tensor[:, -config.positions :, :].float().cpu())
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order, dtype=torch.long)] = torch.arange(len(order))
    return {key: torch.cat(parts)[inverse] for key, parts in collected.items()}


def probe_chunks(
    workspace: Workspace,
    model: Any,
    tokenizer: Any,
    recorder: Recorder,
    prompt_set: str,
    lang: str,
    prompts: Sequence[Prompt],
    layers: Sequence[int],
    config: ProbeConfig,
    progress: Progress | None,
) -> tuple[int, int]:
    """Record one (set, language) in fixed chunks; finished chunks (same ids, texts and settings)
    are skipped on a re-run, and chunks beyond the current count are removed."""
    import hashlib

    written = skipped = 0
    chunks = list(batches(prompts, CHUNK_SIZE))
    for number, chunk in enumerate(chunks):
        paths = [workspace.shard_path(layer, prompt_set, lang, number) for layer in layers]
        ids = [prompt.id for prompt in chunk]
        texts = [chat_text(tokenizer, prompt.text) for prompt in chunk]
        metadata = {
            "ids": "\n".join(ids),
            "texts_sha256": hashlib.sha256("\x00".join(texts).encode()).hexdigest(),
            "lang": lang,
            "set": prompt_set,
            **_settings(config),
        }
        if all(_is_current(path, metadata) for path in paths):
            skipped += 1
        else:
            values = forward_last_positions(model, tokenizer, recorder, texts, config)
            for layer, path in zip(layers, paths, strict=True):
                tensors = {key: values[(layer, key)] for key in ("x", "a", "r")}
                save_tensors(path, tensors, metadata)
            written += 1
        if progress:
            progress(f"{prompt_set} {lang}", number + 1, len(chunks))
    for layer in layers:  # left by an earlier run over more prompts
        for stale in workspace.shard_paths(layer, prompt_set, lang)[len(chunks) :]:
            stale.unlink()
    return written, skipped


def _metadata(path: Path) -> dict[str, str]:
    from swe_cli.io.safetensors import read_header

    return read_header(path).metadata


def _settings(config: ProbeConfig) -> dict[str, str]:
    """The options that change recorded values: a file recorded under other ones is re-recorded
    (an interrupted run with other settings leaves such files behind)."""
    return {
        "positions": str(config.positions),
        "dtype": config.dtype,
        "max_length": str(config.max_length),
    }


def _is_current(path: Path, expected: dict[str, str]) -> bool:
    if not valid_tensor_file(path):
        return False
    metadata = _metadata(path)
    return all(metadata.get(key) == value for key, value in expected.items())


def stream_moments(
    workspace: Workspace,
    model: Any,
    tokenizer: Any,
    recorder: Recorder,
    texts: Sequence[str],
    stats_layers: Sequence[int],
    config: ProbeConfig,
    progress: Progress | None,
) -> None:
    """Accumulate sum x x^T, sum a a^T and the token count over every non-pad position into
    float64 sums (SecondMoment), never storing per-token values. Skipped when the same texts
    were already streamed."""
    import hashlib

    import torch

    texts_sha = hashlib.sha256("\x00".join(texts).encode()).hexdigest()
    paths = [workspace.stats_path(layer) for layer in stats_layers]
    metadata = {"texts": str(len(texts)), "texts_sha256": texts_sha, **_settings(config)}
    metadata.pop("positions")  # moments cover every position
    if all(_is_current(path, metadata) for path in paths):
        return

    sums: dict[tuple[int, str], SecondMoment] = {}
    count = 0
    all_batches = sorted_batches(tokenizer, texts, config.batch_size, config.max_length)
    for number, batch in enumerate(all_batches):
        encoded = tokenizer(
            [texts[i] for i in batch],
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=config.max_length,
            add_special_tokens=False,
        )
        device = model.get_input_embeddings().weight.device
        mask = encoded["attention_mask"].bool()
        recorder.captured.clear()
        with torch.no_grad():
            model(
                **{k: v.to(device) for k, v in encoded.items()}, use_cache=False, logits_to_keep=1
            )
        count += int(mask.sum())
        for layer in stats_layers:
            for key in ("x", "a"):
                values = recorder.captured[(layer, key)]
                rows = values[mask.to(values.device)]
                if (layer, key) not in sums:
                    sums[(layer, key)] = SecondMoment(rows.shape[1], rows.device)
                sums[(layer, key)].add(rows)
        if progress:
            progress("moments", number + 1, len(all_batches))
    for layer in stats_layers:
        save_tensors(
            workspace.stats_path(layer),
            {
                "xx": sums[(layer, "x")].total().cpu(),
                "aa": sums[(layer, "a")].total().cpu(),
                "count": torch.tensor([count], dtype=torch.int64),
            },
            metadata,
        )


MOMENT_BLOCK = 1024  # columns per product block: the only temporary is size x block float32


class SecondMoment:
    """sum over rows r of r r^T, kept in float64 and never re-allocated. Each batch's product is
    computed in float32 (twice as fast as float64 on CPUs, and a batch holds a few thousand
    rows: its relative rounding is about rows x 2^-24 at worst) and added in place, block of
    columns by block of columns of the upper triangle only (the sum is symmetric: half the
    multiplications), so a batch needs one size x MOMENT_BLOCK float32 temporary, not a second
    size x size matrix. total() mirrors the upper triangle into the lower one.

    Memory: 8 size^2 bytes per accumulator (640 MB at size 8960, 1.6 GB at 14336)."""

    def __init__(self, size: int, device: Any, block: int = MOMENT_BLOCK) -> None:
        import torch

        self.size, self.block = size, block
        self.sum = torch.zeros(size, size, dtype=torch.float64, device=device)

    def add(self, rows: Any) -> None:
        import torch

        rows = rows.to(torch.float32)
        for start in range(0, self.size, self.block):
            stop = min(start + self.block, self.size)
            self.sum[:stop, start:stop] += rows[:, :stop].T @ rows[:, start:stop]

    def total(self) -> Any:
        """The full symmetric sum (the accumulator itself, completed in place)."""
        for start in range(0, self.size, self.block):
            stop = min(start + self.block, self.size)
            # add() filled rows [:stop] of these columns; the rows below are the transpose of
            # the later columns of these rows, and the diagonal block takes its upper triangle
            # (a product's two triangles may differ in the last bit)
            self.sum[stop:, start:stop] = self.sum[start:stop, stop:].T
            block = self.sum[start:stop, start:stop]
            block.copy_(block.triu() + block.triu(1).T)
        return self.sum


def moment_texts(
    tokenizer: Any,
    harmless: PromptSet,
    general: PromptSet | None,
    langs: Sequence[str],
    own: Mapping[tuple[str, str], str] | None = None,
) -> list[str]:
    """What the preservation moments cover, prompt AND response tokens: each harmless fit prompt
    with the model's own answer (own, keyed by (lang, id): AlphaEdit's "what the model already
    does", with no references needed) and with its reference answer when the set has one (the
    prompt alone when it has neither), then the general text."""
    own = own or {}
    texts = []
    for lang in langs:
        for p in harmless.select(lang, FIT):
            answers = [a for a in (own.get((lang, p.id)), p.answer) if a]
            texts += [chat_text(tokenizer, p.text, a) for a in answers] or [
                chat_text(tokenizer, p.text)
            ]
    if general is not None:
        texts += [p.text for lang in general.langs() for p in general.select(lang, FIT)]
    return texts


def own_answers(
    workspace: Workspace,
    model: Any,
    tokenizer: Any,
    harmless: PromptSet,
    langs: Sequence[str],
    config: ProbeConfig,
    progress: Progress | None,
) -> dict[tuple[str, str], str]:
    """The model's greedy answers (config.own_answers tokens at most) to the harmless fit
    prompts, cached in WS/answers/harmless.jsonl keyed by language, id, prompt text and length,
    so a re-run generates only what is missing. Empty without a chat template (a base model has
    no answer turn) or with own_answers 0."""
    if config.own_answers == 0 or getattr(tokenizer, "chat_template", None) is None:
        return {}

    def advance(done: int, total: int) -> None:
        if progress:
            progress("own answers", done, total)

    wanted = [(lang, p) for lang in langs for p in harmless.select(lang, FIT)]
    return cached_answers(
        workspace.answers_path,
        model,
        tokenizer,
        wanted,
        max_new_tokens=config.own_answers,
        batch_size=config.batch_size,
        progress=advance,
    )


def cached_answers(
    path: Path,
    model: Any,
    tokenizer: Any,
    wanted: Sequence[tuple[str, Prompt]],
    *,
    max_new_tokens: int,
    batch_size: int,
    progress: Callable[[int, int], None] | None = None,
) -> dict[tuple[str, str], str]:
    """Greedy answers to (language, prompt) pairs, cached in the JSONL file at path (a
    workspace is bound to one model) keyed by language, id, prompt text and length: only the
    missing ones are generated, and the file is rewritten atomically."""
    cached = _read_answers(path)
    answers: dict[tuple[str, str], str] = {}
    missing = []
    for lang, prompt in wanted:
        key = _answer_key(lang, prompt, max_new_tokens)
        if key in cached:
            answers[(lang, prompt.id)] = cached[key]
        else:
            missing.append((lang, prompt))
    if missing:
        generated = generate(
            model,
            tokenizer,
            [prompt.text for _, prompt in missing],
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            on_batch=(lambda done: progress(done, len(missing))) if progress else None,
        )
        for (lang, prompt), answer in zip(missing, generated, strict=True):
            answers[(lang, prompt.id)] = answer
            cached[_answer_key(lang, prompt, max_new_tokens)] = answer
        lines = [
            json.dumps(
                {**dict(zip(ANSWER_KEY, key, strict=True)), "answer": answer}, ensure_ascii=False
            )
            for key, answer in cached.items()
        ]
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, "".join(line + "\n" for line in lines))
    return answers


ANSWER_KEY = ("lang", "id", "prompt_sha256", "max_new_tokens")


def _answer_key(lang: str, prompt: Prompt, max_new_tokens: int) -> tuple[str, str, str, int]:
    digest = hashlib.sha256(prompt.text.encode()).hexdigest()
    return (lang, prompt.id, digest, max_new_tokens)


def _read_answers(path: Path) -> dict[tuple[Any, ...], str]:
    """The cached answers; an unreadable cache is regenerated, never trusted in part."""
    if not path.is_file():
        return {}
    cached = {}
    try:
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            cached[tuple(row[k] for k in ANSWER_KEY)] = str(row["answer"])
    except (ValueError, KeyError, TypeError):
        return {}
    return cached


def choose_stats_layers(
    requested: Sequence[int] | None, layers: Sequence[int], shape: ModelShape
) -> list[int]:
    if requested is not None:
        missing = sorted(set(requested) - set(layers))
        if missing:
            raise WorkspaceError(
                f"--stats-layers {missing} are not among the probed layers",
                hint="add them to --layers",
            )
        return sorted(requested)
    per_layer = 8 * (shape.hidden_size**2 + shape.intermediate_size**2)
    if per_layer * len(layers) <= STATS_BUDGET_BYTES:
        return list(layers)
    return []


def check_sets(harmful: PromptSet, harmless: PromptSet, langs: Sequence[str]) -> None:
    for prompt_set in (harmful, harmless):
        for lang in langs:
            if not prompt_set.select(lang, FIT):
                raise WorkspaceError(
                    f"the {prompt_set.name} set has no fit prompts in '{lang}'",
                    hint="add prompts or lower --heldout-fraction",
                )


def run_probe(
    workspace: Workspace,
    resolved: ResolvedModel,
    harmful: PromptSet,
    harmless: PromptSet,
    general: PromptSet | None,
    config: ProbeConfig,
    progress: Progress | None = None,
    shared: SharedModel | None = None,
) -> ProbeResult:
    """Bind the workspace to the model, save the prompt sets, and record activations and moments.
    With `shared` (the run's one load of this model, `swe align`), the model comes from it
    instead of a load of probe's own."""
    record = model_record(resolved, config.dtype)
    adapter = adapter_for(record["model_type"])
    shape = model_shape(load_config(resolved.path))
    layers = resolve_layers(config.layers, shape.num_layers)
    stats_layers = choose_stats_layers(config.stats_layers, layers, shape)
    all_langs = [config.hrl, *[lang for lang in config.langs if lang != config.hrl]]
    check_sets(harmful, harmless, all_langs)
    workspace.bind_model(record)
    recorded = workspace.manifest().stage("probe")
    previous = recorded.params if recorded else {}
    workspace.begin_stage("probe")  # a killed probe leaves 'running', never the old 'done'
    if previous and previous.get("positions") != config.positions:
        _clear_acts(workspace)
    for prompt_set in (harmful, harmless, general):
        if prompt_set is not None:
            prompt_set.to_jsonl(workspace.prompts_dir / f"{prompt_set.name}.jsonl")

    result = ProbeResult(layers, stats_layers, 0, 0)
    timed = result.steps.timed
    with timed("load"):
        if shared is not None:
            check_shared(shared, resolved, config)
            model, tokenizer = shared.get(float32_on_cpu=False)
        else:
            model, tokenizer = load_model(
                resolved.path,
                config.device,
                config.dtype,
                device_map=config.device_map,
                float32_on_cpu=False,
            )
    recorder = Recorder(model, adapter, layers)
    try:
        with timed("activations"):
            for prompt_set in (harmful, harmless):
                for lang in all_langs:
                    prompts = prompt_set.select(lang, FIT)
                    result.counts[f"{prompt_set.name}-{lang}"] = len(prompts)
                    written, skipped = probe_chunks(
                        workspace,
                        model,
                        tokenizer,
                        recorder,
                        prompt_set.name,
                        lang,
                        prompts,
                        layers,
                        config,
                        progress,
                    )
                    result.shards_written += written
                    result.shards_skipped += skipped
        with timed("hrl_check"):
            result.hrl_refusal = hrl_refusal_rate(
                model,
                tokenizer,
                harmful.select(config.hrl, FIT),
                config.hrl,
                config.patterns,
                cache=workspace.answers_path.with_name("hrl_check.jsonl"),
            )
        if stats_layers:
            with timed("own_answers"):
                own = own_answers(
                    workspace, model, tokenizer, harmless, all_langs, config, progress
                )
            texts = moment_texts(tokenizer, harmless, general, all_langs, own)
            stats_recorder = Recorder(model, adapter, stats_layers)
            recorder.close()
            recorder = stats_recorder
            with timed("moments"):
                stream_moments(
                    workspace, model, tokenizer, recorder, texts, stats_layers, config, progress
                )
    finally:
        recorder.close()

    workspace.record_languages(
        config.hrl,
        [lang for lang in config.langs if lang != config.hrl],
        {
            s.name: {"source": s.source, "sha256": s.sha256(), "count": len(s.prompts)}
            for s in (harmful, harmless, general)
            if s is not None
        },
    )
    workspace.record_stage(
        "probe",
        {
            "layers": layers,
            "stats_layers": stats_layers,
            "positions": config.positions,
            "batch_size": config.batch_size,
            "device": config.device,
            "dtype": config.dtype,
            "max_length": config.max_length,
            "own_answers": config.own_answers,
            "chunk_size": CHUNK_SIZE,
        },
        {
            "shards_written": result.shards_written,
            "shards_skipped": result.shards_skipped,
            "counts": result.counts,
            "hrl_refusal": result.hrl_refusal,
            "seconds": result.steps.rounded(),
        },
    )
    workspace.invalidate_after("probe")
    return result


def check_shared(shared: SharedModel, resolved: ResolvedModel, config: ProbeConfig) -> None:
    """A shared model must be the one probe would load, loaded the way probe would load it."""
    if not shared.serves(resolved.path, config.device, config.dtype, None, config.device_map):
        raise SweError(
            f"probe was handed {shared.path} ({shared.device}, {shared.dtype}) but probes "
            f"{resolved.path} ({config.device}, {config.dtype})",
            hint="this is a bug in swe: report it",
        )


def _clear_acts(workspace: Workspace) -> None:
    import shutil

    shutil.rmtree(workspace.acts_dir, ignore_errors=True)
