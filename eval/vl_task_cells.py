"""The VL sweeps' shared pieces: an offline lmms-eval task answered through the Python API, and one cell's row.

``eval/sweep_vl.py`` (methods × ratios) and ``eval/sweep_vit_halting.py`` (encoder-side halting) both measure
their cells with :func:`measure_cell` on a :class:`LocalTask`.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from dash_vl.api import Query, VisionLanguageModel
from dash_vl.config import HaltingConfig
from dash_vl.halting import Halting
from dash_vl.integrations.lmms_eval.offline_tasks import task_folder


@dataclass(frozen=True)
class LocalTask:
    """An offline lmms-eval task's documents and its own rendering and scoring functions."""

    name: str
    documents: list[dict]
    to_visual: Callable[[dict], list]
    to_text: Callable[[dict], str]
    score: Callable[[dict, list[str]], dict[str, float]]
    metric: str
    max_new_tokens: int

    @classmethod
    def load(cls, name: str, limit: int | None) -> LocalTask:
        """``dash_vl/integrations/lmms_eval/tasks/<name>/``: ``<name>.jsonl`` documents, ``utils.py`` functions
        ``<name>_doc_to_visual``, ``_doc_to_text``, ``_process_results`` (lmms-eval's names), and
        from ``<name>.yaml`` the default prompt kwargs, the first metric and ``max_new_tokens``."""
        folder = task_folder(name)
        spec = importlib.util.spec_from_file_location(f"{name}_utils", folder / "utils.py")
        utils = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(utils)
        with (folder / f"{name}.jsonl").open() as handle:
            documents = [json.loads(line) for line in handle if line.strip()][:limit]
        settings = task_settings(folder / f"{name}.yaml")
        if settings["output_type"] != "generate_until":
            raise ValueError(f"task {name!r} is {settings['output_type']!r}; the sweep answers generate_until tasks only")
        prompt_kwargs = settings["lmms_eval_specific_kwargs"]["default"]
        return cls(
            name, documents, getattr(utils, f"{name}_doc_to_visual"),
            lambda doc: getattr(utils, f"{name}_doc_to_text")(doc, prompt_kwargs),
            getattr(utils, f"{name}_process_results"), settings["metric_list"][0]["metric"],
            settings["generation_kwargs"]["max_new_tokens"],
        )


def task_settings(path: Path) -> dict:
    """An lmms-eval task YAML as a dict (``!function`` tags kept as their strings)."""
    import yaml

    class TaskLoader(yaml.SafeLoader):
        pass

    TaskLoader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))
    return yaml.load(path.read_text(), Loader=TaskLoader)


def timed_first_token(vlm: VisionLanguageModel, queries: list[Query]) -> float:
    """Seconds to answer ``queries`` with one new token (prefill and vision encoder)."""
    synchronize = torch.cuda.synchronize if vlm.model.device.type == "cuda" else (lambda: None)
    synchronize()
    start = time.perf_counter()
    vlm.answer(queries, max_new_tokens=1)
    synchronize()
    return time.perf_counter() - start


def measure_cell(vlm: VisionLanguageModel, task: LocalTask, config: HaltingConfig | None, batch_size: int) -> dict:
    """One row: the score of ``task`` under ``config`` (``None``: the unmodified model), kept tokens,
    relative FLOPs, prefill latency and peak memory."""
    try:
        vlm.halting = None if config is None else Halting(vlm.model, config)
    except ValueError as error:
        return dict(n=0, error=str(error))
    on_gpu = vlm.model.device.type == "cuda"
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    scores, kept, prompt, flops, latencies = [], [], [], [], []
    try:
        for start in range(0, len(task.documents), batch_size):
            documents = task.documents[start:start + batch_size]
            queries = [Query(task.to_text(doc), tuple(task.to_visual(doc))) for doc in documents]
            if start == 0:
                timed_first_token(vlm, queries)  # warm-up, not counted
            latencies.append(timed_first_token(vlm, queries))
            answers = vlm.answer(queries, max_new_tokens=task.max_new_tokens)
            scores += [task.score(doc, [answer])[task.metric] for doc, answer in zip(documents, answers)]
            if vlm.halting is None:
                counts = vlm.prepare(queries)["attention_mask"].sum(dim=1).tolist()
                kept, prompt, flops = kept + counts, prompt + counts, flops + [1.0] * len(documents)
                continue
            report = vlm.last_report
            kept += report.kept_tokens_per_layer[-1]
            prompt += report.prompt_tokens
            flops += [report.relative_flops] * len(documents)
    except ValueError as error:
        return dict(n=0, error=str(error))
    n = len(scores)
    return dict(
        n=n, score=sum(scores) / n,
        kept_tokens=sum(kept) / n, prompt_tokens=sum(prompt) / n, relative_flops=sum(flops) / n,
        prefill_ms=1000 * statistics.median(latencies),
        peak_memory_gib=torch.cuda.max_memory_allocated() / 2**30 if on_gpu else None,
    )
