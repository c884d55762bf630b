"""lmms-eval models with halting: ``dash_qwen2_vl``, ``dash_qwen3_vl``, ``dash_llava_onevision``,
``dash_internvl``, ``dash_llava`` (LLaVA-1.5), ``dash_llava_next`` (LLaVA-NeXT), ``dash_qwen3_5`` (Qwen3.5).

Registered through the ``lmms_eval.models`` entry-point group (:mod:`dash_vl.integrations.lmms_eval.entry`), so after
``pip install -e ".[eval]"``::

    lmms-eval --model dash_qwen2_vl \\
        --model_args pretrained=Qwen/Qwen2-VL-7B-Instruct,method=dash,ratio=0.9 --tasks mme

``model_args`` take every halting knob of :class:`dash_vl.HaltingConfig` (:data:`dash_vl.knobs.KNOBS`;
``method`` also takes ``none``, the unmodified model; ``none`` unsets an optional knob) and the loading
ones (:data:`LOADING_KEYS`); an unknown key is an error. ``pretrained=dash-vl/scenes`` is the scenes
model shipped in the package.
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

from dash_vl import knobs
from dash_vl.api import Query, VisionLanguageModel, load
from dash_vl.config import HaltingConfig

VIDEO_SUFFIXES: tuple[str, ...] = (".mp4", ".avi", ".mov", ".mkv", ".webm")
LOADING_KEYS: tuple[str, ...] = (
    "pretrained", "device", "device_map", "dtype", "attn_implementation", "batch_size", "max_batch_size",
    "system_prompt", "max_new_tokens",
)
UNMODIFIED = "none"
"""``method=none``: the unmodified model (no engine, no halting)."""


def halting_config(model_args: dict[str, Any]) -> HaltingConfig | None:
    """The knobs among lmms-eval's ``model_args`` (numbers may arrive as text); ``None`` for ``method=none``,
    which takes no other knob but at its default."""
    given = knobs.from_text(model_args)
    if given.get("method") == UNMODIFIED:
        defaults = {knob.name: knob.default for knob in knobs.KNOBS}
        others = {name: value for name, value in given.items() if name != "method" and value != defaults[name]}
        if others:
            listed = ", ".join(f"{name}={value}" for name, value in others.items())
            raise ValueError(
                f"method=none runs the unmodified model (vision encoder included, no packed prefill); it takes no "
                f"halting knobs (got {listed}); for the engine without halting use method=dash,ratio=0"
            )
        return None
    return HaltingConfig(**given)


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


@knobs.documented
class HaltingModel(lmms):
    """An HF VLM with halting, answering lmms-eval's ``generate_until`` requests in batches.

    Subclasses name the families they accept (:attr:`model_types`); a checkpoint of another
    family is an error, so that ``dash_qwen2_vl`` never silently evaluates something else.

    Args:
        pretrained: Hub id, local folder, or ``dash-vl/scenes``.
        halting knobs (``model_args``, as text):
            {knobs}
    """

    model_types: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        pretrained: str,
        device: str | None = "cuda",
        device_map: str | None = None,
        dtype: str = "auto",
        attn_implementation: str = "sdpa",
        batch_size: int | str = 1,
        max_batch_size: int | None = None,
        system_prompt: str | None = None,
        max_new_tokens: int = 128,
        **model_args: Any,
    ) -> None:
        super().__init__()
        unknown = sorted(set(model_args) - set(knobs.KNOB_NAMES))
        if unknown:
            raise ValueError(
                f"unknown model_args {unknown} for {type(self).__name__}; known: {sorted(knobs.KNOB_NAMES + LOADING_KEYS)}"
            )
        config = halting_config(model_args)
        from accelerate import Accelerator

        self.accelerator = Accelerator()
        if self.accelerator.num_processes > 1:  # data parallel: this process's own GPU (or the CPU under gloo)
            device_map = str(self.accelerator.device)
            self._rank, self._world_size = self.accelerator.process_index, self.accelerator.num_processes
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


class DashQwen3VL(HaltingModel):
    model_types = ("qwen3_vl",)


class DashLlavaOnevision(HaltingModel):
    model_types = ("llava_onevision",)


class DashInternVL(HaltingModel):
    model_types = ("internvl",)


class DashLlava(HaltingModel):
    model_types = ("llava",)


class DashLlavaNext(HaltingModel):
    model_types = ("llava_next",)


class DashQwen3_5(HaltingModel):
    model_types = ("qwen3_5",)


__all__ = [
    "DashInternVL", "DashLlava", "DashLlavaNext", "DashLlavaOnevision", "DashQwen2VL", "DashQwen3VL", "DashQwen3_5", "HaltingModel",
]
