"""The code-completion suite: real library code cut before a statement, LongBench's edit-similarity scoring."""

from __future__ import annotations

import pytest

from dash_vl.suites.code_completion import (
    INSTRUCTION,
    MIN_FILL,
    QUESTION,
    SKIPPED_FOLDERS,
    CodeSample,
    code_suite,
    edit_similarity,
    library_files,
    source_root,
    standard_library,
    statement_starts,
)
from tests.conftest import processor_of

LENGTHS = (384, 768)


@pytest.fixture(scope="module")
def tokenizer():
    return processor_of("qwen2_vl").tokenizer


@pytest.fixture(scope="module")
def suite(tokenizer):
    return code_suite(tokenizer, lengths=LENGTHS, per_cell=3, seed=5)


def test_suite_is_reproducible_from_its_seed_and_asks_distinct_lines(tokenizer, suite):
    assert code_suite(tokenizer, lengths=LENGTHS, per_cell=3, seed=5) == suite
    assert [s.source for s in code_suite(tokenizer, lengths=LENGTHS, per_cell=3, seed=6)] != [s.source for s in suite]
    assert [(s.task, s.length) for s in suite] == [(t, n) for t in ("lcc", "repobench") for n in LENGTHS for _ in range(3)]
    for task in ("lcc", "repobench"):
        for length in LENGTHS:
            sources = [s.source for s in suite if (s.task, s.length) == (task, length)]
            assert len(set(sources)) == len(sources)


def test_the_answer_is_the_line_that_follows_the_context_in_the_real_file(suite):
    for sample in suite:
        path, line = sample.source.rsplit(":", 1)
        lines = (standard_library() / path).read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
        head = "".join(lines[: int(line) - 1])
        assert sample.context.startswith(INSTRUCTION) and sample.context.endswith(head)
        assert sample.answer == lines[int(line) - 1].strip()
        assert sample.question == QUESTION
        if sample.task == "repobench":
            assert sample.context.count("# Path: ") >= 2  # a sibling, then the completed file


def test_context_fills_its_length(tokenizer, suite):
    for sample in suite:
        ids, question_tokens = sample.prompt_ids(tokenizer)
        assert MIN_FILL * sample.length - 16 <= len(ids) - question_tokens <= sample.length + 16
        assert tokenizer.decode(ids[-question_tokens:]) == QUESTION


def test_answers_are_statements_not_docstrings_or_comments():
    source = 'def f():\n    """Doc\n    more doc."""\n    # note\n    return 1\n\nx = (1,\n     2)\n'
    assert statement_starts(source) == {0, 4, 6}


@pytest.mark.parametrize(
    "generated,expected",
    [
        ("    return value + 1\n", 1.0),
        ("```python\n# the next line\nreturn value + 1\nmore", 1.0),  # LongBench skips lines with ` # //
        ("", 0.0),
    ],
)
def test_edit_similarity_scores_the_first_code_line(generated, expected):
    assert edit_similarity(generated, "return value + 1") == expected


def test_edit_similarity_is_partial_for_a_near_miss():
    assert 0.5 < edit_similarity("return value + 2", "return value + 1") < 1.0
    sample = CodeSample("lcc", 10, "ctx", QUESTION, "return value + 1", "x.py:3")
    assert sample.score("return value + 2") == edit_similarity("return value + 2", "return value + 1")


@pytest.mark.parametrize("kwargs,message", [(dict(tasks=("lcc", "humaneval")), "tasks must be among"),
                                            (dict(lengths=(100,)), "at least 256"),
                                            (dict(lengths=(384, 768), per_cell=(2, 2, 2)), "one per length"),
                                            (dict(lengths=(384, 768), per_cell=(2, 0)), "one positive count")])
def test_suite_rejects_bad_settings(tokenizer, kwargs, message):
    with pytest.raises(ValueError, match=message):
        code_suite(tokenizer, **kwargs)


def test_sympy_prompts_are_real_sympy_lines_outside_tests_benchmarks_and_generated_parsers(tokenizer):
    root, version = source_root("sympy")
    assert (root / "__init__.py").is_file() and version[0].isdigit()
    assert not any(SKIPPED_FOLDERS & set(path.relative_to(root).parts) for path in library_files(root))
    suite = code_suite(tokenizer, lengths=(2048,), per_cell=2, seed=0, root=root)  # long files: short heads take retries
    assert [sample.task for sample in suite] == ["lcc", "lcc", "repobench", "repobench"]
    for sample in suite:
        path, line = sample.source.rsplit(":", 1)
        assert sample.answer == (root / path).read_text(encoding="utf-8").splitlines()[int(line) - 1].strip()


def test_an_unknown_source_is_refused():
    with pytest.raises(ValueError, match="source must be one of"):
        source_root("numpy")


def test_a_library_with_too_few_long_files_says_how_many_prompts_it_can_give(tokenizer, tmp_path):
    for name in ("first", "second"):
        (tmp_path / f"{name}.py").write_text("".join(f"value_{i} = compute({i}, scale={i * 7})\n" for i in range(300)))
    assert len(code_suite(tokenizer, tasks=("lcc",), lengths=(256,), per_cell=2, root=tmp_path)) == 2
    with pytest.raises(ValueError, match="2 files gave LCC samples of 256 tokens; ask for at most 2 prompts per cell"):
        code_suite(tokenizer, tasks=("lcc",), lengths=(256,), per_cell=3, root=tmp_path)


def test_counts_per_length_give_that_many_prompts_at_each_length(tokenizer, suite):
    uneven = code_suite(tokenizer, lengths=LENGTHS, per_cell=(3, 1), seed=5)
    assert [(s.task, s.length) for s in uneven] == [("lcc", 384)] * 3 + [("lcc", 768)] + [("repobench", 384)] * 3 + [("repobench", 768)]
    assert code_suite(tokenizer, lengths=LENGTHS, per_cell=(3, 3), seed=5) == suite
