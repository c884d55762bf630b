"""Paired accuracy tables from finished results files (``accuracy_*.jsonl``): each method against the
unmodified model and against random halting at the same FLOPs (same decision layer, ratio and question
protocol), as mean paired differences with 95 % bootstrap intervals (:mod:`dash_vl.suites.paired_stats`) and the
verdict they give; then DASH against random and against the inverted rule (``dash_highest``) per
context length and code source. Nothing is measured again.

    python eval/paired_tables.py eval/results/raw/accuracy_code_qwen_coder.jsonl --score edit_similarity \\
        --output eval/results/accuracy_code_qwen_coder_paired.md

Rows with per-prompt ``scores`` are paired prompt by prompt. Older rows hold only the mean of each
(task, length) group; those are paired group by group, each weighted by its prompt count, which with
8 groups gives too narrow an interval (a lower bound of the uncertainty) and no per-length interval.

Claims and their thresholds: against random (and the inverted rule) "the method scores higher"
(interval above 0); against the unmodified model "the method keeps its score to within
:data:`KEEP_MARGIN`" (interval above ``-KEEP_MARGIN``).
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from dash_vl.suites.paired_stats import RESAMPLES, SEED, PairedDifference, paired_difference
from dash_vl.suites.sweep import stored_rows

UNMODIFIED = "none"
KEEP_MARGIN = 0.03
Setting = tuple[str, str, str, int | str, float]
"""(source, question, method, decision layer, ratio)."""
Group = tuple[str, int]
"""(task, length)."""


def settings(rows: Iterable[dict]) -> dict[Setting, dict[Group, dict]]:
    """The rows of each setting, by (task, length); a row that names no ``source`` gets ``"-"``.

    Raises:
        ValueError: when a setting's (task, length) comes twice (from two files) with other per-prompt scores,
            or without any: the files hold other prompts (another count, say), which cannot be paired in one
            table. The same prompts measured again, with the same scores, are one row.
    """
    found: dict[Setting, dict[Group, dict]] = defaultdict(dict)
    for row in rows:
        key = (row.get("source", "-"), row["question"], row["method"], row["decision_layer"], row["ratio"])
        group = (row["task"], row["length"])
        earlier = found[key].get(group)
        if earlier is not None and ("scores" not in row or earlier.get("scores") != row["scores"]):
            raise ValueError(
                f"{row['method']} at ratio {row['ratio']} on {group[0]} {group[1]} ({key[0]}) comes twice with "
                f"other scores ({earlier['n']} and {row['n']} prompts): those files hold other prompts; table them apart"
            )
        found[key][group] = row
    return found


def per_prompt(groups: dict[Group, dict]) -> bool:
    return all("scores" in row for row in groups.values())


def compare(
    a: dict[Group, dict], b: dict[Group, dict], score: str, length: int | None = None
) -> PairedDifference | None:
    """``a`` minus ``b`` over their common (task, length) groups (only ``length``'s where given): paired
    prompt by prompt where both hold per-prompt scores, else group by group (pooled only); ``None`` where
    nothing pairs."""
    common = sorted(group for group in a.keys() & b.keys() if length is None or group[1] == length)
    if not common:
        return None
    if per_prompt(a) and per_prompt(b):
        left = [s for group in common for s in a[group]["scores"]]
        right = [s for group in common for s in b[group]["scores"]]
        if any(len(a[group]["scores"]) != len(b[group]["scores"]) for group in common):
            raise ValueError(f"groups {common} hold different prompt counts in the two settings")
        return paired_difference(left, right)
    if length is not None:
        return None
    return paired_difference(
        [a[group][score] for group in common], [b[group][score] for group in common],
        weights=[a[group]["n"] for group in common],
    )


def mean_of(groups: dict[Group, dict], score: str, key: str | None = None, length: int | None = None) -> float:
    """The prompt-weighted mean of ``key`` (default ``score``) over ``groups`` (only ``length``'s where given)."""
    chosen = [row for (_, n), row in groups.items() if length is None or n == length]
    total = sum(row["n"] for row in chosen)
    return sum(row[key or score] * row["n"] for row in chosen) / total


def shown(difference: PairedDifference | None, threshold: float = 0.0) -> str:
    return "–" if difference is None else difference.cell(threshold)


def pooled_table(rows: Sequence[dict], score: str) -> str:
    """Markdown: one line per halted setting, pooled over tasks and lengths: its score and FLOPs, then its
    paired difference to the unmodified model and to random halting at the same decision layer and ratio."""
    found = settings(rows)
    lines = [
        f"| source | question | method | l_s | ρ | rel. FLOPs | {score} | − unmodified [95 % CI] (keeps within "
        f"{KEEP_MARGIN}?) | − random, same FLOPs [95 % CI] (beats it?) | units |",
        "|" + "---|" * 10,
    ]
    for key in sorted(found, key=lambda k: (k[0], k[1], k[2], str(k[3]).zfill(3), k[4])):
        source, question, method, layer, ratio = key
        if method == UNMODIFIED:
            continue
        groups = found[key]
        unmodified = found.get((source, "-", UNMODIFIED, "-", 0.0))
        random = found.get((source, question, "random", layer, ratio)) if method != "random" else None
        versus_unmodified = None if unmodified is None else compare(groups, unmodified, score)
        versus_random = None if random is None else compare(groups, random, score)
        units = sum(row["n"] for row in groups.values())
        unit_name = f"{units} prompts" if per_prompt(groups) else f"{len(groups)} groups"
        lines.append(
            f"| {source} | {question} | {method} | {layer} | {ratio} | {mean_of(groups, score, 'relative_flops'):.3f} "
            f"| {mean_of(groups, score):.3f} | {shown(versus_unmodified, -KEEP_MARGIN)} | {shown(versus_random)} "
            f"| {unit_name} |"
        )
    return "\n".join(lines)


def length_table(rows: Sequence[dict], score: str) -> str:
    """Markdown: for every (source, question, decision layer, ratio) where DASH and random both ran, one line
    per context length (where the rows hold per-prompt scores) and one for all lengths: the unmodified, DASH,
    random and inverted-rule scores, then DASH minus the unmodified model, minus random and minus the inverted
    rule, with their intervals."""
    found = settings(rows)
    lines = [
        "| source | question | l_s | ρ | rel. FLOPs | length | units | unmodified | dash | random | dash_highest "
        "| dash − unmodified [95 % CI] | dash − random [95 % CI] | dash − dash_highest [95 % CI] |",
        "|" + "---|" * 14,
    ]
    for key in sorted(found, key=lambda k: (k[0], k[1], str(k[3]).zfill(3), k[4])):
        source, question, method, layer, ratio = key
        random = found.get((source, question, "random", layer, ratio))
        if method != "dash" or random is None:
            continue
        dash = found[key]
        inverted = found.get((source, question, "dash_highest", layer, ratio))
        unmodified = found.get((source, "-", UNMODIFIED, "-", 0.0))
        paired_prompts = per_prompt(dash) and per_prompt(random)
        for length in (sorted({n for _, n in dash}) if paired_prompts else []) + [None]:
            def score_of(groups: dict[Group, dict] | None) -> str:
                return "–" if groups is None else f"{mean_of(groups, score, length=length):.3f}"

            prompts = sum(row["n"] for (_, n), row in dash.items() if length is None or n == length)
            units = f"{prompts} prompts" if paired_prompts else f"{len(dash)} groups"
            versus_inverted = None if inverted is None else compare(dash, inverted, score, length)
            versus_unmodified = None if unmodified is None else compare(dash, unmodified, score, length)
            flops = mean_of(dash, score, "relative_flops", length)
            lines.append(
                f"| {source} | {question} | {layer} | {ratio} | {flops:.3f} | {'all' if length is None else length} "
                f"| {units} | {score_of(unmodified)} | {score_of(dash)} | {score_of(random)} | {score_of(inverted)} "
                f"| {shown(versus_unmodified, -KEEP_MARGIN)} | {shown(compare(dash, random, score, length))} "
                f"| {shown(versus_inverted)} |"
            )
    return "\n".join(lines)


def report(rows: Sequence[dict], score: str) -> str:
    """Both tables under a line that says how the intervals were made."""
    parts = [
        f"Mean paired differences with 95 % percentile-bootstrap intervals ({RESAMPLES} resamples of the "
        f"prompts, seed {SEED}; `dash_vl.suites.paired_stats`). Verdicts come from the interval: *holds* above the "
        f"claim's threshold (0 against random; −{KEEP_MARGIN} against the unmodified model), *fails* below it, "
        "*undecided* across it. Where the rows hold only (task, length) means the units are those groups, "
        "weighted by prompt count: an interval too narrow, to be read as a lower bound of the uncertainty.",
        "",
        pooled_table(rows, score),
    ]
    per_length = length_table(rows, score)
    if per_length.count("\n") > 1:
        parts += [
            "", "DASH against random and against the inverted rule at the same FLOPs, per context length where the "
            "rows hold per-prompt scores:", "", per_length,
        ]
    return "\n".join(parts) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="finished JSON-lines files (one per code source, say)")
    parser.add_argument("--score", default="edit_similarity", help="the rows' score column (accuracy, edit_similarity)")
    parser.add_argument("--output", required=True, help="the markdown file to write")
    parser.add_argument("--source", default="-", help="the source of rows that name none (stdlib for older code rows)")
    args = parser.parse_args()
    rows = [{"source": args.source, **row} for path in args.results for row in stored_rows(path)]
    try:
        text = report(rows, args.score)
    except ValueError as error:
        parser.error(str(error))
    Path(args.output).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
