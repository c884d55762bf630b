"""Prompts keep the tokenizer's own leading special tokens (a base model's ``<bos>``) and nothing else."""

from __future__ import annotations

from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from dash_vl.suites.split_prompt import split_prompt_ids
from tests.conftest import processor_of

VOCAB = {"<unk>": 0, "<bos>": 1, "<eos>": 2, "def": 3, "f": 4, "next": 5, "line": 6, "x": 7}


def word_tokenizer(template: str) -> PreTrainedTokenizerFast:
    """A whitespace word tokenizer whose special-token template is ``template`` (``$A`` is the text)."""
    backend = Tokenizer(models.WordLevel(VOCAB, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(single=template, special_tokens=[("<bos>", 1), ("<eos>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>")


def test_a_bos_tokenizer_gets_its_bos_in_front_of_the_context():
    ids, question_tokens = split_prompt_ids(word_tokenizer("<bos> $A"), "def f", "next line")
    assert (ids, question_tokens) == ([1, 3, 4, 5, 6], 2)


def test_trailing_special_tokens_are_not_added():
    ids, _ = split_prompt_ids(word_tokenizer("<bos> $A <eos>"), "def f", "next line")
    assert ids == [1, 3, 4, 5, 6]


def test_a_tokenizer_without_special_tokens_gets_none():
    tokenizer = processor_of("qwen2_vl").tokenizer
    ids, question_tokens = split_prompt_ids(tokenizer, "def f():", " return 1")
    assert tokenizer.decode(ids) == "def f(): return 1"
    assert question_tokens == len(tokenizer(" return 1", add_special_tokens=False).input_ids)
