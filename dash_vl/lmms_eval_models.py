"""lmms-eval models with halting: ``dash_qwen2_vl``, ``dash_llava_onevision``, ``dash_internvl``,
``dash_llava`` (LLaVA-1.5), ``dash_llava_next`` (LLaVA-NeXT).

Registered through the ``lmms_eval.models`` entry-point group (:mod:`dash_vl.lmms_eval_entry`), so after
``pip install "dash-vl[eval]"``::

    lmms-eval --model dash_qwen2_vl \\
        --model_args pretrained=Qwen/Qwen2-VL-7B-Instruct,method=dash,ratio=0.9 --tasks mme

``model_args`` take the halting knobs of :class:`dash_vl.HaltingConfig` (``method`` — also
``none`` for the unmodified model —, ``ratio``, ``start_layer``, ``scope``, ``question``,
``seed``, ``packing``: ``ragged`` packs batches of unequal prompt lengths, ``docs/packed.md``;
``vision_ratio`` and ``vision_start_layer``: encoder-side halting, ``docs/vit_halting.md``)
and the loading ones (``pretrained``, ``device_map``, ``dtype``, ``attn_implementation``,
``system_prompt``, ``max_new_tokens``); an unknown key is an error.
Under ``accelerate launch`` (or ``torchrun``) each process loads the model on its own device
(its GPU; the CPU with a gloo process group) and evaluates its shard of the requests (data
parallel), as lmms-eval's own models do.

This module imports lmms-eval; nothing else in ``dash_vl`` does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from PIL import Image
from tqdm import tqdm

from dash_vl.api import Query, VisionLanguageModel, load
from dash_vl.cli import start_layer as parse_start_layer
from dash_vl.config import HaltingConfig

VIDEO_SUFFIXES: tuple[str, ...] = (".mp4", ".avi", ".mov", ".mkv", ".webm")
LOADING_KEYS: tuple[str, ...] = (
    "pretrained", "device", "device_map", "dtype", "attn_implementation", "batch_size", "max_batch_size",
    "system_prompt", "max_new_tokens",
)
HALTING_KEYS: tuple[str, ...] = (
    "method", "ratio", "start_layer", "scope", "question", "seed", "packing", "vision_ratio", "vision_start_layer",
)


def halting_config(
    method: str, ratio: Any, start_layer: Any, scope: Any, question: str, seed: Any, packing: str = "off",
    vision_ratio: Any = None, vision_start_layer: Any = 0.4,
) -> HaltingConfig | None:
    """The knobs as lmms-eval parses them (numbers may arrive as strings); ``None`` for ``method=none``."""
    if method == "none":
        if float(ratio) != 0.0:
            raise ValueError(f"method=none runs the unmodified model; it takes no ratio (got {ratio})")
        if packing != "off":
            raise ValueError(
                f"method=none runs the unmodified model, which has no packed prefill (packing={packing}); "
                "for packing without halting use method=dash,ratio=0"
            )
        if vision_ratio is not None:
            raise ValueError(
                f"method=none runs the unmodified model, vision encoder included (vision_ratio={vision_ratio}); "
                "for encoder-side halting alone use method=dash,ratio=0"
            )
        return None
    if isinstance(start_layer, str):
        start_layer = parse_start_layer(start_layer)
    if isinstance(vision_start_layer, str):
        vision_start_layer = parse_start_layer(vision_start_layer)
    return HaltingConfig(
        method=method, ratio=float(ratio), start_layer=start_layer, scope=scope, question=question, seed=int(seed),
        packing=packing, vision_ratio=None if vision_ratio is None else float(vision_ratio),
        vision_start_layer=vision_start_layer,
    )


def query_of(context: str, visuals: list[Any]) -> Query:
    """A :class:`Query` from an lmms-eval context and its visuals (PIL images, image or video paths)."""
    images, videos = [], []
    for visual in visuals:
        if isinstance(visual, (str, Path)) and str(visual).lower().endswith(VIDEO_SUFFIXES):
            videos.append(visual)
        elif isinstance(visual, (str, Path, Image.Image)):
            images.append(visual)
        else:
            raise TypeError(f"unsupported visual {type(visual).__name__}: expected a PIL image or a file path")
    if len(videos) > 1:
        raise ValueError(f"one video per request is supported, got {len(videos)}")
    return Query(context.replace("<image>", "").strip(), tuple(images), videos[0] if videos else None)


def flatten_visuals(visuals: Any) -> list[Any]:
    if visuals is None:
        return []
    if not isinstance(visuals, (list, tuple)):
        return [visuals]
    return [item for visual in visuals for item in flatten_visuals(visual)]


class HaltingModel(lmms):
    """An HF VLM with halting, answering lmms-eval's ``generate_until`` requests in batches.

    Subclasses name the families they accept (:attr:`model_types`); a checkpoint of another
    family is an error, so that ``dash_qwen2_vl`` never silently evaluates something else.
    """

    model_types: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        pretrained: str,
        method: str = "dash",
        ratio: float = 0.0,
        start_layer: int | float | str | None = None,
        scope: str | None = None,
        question: str = "halted",
        seed: int = 0,
        packing: str = "off",
        vision_ratio: float | str | None = None,
        vision_start_layer: int | float | str = 0.4,
        device: str | None = "cuda",
        device_map: str | None = None,
        dtype: str = "auto",
        attn_implementation: str = "sdpa",
        batch_size: int | str = 1,
        max_batch_size: int | None = None,
        system_prompt: str | None = None,
        max_new_tokens: int = 128,
        **unknown: Any,
    ) -> None:
        super().__init__()
        if unknown:
            raise ValueError(
                f"unknown model_args {sorted(unknown)} for {type(self).__name__}; known: {sorted(HALTING_KEYS + LOADING_KEYS)}"
            )
        from accelerate import Accelerator

        self.accelerator = Accelerator()
        if self.accelerator.num_processes > 1:  # data parallel: this process's own GPU (or the CPU under gloo)
            device_map = str(self.accelerator.device)
            self._rank, self._world_size = self.accelerator.process_index, self.accelerator.num_processes
        config = halting_config(
            method, ratio, start_layer, scope, question, seed, packing, vision_ratio, vision_start_layer
        )
        loaded = load(pretrained, HaltingConfig(), device=device_map or device, dtype=dtype, attn_implementation=attn_implementation)
        self.vlm = VisionLanguageModel(loaded.model, loaded.processor, config)
        model_type = self.vlm.model.config.model_type
        if model_type not in self.model_types:
            raise ValueError(f"{type(self).__name__} evaluates {self.model_types} checkpoints; {pretrained} is {model_type!r}")
        self.batch_size_per_gpu = int(batch_size)
        self.system_prompt = system_prompt
        self.max_new_tokens = int(max_new_tokens)

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def device(self) -> Any:
        """Where the model's inputs go (lmms-eval gathers request counts across processes there)."""
        return self.vlm.model.device

    def generate_until(self, requests: list[Instance]) -> list[str]:
        answers: list[str] = [""] * len(requests)
        progress = tqdm(total=len(requests), disable=self.rank != 0, desc="dash_vl responding")
        order = sorted(range(len(requests)), key=lambda index: str(requests[index].args[1]))
        for start in range(0, len(order), self.batch_size_per_gpu):
            chunk = order[start : start + self.batch_size_per_gpu]
            queries, kwargs = [], dict(requests[chunk[0]].args[1] or {})
            for index in chunk:
                context, _, doc_to_visual, doc_id, task, split = requests[index].args
                queries.append(query_of(context, flatten_visuals(doc_to_visual(self.task_dict[task][split][doc_id]))))
            for index, text in zip(chunk, self._answer(queries, kwargs)):
                answers[index] = text
            progress.update(len(chunk))
        progress.close()
        return answers

    def _answer(self, queries: list[Query], generation: dict[str, Any]) -> list[str]:
        """Greedy answers (lmms-eval's ``temperature`` 0), cut at the first ``until`` string."""
        if float(generation.get("temperature", 0) or 0) > 0:
            raise ValueError("dash_vl models decode greedily; the task asks for temperature > 0")
        until = generation.get("until") or []
        until = [until] if isinstance(until, str) else until
        max_new_tokens = int(generation.get("max_new_tokens", self.max_new_tokens))
        texts = self.vlm.answer(queries, max_new_tokens=max_new_tokens, system_prompt=self.system_prompt)
        for stop in until:
            texts = [text.split(stop)[0] for text in texts]
        return texts

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """Per request, as lmms-eval's own wrappers return it: the continuation's (the task's
        target's) mean negative log-likelihood per token after the halted prompt (lmms-eval's
        multiple-choice scoring takes the smallest), and whether greedy decoding gives it
        (:meth:`VisionLanguageModel.log_likelihood`)."""
        scores = []
        for request in tqdm(requests, disable=self.rank != 0, desc="dash_vl scoring"):
            context, doc_to_target, doc_to_visual, doc_id, task, split = request.args
            document = self.task_dict[task][split][doc_id]
            continuation = doc_to_target if isinstance(doc_to_target, str) else doc_to_target(document)
            query = query_of(context, flatten_visuals(doc_to_visual(document)))
            score = self.vlm.log_likelihood(query, continuation, self.system_prompt)
            scores.append((-score.log_prob / score.tokens, score.greedy))
        return scores

    def generate_until_multi_round(self, requests: list[Instance]) -> list[list[str]]:
        """Per request, the answers of all its rounds, as lmms-eval's own wrappers return them.

        Round 0 asks the request's context about the document's visuals. After each round the
        task's ``doc_to_text`` gets the answers so far and returns the next round's visuals and
        text, the answers to keep and whether the dialogue has ended. Every round is a prompt of
        its own (no chat history), prefilled with halting and answered greedily; requests are
        answered one at a time, since their rounds depend on their own answers.
        """
        answers = []
        for request in tqdm(requests, disable=self.rank != 0, desc="dash_vl responding (rounds)"):
            context, generation, doc_to_visual, doc_to_text, doc_id, task, split = request.args
            document = self.task_dict[task][split][doc_id]
            visuals, text, kept, round_info, finished = doc_to_visual(document), context, [], None, False
            rounds = 0
            while not finished:
                kept = [*kept, self._answer([query_of(text, flatten_visuals(visuals))], dict(generation or {}))[0]]
                rounds += 1
                visuals, text, finished, kept, round_info = doc_to_text(
                    document, previous_output=kept, round_idx=rounds, previous_round_info=round_info
                )
            answers.append(list(kept))
        return answers


class DashQwen2VL(HaltingModel):
    model_types = ("qwen2_vl", "qwen2_5_vl")


class DashLlavaOnevision(HaltingModel):
    model_types = ("llava_onevision",)


class DashInternVL(HaltingModel):
    model_types = ("internvl",)


class DashLlava(HaltingModel):
    model_types = ("llava",)


class DashLlavaNext(HaltingModel):
    model_types = ("llava_next",)


__all__ = ["DashInternVL", "DashLlava", "DashLlavaNext", "DashLlavaOnevision", "DashQwen2VL", "HaltingModel"]
