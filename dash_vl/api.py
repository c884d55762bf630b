"""The Python API: load a VLM with halting and ask it about images or a video.

    import dash_vl
    vlm = dash_vl.load("Qwen/Qwen2-VL-7B-Instruct", ratio=0.9)
    print(vlm.ask("What is in the picture?", images=["cat.jpg"]))
    print(vlm.last_report.summary())

A prompt longer than the model's positions (``max_position_embeddings``, prompt plus new tokens) is
answered with a warning (:func:`warn_beyond_positions`): positions past the trained ones give unreliable
answers, but under M-RoPE an image's tokens take fewer positions than tokens, so it is not refused.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from PIL import Image
from torch import nn

from dash_vl import hf_compat, model_source
from dash_vl.adapters import adapter_class_for, adapter_for
from dash_vl.config import HaltingConfig
from dash_vl.halting import Halting
from dash_vl.knobs import documented
from dash_vl.media import ImageSource, VideoSource, load_video, open_image
from dash_vl.report import HaltingReport


@dataclass(frozen=True)
class Query:
    """One question about zero or more images and at most one video."""

    question: str
    images: Sequence[ImageSource] = field(default_factory=tuple)
    video: VideoSource | None = None


@dataclass(frozen=True)
class ContinuationScore:
    """A continuation scored after a prompt: ``log_prob`` (nats, summed over its ``tokens``) and
    whether greedy decoding yields it."""

    log_prob: float
    tokens: int
    greedy: bool


class VisionLanguageModel:
    """An HF VLM, its processor, and the halting applied to it.

    Attributes:
        model: the HF model (``generate`` works as usual; halting applies inside :meth:`ask`).
        processor: the HF processor (tokenizer, image and video processors, chat template).
        halting: the :class:`dash_vl.Halting` holding the knobs and the reports; ``None`` when the
            model runs unmodified (``config=None``).
    """

    def __init__(self, model: nn.Module, processor: Any, config: HaltingConfig | None) -> None:
        self.model = model
        self.processor = processor
        self.adapter = adapter_for(model)
        self.halting = Halting(model, config) if config is not None else None

    @property
    def last_report(self) -> HaltingReport:
        if self.halting is None:
            raise RuntimeError("this model runs unmodified; it has no halting report")
        return self.halting.last_report

    def ask(
        self,
        question: str,
        images: ImageSource | Sequence[ImageSource] | None = None,
        video: VideoSource | None = None,
        max_new_tokens: int = 64,
    ) -> str:
        """Greedy answer to ``question`` about ``images`` (one or several) and/or a ``video``."""
        if isinstance(images, (str, Path, Image.Image)):
            images = [images]
        return self.answer([Query(question, tuple(images or ()), video)], max_new_tokens=max_new_tokens)[0]

    def answer(
        self, queries: Sequence[Query], max_new_tokens: int = 64, system_prompt: str | None = None
    ) -> list[str]:
        """Greedy answers to a batch of queries, prefilled together (left-padded) with halting."""
        inputs = self.prepare(queries, system_prompt)
        warn_beyond_positions(self.model, inputs["input_ids"].shape[1], max_new_tokens)
        with self.halting or nullcontext(), torch.no_grad():
            output = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, **self.cache_options())
        answers = output[:, inputs["input_ids"].shape[1] :]
        return [text.strip() for text in self.processor.batch_decode(answers, skip_special_tokens=True)]

    def cache_options(self) -> dict[str, str]:
        """``generate``'s cache argument for halted answers: a static cache on a GPU where
        ``compiled_decode`` is set (decode steps replayed as CUDA graphs, :mod:`dash_vl.engine.decode_graph`),
        else none (the dynamic cache)."""
        if self.halting is None or not self.halting.config.compiled_decode or self.model.device.type != "cuda":
            return {}
        return {"cache_implementation": "static"}

    def log_likelihood(self, query: Query, continuation: str, system_prompt: str | None = None) -> ContinuationScore:
        """How likely ``continuation`` is as the answer to ``query``: its log-probability, its
        token count, and whether greedy decoding would produce exactly its tokens.

        The prompt is prefilled with halting as in :meth:`answer`; the continuation is then
        teacher-forced through HF ``generate`` (each step forced to the continuation's next token,
        the raw logits kept), so its tokens are scored exactly as decoding sees them.

        Raises:
            ValueError: on an empty ``continuation``.
        """
        tokens = self.processor.tokenizer(continuation, add_special_tokens=False)["input_ids"]
        if not tokens:
            raise ValueError("continuation must hold at least one token")
        inputs = self.prepare([query], system_prompt)
        warn_beyond_positions(self.model, inputs["input_ids"].shape[1], len(tokens))
        forced = ForcedTokens(tokens, inputs["input_ids"].shape[1])
        with self.halting or nullcontext(), torch.no_grad():
            output = self.model.generate(
                **inputs, max_new_tokens=len(tokens), do_sample=False, logits_processor=[forced], **self.cache_options(),
                output_logits=True, return_dict_in_generate=True,
            )
        log_probs = torch.log_softmax(torch.cat(output.logits)[: len(tokens)].float(), dim=-1)
        targets = torch.tensor(tokens, device=log_probs.device)
        total = log_probs.gather(1, targets[:, None]).sum().item()
        return ContinuationScore(total, len(tokens), bool((log_probs.argmax(dim=-1) == targets).all()))

    def prepare(self, queries: Sequence[Query], system_prompt: str | None = None) -> Any:
        """The processor's left-padded batch (on the model's device) for ``queries``, chat template applied.

        Raises:
            ValueError: on an empty question, a video for a family that takes none (LLaVA-1.5,
                LLaVA-NeXT), or a batch where only some queries have a video.
        """
        prompts, images, videos = [], [], []
        for query in queries:
            if not isinstance(query.question, str) or not query.question.strip():
                raise ValueError("question must be a non-empty string")
            if query.video is not None and not self.adapter.takes_video:
                raise ValueError(f"{type(self.model).__name__} takes no video; give its frames as images")
            opened = [open_image(image) for image in query.images]
            frames = load_video(query.video, self.adapter.video_sampling) if query.video is not None else None
            content: list[dict[str, Any]] = [{"type": "image"} for _ in opened]
            if frames is not None:
                content.append({"type": "video"})
            content.append({"type": "text", "text": query.question})
            messages = [{"role": "user", "content": content}]
            if system_prompt:
                messages.insert(0, {"role": "system", "content": [{"type": "text", "text": system_prompt}]})
            prompts.append(self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
            images.append(opened)
            if frames is not None:
                videos.append(frames)
        if videos and len(videos) != len(queries):
            raise ValueError("in one batch either every query has a video or none has")
        self.processor.tokenizer.padding_side = "left"
        video_arguments = self.adapter.video_processor_arguments([len(frames) for frames in videos]) if videos else {}
        return self.processor(
            text=prompts,
            images=images if any(images) else None,
            videos=videos or None,
            padding=True,
            return_tensors="pt",
            **video_arguments,
        ).to(self.model.device)


def warn_beyond_positions(model: nn.Module, prompt_tokens: int, new_tokens: int) -> None:
    """Warn (``UserWarning``) where ``prompt_tokens + new_tokens`` exceed the language model's
    ``max_position_embeddings``."""
    positions = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    if positions is not None and prompt_tokens + new_tokens > positions:
        warnings.warn(
            f"the prompt ({prompt_tokens} tokens) plus {new_tokens} new tokens exceeds the model's {positions} positions "
            "(max_position_embeddings); answers past them are unreliable: shorten the prompt or use a model with a "
            "longer context", UserWarning, stacklevel=3,
        )


class ForcedTokens(transformers.LogitsProcessor):
    """Makes greedy ``generate`` emit ``tokens`` (ids) after a prompt of ``prompt_length`` tokens."""

    def __init__(self, tokens: Sequence[int], prompt_length: int) -> None:
        self.tokens, self.prompt_length = list(tokens), prompt_length

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        forced = torch.full_like(scores, -torch.inf)
        forced[:, self.tokens[input_ids.shape[1] - self.prompt_length]] = 0.0
        return forced


@documented
def load(
    model: str | Path,
    config: HaltingConfig | None = None,
    device: str | None = None,
    dtype: str | torch.dtype = "auto",
    attn_implementation: str = "sdpa",
    **knobs: Any,
) -> VisionLanguageModel:
    """Load a VLM from a Hub id or a local directory (both through ``from_pretrained``) with halting.

    The model name, the device and the attention implementation are checked before any weights load
    (:func:`dash_vl.model_source.resolve`, :func:`check_device`).

    Args:
        model: Hub id (``"Qwen/Qwen2-VL-7B-Instruct"``), path to a saved model and processor, or
            ``"dash-vl/scenes"`` (the scenes model shipped in the package).
        config: the halting knobs (:class:`dash_vl.HaltingConfig`); or give them as keywords:
            {knobs}
        device: ``device_map`` for ``from_pretrained`` (``"cuda"``, ``"auto"``, ...); default CPU.
        dtype: weights' dtype (``"auto"`` keeps the checkpoint's).
        attn_implementation: one of :data:`dash_vl.model_source.ATTENTION_IMPLEMENTATIONS`, default ``"sdpa"``
            (``flash_attention_4``: the `flash` extra, verified on an H200, docs/packed.md).

    Raises:
        ValueError: for a missing or broken model folder, a Hub id that cannot be fetched, a CUDA device
            without a GPU, or an attention implementation that is unknown or not installed.
        TypeError: if the checkpoint's family has no adapter.
    """
    config = HaltingConfig.resolve(config, knobs)
    source = model_source.resolve(model)
    check_device(device, attn_implementation)
    try:
        model_type = transformers.AutoConfig.from_pretrained(source).model_type
    except OSError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"could not load {str(model)!r} from the Hugging Face Hub ({first_line}); check the id and the network, "
            "or give a local folder"
        ) from error
    auto_class = getattr(transformers, adapter_class_for(model_type).auto_class)
    hf_model = auto_class.from_pretrained(
        source, dtype=dtype, attn_implementation=attn_implementation, device_map=device
    ).eval()
    processor = transformers.AutoProcessor.from_pretrained(source)
    return VisionLanguageModel(hf_model, processor, config)


def check_device(device: str | None, attn_implementation: str) -> None:
    """``device`` can be reached and ``attn_implementation`` is known and installed.

    Raises:
        ValueError: naming the cause and the fix.
    """
    if device is not None and str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but no CUDA GPU is visible to torch; leave the device unset to run on the CPU")
    if attn_implementation not in model_source.ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"attn_implementation must be one of {model_source.ATTENTION_IMPLEMENTATIONS}, got {attn_implementation!r}")
    if attn_implementation.startswith("flash") and not hf_compat.flash_attention_available(attn_implementation):
        extra = "pip install -e '.[flash]'" if attn_implementation == "flash_attention_4" else "pip install flash-attn"
        raise ValueError(
            f"attn_implementation={attn_implementation!r} needs its package, which is not installed ({extra}, on a "
            "CUDA GPU); or use sdpa"
        )


def describe(config: HaltingConfig) -> str:
    """One line naming every knob, for logs."""
    return ", ".join(f"{name}={value}" for name, value in asdict(config).items())
