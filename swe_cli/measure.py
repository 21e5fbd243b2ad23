"""How the model behaves, measured one way for every stage that asks: the share of answers a
judge calls refused, the next-token KL between base and edited logits, and the in-memory patch
that lets one loaded model be both base and edited. Probe's HRL check, select, tune's
confirmation and eval all measure through here, so a refusal rate means the same everywhere."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from swe_cli.errors import EvalError
from swe_cli.judges import REFUSED, Judge

# (weight parameter, row indices or None, column indices or None, delta for that block)
WeightChange = tuple[Any, Any, Any, Any]


# -- refusal -------------------------------------------------------------------------------------
def refusal_rate(verdicts: Sequence[str]) -> float:
    """The share of verdicts that are refusals; nan without verdicts (no prompts, no rate)."""
    if not verdicts:
        return math.nan
    return sum(verdict == REFUSED for verdict in verdicts) / len(verdicts)


def judged_answers(
    model: Any,
    tokenizer: Any,
    judge: Judge,
    texts: Sequence[str],
    lang: str,
    *,
    max_new_tokens: int,
    batch_size: int,
) -> list[str]:
    """The judge's verdict on the model's greedy answer to each prompt of one language."""
    from swe_cli.models import generate

    if not texts:
        return []
    answers = generate(
        model, tokenizer, list(texts), max_new_tokens=max_new_tokens, batch_size=batch_size
    )
    return judge.judge(list(texts), answers, lang)


# -- next-token KL -------------------------------------------------------------------------------
def logits_of(model: Any, input_ids: Any, attention_mask: Any) -> Any:
    import torch

    with torch.inference_mode():
        output = model(
            input_ids=input_ids.to(model.device), attention_mask=attention_mask.to(model.device)
        )
    return output.logits.float()


def next_token_kl(
    base: Any,
    edited: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    batch_size: int = 16,
    on_batch: Callable[[int], None] | None = None,
) -> float:
    """Mean KL(base || edited) of next-token distributions over the positions of each
    chat-templated prompt, then over prompts. Exactly 0.0 for identical weights."""
    return paired_kl(
        lambda ids, mask: (logits_of(base, ids, mask), logits_of(edited, ids, mask)),
        tokenizer,
        prompts,
        batch_size=batch_size,
        on_batch=on_batch,
    )


def paired_kl(
    logits: Callable[[Any, Any], tuple[Any, Any]],
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    batch_size: int = 16,
    on_batch: Callable[[int], None] | None = None,
) -> float:
    """next_token_kl for any pair of logits: logits(input_ids, attention_mask) gives the base's
    and the edited model's logits of one batch (two models, or one model with and without an
    in-memory edit, as `swe select` measures)."""
    import torch

    from swe_cli.models import encode_texts, format_chat, length_batches, pad_rows

    if not prompts:
        raise EvalError("no prompts to compute the KL divergence on", hint="check --harmless")
    texts = [format_chat(tokenizer, [{"role": "user", "content": p}]) for p in prompts]
    encoded = encode_texts(tokenizer, texts, special_tokens=False)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    per_prompt: list[float] = []
    done = 0
    for batch in length_batches([len(row) for row in encoded], batch_size):
        # Right padding: pad tokens come after every real one, so causal attention ignores them.
        input_ids, attention_mask = pad_rows([encoded[i] for i in batch], pad_id, left=False)
        base_logits, edited_logits = logits(input_ids, attention_mask)
        for role, values in (("base", base_logits), ("edited", edited_logits)):
            finite = torch.isfinite(values).all(-1) | ~attention_mask.to(values.device).bool()
            if not bool(finite.all()):
                row = int((~finite).any(-1).nonzero()[0])
                raise EvalError(
                    f"the {role} model's logits are not finite (nan or inf) on harmless prompt "
                    f"{done + row + 1} of {len(prompts)}: {prompts[batch[row]][:60]!r}",
                    hint="the weights hold nan/inf values: check the edit or adapter "
                    "(`swe verify`) and --dtype",
                )
        base_log = torch.log_softmax(base_logits, dim=-1)
        edited_log = torch.log_softmax(edited_logits, dim=-1)
        if base_log.shape != edited_log.shape:
            raise EvalError(
                "base and edited models have different vocabularies",
                hint="--baseline must be the model the edit was made from",
            )
        kl = (base_log.exp() * (base_log - edited_log.to(base_log.device))).sum(-1)
        mask = attention_mask.to(kl.device).float()
        per_prompt += ((kl * mask).sum(-1) / mask.sum(-1)).tolist()
        done += len(batch)
        if on_batch is not None:
            on_batch(done)
    mean = sum(per_prompt) / len(per_prompt)
    if not math.isfinite(mean):
        raise EvalError(
            f"the KL divergence on the harmless prompts is {mean}",
            hint="check the edit or adapter (`swe verify`) and --dtype",
        )
    return max(0.0, mean)  # rounding can make a KL of identical models a hair below zero


# -- the in-memory patch -------------------------------------------------------------------------
@contextlib.contextmanager
def patched(changes: Sequence[WeightChange]) -> Iterator[None]:
    """Add each delta to its weight block; restore the exact original values afterwards."""
    import torch

    saved = []
    with torch.no_grad():
        for parameter, rows, columns, delta in changes:
            index = _block(rows, columns)
            saved.append((parameter, index, parameter[index].clone()))
            block = parameter[index].float() + delta.to(parameter.device)
            parameter[index] = block.to(parameter.dtype)
    try:
        yield
    finally:
        with torch.no_grad():
            for parameter, index, original in reversed(saved):  # overlapping blocks too
                parameter[index] = original


def _block(rows: Any, columns: Any) -> Any:
    if rows is not None:
        return (rows.to("cpu").long(),)
    if columns is not None:
        return (slice(None), columns.to("cpu").long())
    return (slice(None), slice(None))


# -- a checkpoint edit patched into the loaded model ---------------------------------------------
class EditNotInMemory(EvalError):
    """The edit names a tensor that the loaded model does not hold under that name and shape."""


@contextlib.contextmanager
def edit_applied(model: Any, edit: Any) -> Iterator[None]:
    """The loaded base becomes the edited model in place, as `swe apply` writes it: each edited
    block is base + delta in float32, rounded to the checkpoint's dtype (then to the loaded
    dtype); the original values are restored bit for bit afterwards."""
    import torch

    from swe_cli.io.safetensors import torch_dtype_of

    saved = []
    with torch.no_grad():
        try:
            for item in edit.tensors:
                parameter = _parameter(model, item.name, tuple(item.shape))
                rows = torch.as_tensor(item.rows, dtype=torch.long, device=parameter.device)
                original = parameter[rows].clone()
                saved.append((parameter, rows, original))
                delta = torch.as_tensor(item.delta, dtype=torch.float32).to(parameter.device)
                if item.cols is None:
                    before = original.float()
                else:
                    cols = torch.as_tensor(item.cols, dtype=torch.long, device=parameter.device)
                    before = original[:, cols].float()
                changed = (before + delta).to(torch_dtype_of(item.dtype)).to(parameter.dtype)
                if item.cols is None:
                    parameter[rows] = changed
                else:
                    block = original.clone()
                    block[:, cols] = changed
                    parameter[rows] = block
            yield
        finally:
            for parameter, rows, original in reversed(saved):
                parameter[rows] = original


def _parameter(model: Any, name: str, shape: tuple[int, ...]) -> Any:
    try:
        parameter = model.get_parameter(name)
    except AttributeError:
        raise EditNotInMemory(f"the loaded model has no parameter '{name}'") from None
    if parameter.device.type == "meta":  # offloaded by accelerate: no values to patch here
        raise EditNotInMemory(f"'{name}' is offloaded in the loaded model")
    if tuple(parameter.shape) != shape:
        raise EditNotInMemory(
            f"'{name}' has shape {tuple(parameter.shape)} in the loaded model, {shape} in the edit"
        )
    return parameter
