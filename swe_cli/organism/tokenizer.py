"""Word-level tokenizer and chat template of the model organism.

Every word of every language is one token; role tokens are shared by all languages, so the
prompt of every request ends in the same ``<|assistant|>`` token and translations pair exactly at
the last prompt position. The tokenizer is a ``tokenizers`` WordLevel model with a whitespace
pre-tokenizer, wrapped as a ``PreTrainedTokenizerFast`` so ``AutoTokenizer`` loads it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

PAD = "<pad>"
UNK = "<unk>"
BOS = "<s>"
EOS = "<|end|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
SYSTEM = "<|system|>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, UNK, BOS, EOS, USER, ASSISTANT, SYSTEM)

# Renders exactly what the trainer feeds the model: "<s><|user|> text <|end|><|assistant|>".
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}<|system|> {{ message['content'] }} <|end|>"
    "{% elif message['role'] == 'user' %}<|user|> {{ message['content'] }} <|end|>"
    "{% elif message['role'] == 'assistant' %}<|assistant|> {{ message['content'] }} <|end|>"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def chat_prompt(text: str) -> str:
    """The rendered chat prompt of one user turn, with the generation prompt."""
    return f"{BOS}{USER} {text} {EOS}{ASSISTANT}"


def chat_text(prompt: str, response: str) -> str:
    """A whole training conversation: prompt, reply and the end token that stops generation."""
    return f"{chat_prompt(prompt)} {response} {EOS}"


def plain_text(text: str) -> str:
    """A pre-training style text, framed by the same begin and end tokens."""
    return f"{BOS} {text} {EOS}"


def build_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    """A word-level fast tokenizer over ``words`` with the organism's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate((*SPECIAL_TOKENS, *words))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        additional_special_tokens=[USER, ASSISTANT, SYSTEM],
        padding_side="left",
        model_max_length=128,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
