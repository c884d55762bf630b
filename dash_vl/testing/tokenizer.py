"""Offline byte-level tokenizers (no merges, or BPE merges learnt from a corpus) and a chat
template, shared by the tiny processors and the shipped scenes model."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from transformers import PreTrainedTokenizerFast


def byte_level_tokenizer(
    special_tokens: tuple[str, ...], named_tokens: dict[str, str] | None = None
) -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (256 byte tokens, no merges) plus ``special_tokens``, built offline.

    ``named_tokens`` maps attribute names to tokens (``{"context_image_token": "<IMG_CONTEXT>"}``):
    the tokenizer then exposes ``tokenizer.context_image_token`` and ``..._id`` as some processors expect.
    Padding is on the left; ``<|im_end|>`` ends a turn and ``<|endoftext|>`` pads.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: index for index, symbol in enumerate(sorted(alphabet))}
    return wrapped(Tokenizer(models.BPE(vocab=vocab, merges=[])), special_tokens, named_tokens)


def bpe_tokenizer(corpus: Iterable[str], vocab_size: int, special_tokens: tuple[str, ...]) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer of ``vocab_size`` tokens (the 256 bytes, merges learnt from
    ``corpus``, then ``special_tokens``), built offline; padding as in :func:`byte_level_tokenizer`."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer)
    return wrapped(backend, special_tokens)


def wrapped(
    backend: Any, special_tokens: tuple[str, ...], named_tokens: dict[str, str] | None = None
) -> PreTrainedTokenizerFast:
    """``backend`` (a ``tokenizers.Tokenizer``) with a byte-level pre-tokenizer and decoder kept
    or set, as a left-padding HF tokenizer with ``special_tokens`` added."""
    from tokenizers import decoders, pre_tokenizers

    if backend.pre_tokenizer is None:
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        extra_special_tokens=named_tokens or {},
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(special_tokens)})
    return tokenizer


def chat_template(image_placeholder: str, video_placeholder: str) -> str:
    """A ChatML template (``<|im_start|>role ... <|im_end|>``) writing the given media placeholders."""
    return (
        "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
        "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
        "{% for content in message['content'] %}"
        f"{{% if content['type'] == 'image' %}}{image_placeholder}"
        f"{{% elif content['type'] == 'video' %}}{video_placeholder}"
        "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
        "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )


def token_ids(tokenizer: PreTrainedTokenizerFast, tokens: tuple[str, ...]) -> dict[str, int]:
    """``{token: id}`` for ``tokens``."""
    return {token: tokenizer.convert_tokens_to_ids(token) for token in tokens}
