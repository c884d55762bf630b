"""Vision-language models built from configuration values with random weights, and tiny offline processors.

For tests (tiny shapes on the CPU, with each family's real image and video processing) and
speed benchmarks (the public checkpoints' shapes on a GPU: speed does not depend on weight
values). Nothing here reaches the Hugging Face Hub. One module per family; this one holds the
registry and what the families share.
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING, Any

from dash_vl.lazy_registry import LazyRegistry

if TYPE_CHECKING:
    import torch
    from torch import nn

FAMILIES: LazyRegistry = LazyRegistry({
    name: f"dash_vl.testing.{name}" for name in (
        "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava_onevision", "internvl", "llava", "llava_next", "qwen3_5",
    )
})
"""Family name → its module (imported on first use, so that listing the names imports no torch)."""


def takes_video(name: str) -> bool:
    """Whether family ``name``'s model takes videos (a family module says ``TAKES_VIDEO = False`` where not:
    LLaVA-1.5, LLaVA-NeXT)."""
    return getattr(family(name), "TAKES_VIDEO", True)


def family(name: str) -> ModuleType:
    """The module that builds family ``name``.

    Raises:
        ValueError: for a name not in :data:`FAMILIES`.
    """
    if name not in FAMILIES:
        raise ValueError(f"no random-model family {name!r}; choose one of {sorted(FAMILIES)}")
    return FAMILIES[name]


def tiny_processor(name: str) -> Any:
    """The tiny offline processor of family ``name`` (real image/video processing, byte-level tokenizer)."""
    return family(name).tiny_processor()


def tiny_config(name: str, tokenizer: Any, num_layers: int = 6, **text: Any) -> Any:
    """A tiny config of family ``name``: a ``num_layers``-layer language model of hidden size 64
    (4 heads, 2 KV heads) whose special ids match ``tokenizer``; ``text`` overrides language-model fields."""
    pad_id, eos_id = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
    text_config = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=4096,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        bos_token_id=pad_id,
    )
    return family(name).tiny_config(tokenizer, dict(text_config, **text))


def full_size_config(name: str, num_layers: int | None = None) -> Any:
    """The public 7B/8B checkpoint's shapes for family ``name`` (optionally fewer layers)."""
    return family(name).full_size_config(num_layers)


def long_prompt(name: str, config: Any, length: int, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Model inputs of family ``name`` (batch 1) with about ``length`` tokens, most of them visual,
    for timing a whole model: one image (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) or one video (LLaVA-OneVision,
    InternVL), random pixels, text around it."""
    return family(name).long_prompt(config, length, device, dtype)


IMAGE_BATCH_FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
"""The families whose image inputs concatenate along dim 0 (flattened patches), so that
:func:`long_prompt_batch` can join their prompts."""


def long_prompt_batch(
    name: str, config: Any, lengths: list[int], device: torch.device, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """One left-padded batch (:func:`~dash_vl.testing.prompts.left_padded_batch`) of one
    :func:`long_prompt` per entry of ``lengths``: an image each, of about that many tokens.

    Raises:
        ValueError: for a family not in :data:`IMAGE_BATCH_FAMILIES`.
    """
    if name not in IMAGE_BATCH_FAMILIES:
        raise ValueError(f"no batched timing prompt for {name!r}; families with one: {list(IMAGE_BATCH_FAMILIES)}")
    from dash_vl.testing.prompts import left_padded_batch

    return left_padded_batch([long_prompt(name, config, length, device, dtype) for length in lengths])


def video_prompt_families() -> tuple[str, ...]:
    """The families with a :func:`long_video_prompt` (their ``long_prompt`` is a video too)."""
    return tuple(name for name, module in FAMILIES.items() if hasattr(module, "long_video_prompt"))


def __getattr__(name: str) -> Any:
    """``VIDEO_PROMPT_FAMILIES`` (:func:`video_prompt_families`) and ``byte_level_tokenizer``, imported on first use."""
    if name == "VIDEO_PROMPT_FAMILIES":
        return video_prompt_families()
    if name == "byte_level_tokenizer":
        from dash_vl.testing.tokenizer import byte_level_tokenizer

        return byte_level_tokenizer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def long_video_prompt(name: str, config: Any, frames: int, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Model inputs of family ``name`` (batch 1) for one video of ``frames`` frames (random pixels)
    between two 64-token texts, its placeholders laid out as the family's processor lays them out;
    each family module's ``long_video_prompt`` states its shapes.

    Raises:
        ValueError: for a family not in :data:`VIDEO_PROMPT_FAMILIES`.
    """
    if name not in video_prompt_families():
        raise ValueError(f"no video timing prompt for {name!r}; families with one: {list(video_prompt_families())}")
    return family(name).long_video_prompt(config, frames, device, dtype)


def random_model(
    config: Any,
    attn_implementation: str = "sdpa",
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> nn.Module:
    """The family's ``...ForConditionalGeneration`` for ``config`` with seeded random weights, in eval mode
    (``dtype`` default: float32). The weights are drawn in ``dtype`` on ``device``, so a full-size model never
    holds a float32 copy (a 27B model in bfloat16 takes 54 GB, not 108 GB, while it is built)."""
    import torch

    model_class = next(module.MODEL_CLASS for module in FAMILIES.values() if module.MODEL_CLASS.config_class is type(config))
    torch.manual_seed(seed)
    config._attn_implementation = attn_implementation
    config.text_config._attn_implementation = attn_implementation
    dtype = dtype or torch.float32
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = model_class(config)
    finally:
        torch.set_default_dtype(default_dtype)
    return model.to(dtype).eval()


__all__ = [
    "FAMILIES", "VIDEO_PROMPT_FAMILIES", "byte_level_tokenizer", "family", "full_size_config", "long_prompt", "long_video_prompt",
    "random_model", "takes_video", "tiny_config", "tiny_processor",
]
