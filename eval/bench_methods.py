"""Prefill of a 7B/8B VLM's language tower under every method, side by side (GPU).

The tower has the shapes of ``--family``'s public checkpoint (Qwen2-VL-7B-Instruct by default,
llava-onevision-qwen2-7b-ov-hf, InternVL3-8B-hf), random bf16 weights (speed does not depend on
weight values), SDPA, batch ``--batch`` (default 1; equal-length prompts). The prompt is
64 text tokens, ``T - 128`` image tokens, 64 text tokens (the question), as the engine sees a
one-image prompt. For each ``T`` the same run times the unmodified model and each method at each
ratio (median of ``--repeats`` CUDA-event timings after ``--warmup``), and reports kept tokens,
relative FLOPs, peak GPU memory during the prefill and KV-cache bytes after it. Ratios mean what
each method documents: DASH and its ablations halt ``ρ`` of all tokens but the last; FastV and
DART drop ``ρ`` of the image tokens, from their default layer 2; VisionZip keeps
``round(n(1-ρ))`` of every ``--unit``-token tile/frame before layer 0, and so does VisPruner;
DivPrune and CDPruner keep ``round(N(1-ρ))`` of the prompt's ``N`` image tokens before layer 0
(their selection loops, from the random input embeddings, are part of the timing). The encoder-side
scoring of VisionZip and VisPruner is not part of this language-tower timing: their evidence
(random scores and keys, as the recorder would hand them over) is given, like the other methods'
inputs are. The multi-stage methods decide at each of their layers (``l_s`` column) over the tokens still active: ``dash_multi`` halts
``ρ`` of the eligible tokens still active at 0.4, 0.6 and 0.8 of the depth, PyramidDrop keeps
``int(N (1-ρ)^s)`` image tokens after stage ``s`` at 0.25, 0.5, 0.75 of the depth, SnapKV
(pruned, one decision at 0.4) halts ``ρ`` of all tokens but its 64-token observation window. A
setting a method refuses (e.g. a budget that keeps no token) is a row with its error.

    python eval/bench_methods.py --lengths 16384 32768 --ratios 0.667 0.9 0.99 --out eval/results/raw/methods_qwen2vl7b.json
    python eval/bench_methods.py --lengths 16384 --ratios 0.9 0.99 --methods dart visionzip vispruner divprune cdpruner
"""

from __future__ import annotations

import argparse
import json

import torch

from dash_vl import Halting
from dash_vl.engine.encoder_evidence import VisualEvidence
from dash_vl.methods import METHODS
from dash_vl.testing import FAMILIES, full_size_config, random_model
from gpu_timing import add_timing_arguments, measure, print_table, report_run

TEXT_AROUND = 64


class GivenEvidence:
    """Stands in for the encoder-side recorder: the same random evidence for every prefill."""

    def __init__(self, tokens: int, unit: int, metric_size: int, device: torch.device) -> None:
        generator = torch.Generator(device=device).manual_seed(tokens)
        self.evidence = VisualEvidence(
            score=torch.rand(tokens, device=device, generator=generator),
            metric=torch.randn(tokens, metric_size, device=device, generator=generator),
            unit=torch.arange(tokens, device=device) // unit,
        )

    def take(self) -> dict[str, list[VisualEvidence]]:
        return {"image": [self.evidence], "video": []}

    def remove(self) -> None:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="qwen2_vl", choices=sorted(FAMILIES))
    parser.add_argument("--lengths", type=int, nargs="+", default=[16384, 32768])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.667, 0.9, 0.99])
    parser.add_argument(
        "--methods", nargs="+", default=["dash", "fastv", "dart", "dash_block", "random"], choices=sorted(METHODS)
    )
    parser.add_argument("--unit", type=int, default=1024, help="VisionZip, VisPruner: visual tokens per tile/frame")
    parser.add_argument("--batch", type=int, default=1, help="prompts per prefill (VisionZip, VisPruner: batch 1 only)")
    add_timing_arguments(parser)
    args = parser.parse_args()
    reading_encoder = [method for method in args.methods if METHODS[method].needs_vision_evidence]
    if args.batch > 1 and reading_encoder:
        parser.error(f"the given encoder evidence of {reading_encoder} is for batch 1; leave them out with --batch > 1")

    device = torch.device("cuda")
    model = random_model(full_size_config(args.family), dtype=torch.bfloat16, device=device)
    language_model = model.model.language_model
    image_token = model.config.image_token_id
    rows = []
    with torch.no_grad():
        for length in args.lengths:
            generator = torch.Generator(device=device).manual_seed(length)
            embeds = torch.randn(args.batch, length, language_model.config.hidden_size, device=device, dtype=torch.bfloat16, generator=generator)
            rope_ids = torch.arange(length, device=device)[None].expand(args.batch, -1)
            if args.family.startswith("qwen"):
                rope_ids = rope_ids[None].expand(3, -1, -1)  # M-RoPE: three equal rows, as for text
            prompt_ids = torch.zeros(args.batch, length, dtype=torch.long, device=device)
            prompt_ids[:, TEXT_AROUND : length - TEXT_AROUND] = image_token
            run = lambda: language_model(inputs_embeds=embeds, position_ids=rope_ids, use_cache=True)  # noqa: E731
            full = measure(run, args.warmup, args.repeats)
            rows.append(dict(
                T=length, batch=args.batch, method="none", ratio=0.0, kept=length, relative_flops=1.0, speedup=1.0, **full
            ))
            print(json.dumps(rows[-1]), flush=True)
            for method in args.methods:
                for ratio in args.ratios:
                    with Halting(model, method=method, ratio=ratio) as halting:
                        halting.engine.prompt_input_ids = prompt_ids  # the outer model's pre-hook would set these
                        if halting.engine.method.needs_vision_evidence:
                            halting.engine.evidence_recorder.remove()
                            halting.engine.evidence_recorder = GivenEvidence(length - 2 * TEXT_AROUND, args.unit, 80, device)
                        try:
                            result = measure(run, args.warmup, args.repeats)
                        except ValueError as error:
                            rows.append(dict(T=length, batch=args.batch, method=method, ratio=ratio, error=str(error)))
                            print(json.dumps(rows[-1]), flush=True)
                            continue
                    report = halting.last_report
                    rows.append(dict(
                        T=length, batch=args.batch, method=method, ratio=ratio,
                        start_layer="/".join(map(str, report.decision_layers)),
                        kept=report.kept_tokens_per_layer[-1][0], relative_flops=report.relative_flops,
                        speedup=full["ms"] / result["ms"], **result,
                    ))
                    print(json.dumps(rows[-1]), flush=True)
            torch.cuda.empty_cache()

    print_table(rows, {
        "T": "{T}", "method": "{method}", "ρ": "{ratio}", "l_s": "{start_layer}", "kept": "{kept}",
        "rel. FLOPs": "{relative_flops:.3f}", "ms": "{ms:.1f}", "speedup": "{speedup:.2f}", "peak GiB": "{peak_gib:.2f}",
        "KV MiB": "{kv_mib:.0f}",
    })
    report_run(
        rows, args.out, warmup=args.warmup, repeats=args.repeats, family=args.family, batch=args.batch,
        layers=len(language_model.layers),
    )


if __name__ == "__main__":
    main()
