"""Token ids of a prompt made of a context then a question, tokenized apart so the split is exact."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase


def leading_special_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The ids ``tokenizer`` puts in front of any text when it adds its special tokens: Gemma's and
    Llama's ``<bos>``, nothing for Qwen's tokenizers."""
    bare = tokenizer("x", add_special_tokens=False).input_ids
    full = tokenizer("x").input_ids
    starts = [start for start in range(len(full) - len(bare) + 1) if full[start : start + len(bare)] == bare]
    return full[: starts[0]] if starts else []


def split_prompt_ids(tokenizer: PreTrainedTokenizerBase, context: str, question: str) -> tuple[list[int], int]:
    """The ids of ``context`` then ``question``, behind the tokenizer's own leading special tokens (a
    base model such as Gemma-3 needs its ``<bos>``), and the question's length in tokens."""
    context_ids = tokenizer(context, add_special_tokens=False).input_ids
    question_ids = tokenizer(question, add_special_tokens=False).input_ids
    return leading_special_ids(tokenizer) + context_ids + question_ids, len(question_ids)
