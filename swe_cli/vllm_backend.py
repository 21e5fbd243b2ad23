"""Optional generation backend for `swe eval --backend vllm`: greedy generation with vLLM
(tensor parallel across GPUs, multi-node through Ray as vLLM configures it). KL and perplexity
still use the transformers model; only the answers to judge come from vLLM."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from swe_cli import DISTRIBUTION
from swe_cli.errors import EvalError

Generator = Callable[[Sequence[str], int], list[str]]


def require_vllm() -> Any:
    """The vllm module, or a clear error before any model is loaded."""
    try:
        import vllm
    except ImportError:
        raise EvalError(
            "--backend vllm needs the vllm package, which is not installed",
            hint=f"pip install '{DISTRIBUTION}[vllm]' on a CUDA machine, or use --backend hf",
        ) from None
    return vllm


def vllm_generator(
    model: str | Path,
    *,
    tensor_parallel_size: int = 1,
    dtype: str = "auto",
    memory_share: float = 0.45,
) -> Generator:
    """A function (prompts, max_new_tokens) -> replies, greedy, chat template with the generation
    prompt. memory_share leaves room for the transformers model that computes KL next to it."""
    vllm = require_vllm()
    engine = vllm.LLM(
        model=str(model),
        tensor_parallel_size=tensor_parallel_size,
        dtype=dtype,
        gpu_memory_utilization=memory_share,
    )
    tokenizer = engine.get_tokenizer()

    def generate(prompts: Sequence[str], max_new_tokens: int) -> list[str]:
        texts = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
            )
            for prompt in prompts
        ]
        params = vllm.SamplingParams(temperature=0.0, max_tokens=max_new_tokens)
        outputs = engine.generate(texts, params, use_tqdm=False)
        return [output.outputs[0].text.strip() for output in outputs]

    return generate
