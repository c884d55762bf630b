"""The extra numbers behind ``eval/results/diagnose_findings.md``: where DASH's halted tokens sit,
and premise (b) again with the attention sinks left out.

    python eval/diagnose_findings.py smollm2 --prompts 10 --start-layers 3 6 9 12 15 18 21 24 27
    python eval/diagnose_findings.py scenes --prompts 40 --start-layers 1 2 3 4 5 6

Each prompt is traced once (:func:`dash_vl.diagnosis.layer_trace.trace_prompt`, the prompts of
``dash-vl diagnose``'s built-in suites); then per candidate ``l_s``: the mean relative position
``t / T`` of the tokens DASH halts at ρ = 0.5 against all eligible tokens, the visual share of
the halted tokens and the mean row of the halted visual tokens (VL: their index among the
prompt's visual tokens over the count, 0 the image's top row, 1 its bottom, for one image in
raster order; 0.5 for an even spread), the share of the pass-key fact's tokens DASH halts
(pass-key prompts: every token overlapping "The pass key is K. Remember it. K is the pass key.";
a random set halts ρ of them on average), and :func:`dash_vl.diagnosis.stats.redundancy` on the full traces and on
traces without the sinks (their columns dropped: not eligible, their attention not counted;
positions after them shift by one in the ``per_visible_query`` view).
"""

from __future__ import annotations

import argparse

import torch

from dash_vl.adapters import adapter_for
from dash_vl.cli import load_for_diagnosis, start_layer
from dash_vl.diagnosis.config import DiagnosisConfig
from dash_vl.diagnosis.layer_trace import LayerTrace, trace_prompt
from dash_vl.diagnosis.prompts import passkey_samples, scene_prompts, token_prompt
from dash_vl.diagnosis.stats import eligible_tokens, redundancy, sinks
from dash_vl.methods.base import halted_count, lowest


def without(trace: LayerTrace, positions: list[int]) -> LayerTrace:
    """``trace`` with the columns of ``positions`` dropped."""
    keep = torch.ones(trace.num_tokens, dtype=torch.bool)
    keep[positions] = False
    columns = [trace.delta_attn, trace.hidden_norm, trace.received, trace.last_query]
    return LayerTrace(
        *(tensor[:, keep] for tensor in columns),
        input_ids=None if trace.input_ids is None else trace.input_ids[keep],
        visual=None if trace.visual is None else trace.visual[keep],
    )


def halted_tokens(trace: LayerTrace, layer: int, scope: str, ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(T,)`` bool masks: DASH's halted tokens at ``layer`` and the eligible ones."""
    eligible = eligible_tokens(trace, scope)
    count = torch.tensor([halted_count(ratio, int(eligible.sum()))])
    return lowest(trace.delta_attn[layer][None], eligible[None], count)[0], eligible


def fact_tokens(tokenizer, sample) -> torch.Tensor:
    """``(T,)`` bool over the prompt: the tokens of the pass-key fact in ``sample``'s context."""
    start = sample.context.index(f"The pass key is {sample.answer}.")
    end = sample.context.index(f"{sample.answer} is the pass key.") + len(f"{sample.answer} is the pass key.")
    offsets = tokenizer(sample.context, add_special_tokens=False, return_offsets_mapping=True).offset_mapping
    ids, _ = sample.prompt_ids(tokenizer)
    mask = torch.zeros(len(ids), dtype=torch.bool)
    mask[: len(offsets)] = torch.tensor([first < end and last > start for first, last in offsets])
    return mask


def mean_of(pairs: list[tuple[float, float]], index: int) -> float:
    return sum(pair[index] for pair in pairs) / len(pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=("smollm2", "scenes"))
    parser.add_argument("--prompts", type=int, default=10)
    parser.add_argument("--start-layers", nargs="+", type=start_layer, required=True)
    parser.add_argument("--scope", default="all")
    args = parser.parse_args()
    config = DiagnosisConfig(start_layers=tuple(args.start_layers), scope=args.scope)
    model, tokenizer, vlm = load_for_diagnosis(args.model, None, "auto")
    samples = [] if args.model == "scenes" else passkey_samples(tokenizer, args.prompts, 1024)
    prompts = scene_prompts(vlm, args.prompts) if args.model == "scenes" else [
        token_prompt(sample.prompt_ids(tokenizer)[0], model.device) for sample in samples
    ]
    facts = [fact_tokens(tokenizer, sample) for sample in samples]
    adapter = adapter_for(model)
    traces = [trace_prompt(adapter, prompt) for prompt in prompts]
    layers = config.decision_layers(len(adapter.layers))
    found = sinks(traces, layers, config.scope, config.ratio, config.sink_norm_factor, config.sink_attention_share)
    sink_positions = {index: [s.position for s in found if s.prompt == index] for index in range(len(traces))}
    pruned = [without(trace, sink_positions[index]) for index, trace in enumerate(traces)]
    print(f"{args.model}: {len(traces)} prompts, sinks (prompt, position): {[(s.prompt, s.position) for s in found]}")
    print("| l_s | halted mean t/T | eligible mean t/T | halted visual share | eligible visual share | "
          "halted visual mean row | fact tokens halted | ratio all / last / per-visible | same without sinks |")
    print("|---|---|---|---|---|---|---|---|---|")
    for layer in layers:
        positions, visual, rows, fact_halted = [], [], [], []
        for index, trace in enumerate(traces):
            halted, eligible = halted_tokens(trace, layer, config.scope, config.ratio)
            relative = torch.arange(trace.num_tokens) / trace.num_tokens
            positions.append((float(relative[halted].mean()), float(relative[eligible].mean())))
            if facts:
                fact_halted.append(float(halted[facts[index]].float().mean()))
            if trace.visual is not None:
                visual.append((float(trace.visual[halted].float().mean()), float(trace.visual[eligible].float().mean())))
                row = torch.cumsum(trace.visual, dim=0)[trace.visual & halted] - 1
                rows.append(float(row.float().mean()) / max(int(trace.visual.sum()) - 1, 1))
        full, pruned_result = (
            redundancy(group, layer, config.scope, config.ratio, config.groups, config.random_groupings, config.margin, 0)
            for group in (traces, pruned)
        )
        ratios = [" / ".join(f"{value:.2f}" for value in result.share_ratio.values()) for result in (full, pruned_result)]
        visual_cells = [f"{mean_of(visual, 0):.2f}", f"{mean_of(visual, 1):.2f}", f"{sum(rows) / len(rows):.2f}"] if visual else ["-"] * 3
        fact_cell = f"{sum(fact_halted) / len(fact_halted):.2f}" if fact_halted else "-"
        print(
            f"| {layer} | {mean_of(positions, 0):.3f} | {mean_of(positions, 1):.3f} | {' | '.join(visual_cells)} | "
            f"{fact_cell} | {ratios[0]} | {ratios[1]} |"
        )


if __name__ == "__main__":
    main()
