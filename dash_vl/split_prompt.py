"""Token ids of a prompt made of a context then a question, tokenized apart so the split is exact."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase


def split_prompt_ids(tokenizer: PreTrainedTokenizerBase, context: str, question: str) -> tuple[list[int], int]:
    """The ids of ``context`` then ``question`` (no special tokens), and the question's length in tokens."""
    context_ids = tokenizer(context, add_special_tokens=False).input_ids
    question_ids = tokenizer(question, add_special_tokens=False).input_ids
    return context_ids + question_ids, len(question_ids)
