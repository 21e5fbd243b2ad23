"""Trainer of the model organism: a small Llama trained from scratch with plain torch on CPU.

Training is seeded and deterministic: the same seed, step count and thread count give
bit-identical weights (torch deterministic algorithms, a fixed number of intra-op threads, data
drawn from a seeded ``random.Random``). Chat examples are trained on the assistant reply only
(supervised fine-tuning style); plain texts on every token.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from swe_cli.organism import tokenizer as tok
from swe_cli.organism.world import ChatExample, Example, TrainingData

if TYPE_CHECKING:
    import torch
    from transformers import LlamaForCausalLM

IGNORE = -100
BUCKETS = 8  # batches drawn together and grouped by length


@dataclass(frozen=True)
class TrainConfig:
    """Model size and optimisation schedule of the organism."""

    hidden_size: int = 128
    intermediate_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    steps: int = 1500
    batch_size: int = 64
    learning_rate: float = 3e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    threads: int = 1

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def encode(example: Example, vocab: dict[str, int]) -> tuple[list[int], list[int]]:
    """Token ids and labels of one example; labels are IGNORE where no loss is taken."""
    if isinstance(example, ChatExample):
        prompt = [
            vocab[tok.BOS],
            vocab[tok.USER],
            *(vocab[w] for w in example.prompt.split()),
            vocab[tok.EOS],
            vocab[tok.ASSISTANT],
        ]
        reply = [*(vocab[w] for w in example.response.split()), vocab[tok.EOS]]
        return prompt + reply, [IGNORE] * len(prompt) + reply
    ids = [vocab[tok.BOS], *(vocab[w] for w in example.text.split()), vocab[tok.EOS]]
    return ids, [IGNORE, *ids[1:]]


def _batches(
    data: TrainingData, vocab: dict[str, int], rng: random.Random, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    import torch

    pad = vocab[tok.PAD]
    while True:
        # Draw several batches at once and group them by length: a third less padding to compute.
        pool = [encode(data.sample(rng), vocab) for _ in range(batch_size * BUCKETS)]
        pool.sort(key=lambda pair: len(pair[0]))
        groups = [pool[i : i + batch_size] for i in range(0, len(pool), batch_size)]
        rng.shuffle(groups)
        for encoded in groups:
            width = max(len(ids) for ids, _ in encoded)
            # Right padding: with a causal mask the pads after a sequence never influence it.
            input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in encoded])
            labels = torch.tensor([lab + [IGNORE] * (width - len(lab)) for _, lab in encoded])
            yield input_ids, labels


def model_config(vocab: dict[str, int], config: TrainConfig) -> object:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        max_position_embeddings=128,
        hidden_act="silu",
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=vocab[tok.BOS],
        eos_token_id=vocab[tok.EOS],
        pad_token_id=vocab[tok.PAD],
    )


@contextmanager
def deterministic_torch(threads: int) -> Iterator[None]:
    """Fix threads and algorithms for the duration of a build; restore the caller's settings."""
    import torch

    previous_threads = torch.get_num_threads()
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(previous_threads)
        torch.use_deterministic_algorithms(previous_deterministic)


def train(
    data: TrainingData,
    vocab: dict[str, int],
    *,
    seed: int,
    config: TrainConfig,
    progress: Callable[[int, int], None] | None = None,
) -> LlamaForCausalLM:
    """Train a fresh Llama on ``data``; returns the model in eval mode (float32, CPU)."""
    import torch
    from transformers import LlamaForCausalLM

    with deterministic_torch(config.threads):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(model_config(vocab, config))
        model.train()
        optimizer = torch.optim.AdamW(
            model.parameters(),
            lr=config.learning_rate,
            betas=(0.9, 0.98),
            weight_decay=config.weight_decay,
        )
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: _learning_rate_factor(step, config)
        )
        batches = _batches(
            data, vocab, random.Random(f"swe-organism-data-{seed}"), config.batch_size
        )
        for step in range(config.steps):
            input_ids, labels = next(batches)
            loss = model(input_ids=input_ids, labels=labels).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            if progress is not None:
                progress(step + 1, config.steps)
        model.eval()
    return model


def _learning_rate_factor(step: int, config: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
