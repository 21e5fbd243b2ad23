"""The one place that loads a causal LM and talks to it: `load_model` (local folder or Hub id,
dtype and device rules, a left-padding tokenizer), `SharedModel` (one load of a base model that
the stages of one run share), chat formatting, and batched greedy generation. Probe, tune, eval
and the guard judge all go through here. torch/transformers are imported lazily."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swe_cli import DISTRIBUTION
from swe_cli.errors import CheckpointError, EvalError, SweError
from swe_cli.settings import DTYPES


def load_model(
    model: str | Path,
    device: str = "cpu",
    dtype: str = "auto",
    *,
    revision: str | None = None,
    device_map: str | None = None,
    float32_on_cpu: bool = True,
) -> tuple[Any, Any]:
    """(model in eval mode, tokenizer) from a local folder or a Hub id.

    dtype "auto" is the checkpoint's dtype, except on the CPU where it is float32 unless
    float32_on_cpu is False (probe records activations in the checkpoint's own dtype).
    device "auto" or a device_map spreads the model with accelerate. The tokenizer pads and
    truncates on the left, so the last prompt positions are the last columns of a batch."""
    shared = _SERVING.get()
    if shared is not None and shared.serves(model, device, dtype, revision, device_map):
        return shared.get(float32_on_cpu=float32_on_cpu)
    return _load(
        model,
        device,
        dtype,
        revision=revision,
        device_map=device_map,
        float32_on_cpu=float32_on_cpu,
    )


def _load(
    model: str | Path,
    device: str,
    dtype: str,
    *,
    revision: str | None,
    device_map: str | None,
    float32_on_cpu: bool,
) -> tuple[Any, Any]:
    import torch
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    from swe_cli.io.checkpoint import resolve_model

    transformers_logging.disable_progress_bar()
    if dtype not in DTYPES:
        raise EvalError(f"unknown dtype '{dtype}'", hint=f"use one of {', '.join(DTYPES)}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SweError(
            "--device cuda was asked for but no CUDA device is available", hint="use --device cpu"
        )
    if dtype != "auto":
        torch_dtype: Any = getattr(torch, dtype)
    else:
        torch_dtype = torch.float32 if device == "cpu" and float32_on_cpu else "auto"
    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    device_map = device_map or ("auto" if device == "auto" else None)
    if device_map:
        try:
            import accelerate  # noqa: F401
        except ImportError:
            raise SweError(
                "--device-map needs the accelerate package",
                hint=f"pip install '{DISTRIBUTION}[scale]'",
            ) from None
        kwargs["device_map"] = device_map
    path = resolve_model(str(model), revision).path
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        loaded = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        if not device_map:
            loaded = loaded.to(device)
    except (OSError, ValueError, RuntimeError, KeyError, ImportError, SafetensorError) as error:
        damaged = isinstance(error, SafetensorError)
        raise CheckpointError(
            f"cannot load '{model}' ({type(error).__name__}: {str(error)[:200]})".splitlines()[0],
            hint="a weight file is truncated or damaged: re-download or re-write the checkpoint"
            if damaged
            else "check the path or Hub id, the device and the dtype",
        ) from None
    loaded.eval()
    tokenizer.padding_side = "left"
    tokenizer.truncation_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return loaded, tokenizer


@dataclass
class SharedModel:
    """A base model loaded once for all the stages of one run (`swe align`: probe, select, the
    in-memory eval) instead of once per stage; `get` loads it on first use. Each stage gets the
    weights its own load_model call would have given. On the CPU with dtype auto, probe asks for
    the checkpoint's own dtype and eval for float32 (float32_on_cpu): a float16/bfloat16 model is
    then cast to float32 in place, which is exact for the weights (every half-precision value is
    a float32 value); a model holding a half-precision buffer (computed at load, maybe rounded)
    is loaded again instead. Stages that patch the model restore it bit for bit
    (measure.edit_applied), so the next stage gets the base unchanged."""

    path: Path
    device: str = "cpu"
    dtype: str = "auto"
    revision: str | None = None
    device_map: str | None = None
    loads: int = 0  # how many times the weights were read from disk
    _loaded: tuple[Any, Any] | None = field(default=None, repr=False)
    _as: str = field(default="", repr=False)  # what the loaded copy is: "auto", "float32", ...

    def get(self, *, float32_on_cpu: bool = True) -> tuple[Any, Any]:
        """(model, tokenizer) as load_model(path, device, dtype, float32_on_cpu=...) gives them."""
        wanted = self._resolved(float32_on_cpu)
        if self._loaded is not None and self._as != wanted and not self._cast(wanted):
            self.release()
        if self._loaded is None:
            self._loaded = _load(
                self.path,
                self.device,
                self.dtype,
                revision=self.revision,
                device_map=self.device_map,
                float32_on_cpu=float32_on_cpu,
            )
            self._as = wanted
            self.loads += 1
        return self._loaded

    def _resolved(self, float32_on_cpu: bool) -> str:
        """The dtype load_model resolves the request to ("auto": the checkpoint's own)."""
        if self.dtype == "auto" and self.device == "cpu" and float32_on_cpu:
            return "float32"
        return self.dtype

    def _cast(self, wanted: str) -> bool:
        """Turn the loaded copy into what a load as `wanted` gives, when that is exact."""
        import torch

        assert self._loaded is not None
        model = self._loaded[0]
        if self._as != "auto" or wanted != "float32" or self.device_map:
            return False
        if model.dtype != torch.float32:
            if any(b.is_floating_point() and b.dtype != torch.float32 for b in model.buffers()):
                return False
            model.to(torch.float32)
            model.config.dtype = torch.float32
        self._as = "float32"
        return True

    def serves(
        self,
        model: str | Path,
        device: str,
        dtype: str,
        revision: str | None,
        device_map: str | None,
    ) -> bool:
        """Whether load_model(model, device, dtype, ...) asks for this model, loaded this way."""
        return Path(model).resolve() == Path(self.path).resolve() and (
            device,
            dtype,
            revision,
            device_map,
        ) == (self.device, self.dtype, self.revision, self.device_map)

    @contextlib.contextmanager
    def serving(self) -> Iterator[None]:
        """Within the block, load_model answers a request for this model with the shared copy
        (for a stage that loads its model itself, such as select)."""
        token = _SERVING.set(self)
        try:
            yield
        finally:
            _SERVING.reset(token)

    def release(self) -> None:
        """Drop the loaded copy (its memory is freed once no stage holds it)."""
        self._loaded, self._as = None, ""


_SERVING: contextvars.ContextVar[SharedModel | None] = contextvars.ContextVar(
    "swe_shared_model", default=None
)


def chat_text(tokenizer: Any, prompt: str, answer: str | None = None) -> str:
    """The prompt as the model sees it: chat template with the generation prompt (and the answer).
    Without a chat template, the raw text (probe records base models too)."""
    messages = [{"role": "user", "content": prompt}]
    if getattr(tokenizer, "chat_template", None) is None:
        return prompt if answer is None else f"{prompt} {answer}"
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return text if answer is None else text + answer


def format_chat(
    tokenizer: Any, messages: list[dict[str, str]], *, add_generation_prompt: bool = True
) -> str:
    """The conversation rendered by the tokenizer's own chat template."""
    if not getattr(tokenizer, "chat_template", None):
        raise EvalError(
            "the tokenizer has no chat template",
            hint="evaluate an instruct/chat model whose tokenizer ships a chat template",
        )
    text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    return str(text)


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every token that ends a turn: the generation config's eos ids and the tokenizer's."""
    ids: list[int] = []
    configured = getattr(model.generation_config, "eos_token_id", None)
    for value in (configured, tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.append(value)
        elif isinstance(value, (list, tuple)):
            ids.extend(int(v) for v in value)
    if not ids:
        raise EvalError("the model defines no end-of-sequence token", hint="fix its tokenizer")
    return list(dict.fromkeys(ids))


def encode_texts(tokenizer: Any, texts: Sequence[str], *, special_tokens: bool) -> list[list[int]]:
    return [list(tokenizer(text, add_special_tokens=special_tokens)["input_ids"]) for text in texts]


def pad_rows(rows: Sequence[list[int]], pad_id: int, *, left: bool) -> tuple[Any, Any]:
    import torch

    width = max(len(row) for row in rows)
    ids, mask = [], []
    for row in rows:
        padding = [pad_id] * (width - len(row))
        ids.append(padding + row if left else row + padding)
        ones, zeros = [1] * len(row), [0] * (width - len(row))
        mask.append(zeros + ones if left else ones + zeros)
    return torch.tensor(ids), torch.tensor(mask)


def padded_positions(attention_mask: Any) -> Any:
    """Position ids as model.generate gives them under padding: real tokens counted from 0,
    pads at 0."""
    return (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)


def cached_step_logits(
    model: Any, input_ids: Any, attention_mask: Any, positions: Any, cache: Any
) -> Any:
    """The logits after the last token of each row (batch x vocabulary), the rows' keys and
    values appended to ``cache``: one step of cached decoding, or the prompt pass before it."""
    return model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=positions,
        cache=cache,
        use_cache=True,
        logits_to_keep=1,
    ).logits[:, -1, :]


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first), to waste little padding."""
    if batch_size < 1:
        raise EvalError(f"batch size must be at least 1, not {batch_size}", hint="--batch-size")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def generate_from_texts(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    on_batch: Callable[[int], None] | None = None,
) -> list[str]:
    """Greedy continuations of already formatted texts, decoded up to the first eos."""
    import torch
    from transformers import GenerationConfig

    if max_new_tokens < 1:
        raise EvalError("max_new_tokens must be at least 1", hint="--max-new-tokens")
    if not texts:
        return []
    eos = _eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        eos_token_id=eos,
        pad_token_id=pad_id,
    )
    encoded = encode_texts(tokenizer, texts, special_tokens=False)
    outputs = [""] * len(texts)
    done = 0
    for batch in length_batches([len(row) for row in encoded], batch_size):
        input_ids, attention_mask = pad_rows([encoded[i] for i in batch], pad_id, left=True)
        with torch.inference_mode():
            rows = greedy_tokens(
                model,
                input_ids.to(model.device),
                attention_mask.to(model.device),
                config,
                eos,
            )
        for index, row in zip(batch, rows, strict=True):
            outputs[index] = tokenizer.decode(_until(row, eos), skip_special_tokens=True).strip()
        done += len(batch)
        if on_batch is not None:
            on_batch(done)
    return outputs


def greedy_tokens(
    model: Any, input_ids: Any, attention_mask: Any, config: Any, eos: Sequence[int]
) -> list[list[int]]:
    """The new tokens of each row, greedy, as model.generate(generation_config=config) picks
    them, but a row leaves the batch at its first eos: model.generate keeps every row until the
    last one ends, so one long answer made the whole batch pay for every step. Each row's
    tokens end with its eos (or stop at config.max_new_tokens).

    The model's own logits processors (a checkpoint's repetition penalty, say) are applied as
    model.generate applies them; a model whose generation config asks for anything the
    processors do not cover (beams, sampling, an assistant) goes through model.generate."""
    import torch
    from transformers import DynamicCache, LogitsProcessorList

    try:
        merged, _ = model._prepare_generation_config(config)
        processors = model._get_logits_processor(
            generation_config=merged,
            input_ids_seq_length=input_ids.shape[1],
            logits_processor=LogitsProcessorList(),
            device=input_ids.device,
        )
    except (AttributeError, TypeError, ValueError):
        merged, processors = None, None
    if merged is None or processors is None or not _plain_greedy(merged):
        generated = model.generate(
            input_ids=input_ids, attention_mask=attention_mask, generation_config=config
        )
        return generated[:, input_ids.shape[1] :].tolist()
    stop = torch.tensor(list(eos), device=input_ids.device)
    rows: list[list[int]] = [[] for _ in range(input_ids.shape[0])]
    active = torch.arange(input_ids.shape[0], device=input_ids.device)
    cache = DynamicCache(config=model.config)
    sequences = input_ids
    positions = padded_positions(attention_mask)
    step_ids = input_ids
    for step in range(config.max_new_tokens):
        logits = cached_step_logits(model, step_ids, attention_mask, positions, cache)
        scores = processors(sequences, logits.float())
        tokens = scores.argmax(-1)
        for row, token in zip(active.tolist(), tokens.tolist(), strict=True):
            rows[row].append(token)
        if step + 1 == config.max_new_tokens:
            break
        running = ~torch.isin(tokens, stop)
        if not bool(running.any()):
            break
        if not bool(running.all()):
            keep = running.nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            active, tokens = active[keep], tokens[keep]
            sequences, attention_mask = sequences[keep], attention_mask[keep]
            positions = positions[keep]
        sequences = torch.cat([sequences, tokens[:, None]], dim=1)
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(active), 1))], 1)
        positions = positions[:, -1:] + 1
        step_ids = tokens[:, None]
    return rows


def _plain_greedy(config: Any) -> bool:
    """Greedy search with one beam and nothing that needs model.generate's machinery."""

    def value(name: str) -> Any:
        return getattr(config, name, None)

    return (
        not value("do_sample")
        and (value("num_beams") or 1) == 1
        and (value("num_return_sequences") or 1) == 1
        and value("assistant_model") is None
        and value("prompt_lookup_num_tokens") is None
        and value("cache_implementation") in (None, "dynamic")
    )


def _until(tokens: list[int], stop: Sequence[int]) -> list[int]:
    for position, token in enumerate(tokens):
        if token in stop:
            return tokens[:position]
    return tokens


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    on_batch: Callable[[int], None] | None = None,
) -> list[str]:
    """Greedy answers to user prompts, each formatted with the chat template and its
    generation prompt. Results do not depend on batch_size (left padding + attention mask)."""
    texts = [format_chat(tokenizer, [{"role": "user", "content": p}]) for p in prompts]
    return generate_from_texts(
        model,
        tokenizer,
        texts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        on_batch=on_batch,
    )
