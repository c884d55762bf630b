"""LongBench-style code completion on real code, not code written for the tests: the Python standard library or SymPy.

Two tasks, both next-line completion scored by edit similarity as LongBench scores LCC and
RepoBench-P (the first generated line that holds no backtick, ``#`` or ``//``, compared with the
true next line, both stripped, by ``difflib.SequenceMatcher``'s ratio: fuzzywuzzy's ``fuzz.ratio``
without python-Levenshtein, unrounded):

* ``lcc``: the head of one long file, cut before a line that is code;
* ``repobench``: other files of the same package first (each under a ``# Path:`` header, the last
  one cut where the budget ends), then the head of the file to complete, cut in its second half.

The prompt is LongBench's for both: ``"Please complete the code given below. \\n"``, the code, then
the question ``"Next line of code:\\n"`` (no chat template: LongBench applies none to these two
tasks). Files come from one of :data:`CODE_SOURCES` (:func:`source_root`): the standard library of
the Python that runs this (``sysconfig``), or the installed SymPy package (``pip install sympy``: a large
pure-Python library, mathematical code from another community than CPython's), so a suite is
reproducible from its seed on one version of its source; record that version with the results.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import importlib.util
import io
import platform
import random
import sysconfig
import tokenize
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

from transformers import PreTrainedTokenizerBase

from dash_vl.suites.split_prompt import split_prompt_ids

CodeTask = Literal["lcc", "repobench"]
CODE_TASKS: tuple[str, ...] = ("lcc", "repobench")
INSTRUCTION = "Please complete the code given below. \n"
QUESTION = "Next line of code:\n"
SKIPPED_MARKS = ("`", "#", "//")
MAX_ATTEMPTS = 200
MIN_FILL = 0.8
CODE_SOURCES: tuple[str, ...] = ("stdlib", "sympy")
SKIPPED_FOLDERS = frozenset({
    "test", "tests", "idlelib", "site-packages", "lib2to3", "__pycache__", "encodings", "pydoc_data",  # stdlib
    "benchmarks", "_antlr",  # SymPy: timing scripts and generated parsers
})


def first_code_line(generated: str) -> str:
    """The first line of ``generated`` (leading newlines dropped) with no backtick, ``#`` or ``//``."""
    for line in generated.lstrip("\n").split("\n"):
        if not any(mark in line for mark in SKIPPED_MARKS):
            return line
    return ""


def edit_similarity(generated: str, answer: str) -> float:
    """LongBench's code score in [0, 1] of ``generated`` against the true next line ``answer``."""
    return difflib.SequenceMatcher(None, first_code_line(generated).strip(), answer.strip()).ratio()


@dataclass(frozen=True)
class CodeSample:
    """One next-line completion prompt.

    Attributes:
        task: ``"lcc"`` or ``"repobench"``.
        length: target context length in tokens.
        context: instruction and code; halted tokens come from here.
        question: :data:`QUESTION`.
        answer: the true next line, stripped.
        source: the completed file, relative to the standard library, and the 1-based line number answered.
    """

    task: CodeTask
    length: int
    context: str
    question: str
    answer: str
    source: str

    def prompt_ids(self, tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], int]:
        return split_prompt_ids(tokenizer, self.context, self.question)

    def score(self, generated: str) -> float:
        return edit_similarity(generated, self.answer)


def standard_library() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def source_root(source: str) -> tuple[Path, str]:
    """The folder whose files a suite of ``source`` (one of :data:`CODE_SOURCES`) completes, and the
    version that pins its files: the Python version for ``"stdlib"``, SymPy's for ``"sympy"``.

    Raises:
        ValueError: on an unknown source, or ``"sympy"`` where SymPy is not installed.
    """
    if source == "stdlib":
        return standard_library(), platform.python_version()
    if source == "sympy":
        spec = importlib.util.find_spec("sympy")
        if spec is None or spec.origin is None:
            raise ValueError("source 'sympy' needs SymPy installed: pip install sympy")
        return Path(spec.origin).parent, importlib.metadata.version("sympy")
    raise ValueError(f"source must be one of {CODE_SOURCES}, got {source!r}")


def library_files(root: Path) -> list[Path]:
    """Python files of the library under ``root``, sorted; tests, site-packages, benchmarks and generated
    tables and parsers (:data:`SKIPPED_FOLDERS`) left out."""
    return sorted(
        path for path in root.rglob("*.py") if not SKIPPED_FOLDERS & set(path.relative_to(root).parts)
    )


def statement_starts(source: str) -> frozenset[int]:
    """0-based indices of the lines where a statement that is not a bare string (a docstring) begins,
    by Python's own tokenizer; empty for a file it cannot tokenize."""
    starts, at_start = set(), True
    try:
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type in (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
                at_start = True
            elif token.type in (tokenize.NL, tokenize.COMMENT, tokenize.ENDMARKER):
                continue
            elif at_start:
                if token.type != tokenize.STRING:
                    starts.add(token.start[0] - 1)
                at_start = False
    except (tokenize.TokenError, SyntaxError):
        return frozenset()
    return frozenset(starts)


@cache
def _line_tokens(tokenizer: PreTrainedTokenizerBase, path: Path) -> tuple[tuple[str, ...], tuple[int, ...], frozenset[int]]:
    """The file's lines (newlines kept), each line's token count, and the lines worth predicting:
    statement starts of at least 8 characters with no backtick, ``#`` or ``//``."""
    source = path.read_text(encoding="utf-8", errors="replace")
    lines = tuple(source.splitlines(keepends=True))
    tokens = tuple(len(tokenizer(line, add_special_tokens=False).input_ids) for line in lines)
    targets = frozenset(
        index for index in statement_starts(source)
        if len(lines[index].strip()) >= 8
        and not any(mark in lines[index] for mark in SKIPPED_MARKS)
    )
    return lines, tokens, targets


def cut_before(tokens: tuple[int, ...], targets: frozenset[int], budget: int, earliest: int) -> int | None:
    """The largest line index ``k >= earliest`` in ``targets`` whose head (lines ``< k``) fits ``budget``
    tokens; ``None`` if there is none."""
    total, fits = 0, 0
    for count in tokens:
        if total + count > budget:
            break
        total += count
        fits += 1
    return next((index for index in range(min(fits, len(tokens) - 1), earliest - 1, -1) if index in targets), None)


def lcc_sample(
    rng: random.Random, tokenizer: PreTrainedTokenizerBase, files: list[Path], root: Path, length: int, used: set[str]
) -> CodeSample:
    """The head of a file with more than ``length`` tokens, cut before a statement within the last tenth
    of the budget (the head fills at least :data:`MIN_FILL` of it); one sample a file (``used``)."""
    budget = length - len(tokenizer(INSTRUCTION, add_special_tokens=False).input_ids)
    # a token holds at least a byte, so a file of fewer bytes than the budget cannot fill it
    candidates = [path for path in files if path.stat().st_size > budget and str(path) not in used]
    for path in rng.sample(candidates, k=len(candidates)):
        lines, tokens, targets = _line_tokens(tokenizer, path)
        if sum(tokens) <= budget:
            continue
        cut = cut_before(tokens, targets, rng.randint(int(0.9 * budget), budget), earliest=1)
        if cut is not None and sum(tokens[:cut]) >= MIN_FILL * budget:
            used.add(str(path))
            return CodeSample(
                "lcc", length, INSTRUCTION + "".join(lines[:cut]), QUESTION, lines[cut].strip(),
                f"{path.relative_to(root)}:{cut + 1}",
            )
    raise ValueError(
        f"no unused library file under {root} has a {length}-token head before a statement: {len(used)} files "
        f"gave LCC samples of {length} tokens; ask for at most {len(used)} prompts per cell at this length"
    )


def repobench_sample(
    rng: random.Random, tokenizer: PreTrainedTokenizerBase, files: list[Path], root: Path, length: int, used: set[str]
) -> CodeSample:
    """Sibling files of one package (random order, the last one cut at a line where the budget ends),
    then the head of the file to complete, cut before a statement in its second half; the context
    fills :data:`MIN_FILL` to all of ``length`` tokens; one sample a completed line (``used``)."""
    packages: dict[Path, list[Path]] = {}
    for path in files:
        packages.setdefault(path.parent, []).append(path)
    folders = sorted(folder for folder, members in packages.items() if len(members) >= 3 and folder != root)
    budget = length - len(tokenizer(INSTRUCTION, add_special_tokens=False).input_ids)
    for _ in range(MAX_ATTEMPTS):
        members = packages[rng.choice(folders)]
        target = rng.choice(members)
        lines, tokens, targets = _line_tokens(tokenizer, target)
        if len(lines) < 4:
            continue
        head_budget = sum(tokens[: rng.randint(len(lines) // 2, len(lines) - 1)])
        cut = cut_before(tokens, targets, min(head_budget, budget), earliest=len(lines) // 2)
        source = f"{target.relative_to(root)}:{cut + 1}" if cut is not None else ""
        if cut is None or source in used:
            continue
        header = f"# Path: {target.relative_to(root)}\n"
        room = budget - sum(tokens[:cut]) - len(tokenizer(header, add_special_tokens=False).input_ids)
        siblings = []
        for sibling in rng.sample([member for member in members if member != target], k=len(members) - 1):
            sibling_header = f"# Path: {sibling.relative_to(root)}\n"
            room -= len(tokenizer(sibling_header, add_special_tokens=False).input_ids) + 1
            sibling_lines, sibling_tokens, _ = _line_tokens(tokenizer, sibling)
            taken = 0
            while taken < len(sibling_lines) and sibling_tokens[taken] <= room:
                room -= sibling_tokens[taken]
                taken += 1
            if taken == 0:
                break
            siblings.append(sibling_header + "".join(sibling_lines[:taken]) + "\n")
            if taken < len(sibling_lines):
                break  # the last sibling is cut where the budget ends
        if not siblings or room < 0 or room > (1 - MIN_FILL) * budget:
            continue
        used.add(source)
        return CodeSample(
            "repobench", length, INSTRUCTION + "".join(siblings) + header + "".join(lines[:cut]), QUESTION,
            lines[cut].strip(), source,
        )
    raise ValueError(f"no package under {root} fills {length} tokens with siblings and a file head ({MAX_ATTEMPTS} tries)")


def prompt_counts(per_cell: int | Sequence[int], lengths: Sequence[int]) -> tuple[int, ...]:
    """The number of prompts at each of ``lengths``: ``per_cell`` repeated, or ``per_cell`` itself when it gives
    one count per length.

    Raises:
        ValueError: when the counts are not one per length or not all positive.
    """
    counts = (per_cell,) * len(lengths) if isinstance(per_cell, int) else tuple(per_cell)
    if len(counts) != len(lengths) or min(counts, default=1) < 1:
        raise ValueError(f"prompt counts must be one positive count or one per length ({len(lengths)} lengths: "
                         f"{' '.join(map(str, lengths))}), got {per_cell}")
    return counts


def code_suite(
    tokenizer: PreTrainedTokenizerBase,
    tasks: tuple[str, ...] = CODE_TASKS,
    lengths: tuple[int, ...] = (2048, 4096, 8192, 16384),
    per_cell: int | tuple[int, ...] = 25,
    seed: int = 0,
    root: Path | None = None,
) -> list[CodeSample]:
    """``per_cell`` distinct samples for every (task, length), reproducible from ``seed`` on one library:
    one count for every length, or one count per length (in the order of ``lengths``), so a library with few
    files long enough for the longest length can still give many prompts at the shorter ones.

    Raises:
        ValueError: on an unknown task, a length under 256 tokens, or counts that are not one per length or
            not positive.
    """
    unknown = set(tasks) - set(CODE_TASKS)
    if unknown:
        raise ValueError(f"tasks must be among {CODE_TASKS}, got {sorted(unknown)}")
    if any(length < 256 for length in lengths):
        raise ValueError(f"lengths must be at least 256 tokens, got {lengths}")
    counts = prompt_counts(per_cell, lengths)
    root = root or standard_library()
    files = library_files(root)
    rng = random.Random(seed)
    builders = {"lcc": lcc_sample, "repobench": repobench_sample}
    samples = []
    for task in tasks:
        for length, count in zip(lengths, counts):
            used: set[str] = set()
            samples.extend(builders[task](rng, tokenizer, files, root, length, used) for _ in range(count))
    return samples
