"""Every contact with transformers internals that differs between the supported releases.

dash_vl supports the transformers range declared in ``pyproject.toml`` (5.17 – 5.24 as tested).
Whatever changed upstream inside that range is decided here, once, by looking at what the
installed release has (never by parsing its version string):

* the cache's keyword: ``past_key_values`` up to 5.23, ``cache`` from 5.24, where the old name
  is deprecated (a ``FutureWarning`` on every call) in model, layer and attention calls and in
  ``ModelOutput`` fields alike;
* Qwen2.5-VL's window order: a method of the vision tower up to 5.2x, a module function later;
* the keyword under which LLaVA-OneVision's ``get_video_features`` receives its frames;
* the module-level helpers the adapters and the engines read (vision rotary, anyres tiling, the
  Qwen ViTs' patch positions, attention segments and windows) and how many key slots a cache layer
  holds (a sliding-window layer keeps only its window);
* whether a Qwen-VL model takes the processor's token types (``mm_token_type_ids``, after 5.17) to
  build its M-RoPE ids;
* how an attention function is registered and how the attention modules find theirs: by the
  name in their config's ``_attn_implementation``, looked up in ``AttentionInterface`` at every
  call (packed prefill swaps that name for the duration of the prefill);
* what ``generate(cache_implementation="static")`` hands a prefill (a causal mask per layer kind over
  the static length, not the 2-D padding mask) and how a static cache's layers hold their buffers
  (``StaticLayer``: ``keys``, ``values``, a device-side ``cumulative_length``).

The next upstream change should be a change in this module and nowhere else.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.cache_utils import DynamicCache, DynamicLayer, LinearAttentionCacheLayerMixin, StaticLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, BaseModelOutputWithPooling
from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape
from transformers.models.llava_onevision.modeling_llava_onevision import image_size_to_num_patches
from transformers.utils.generic import get_max_seqlen
from transformers.vision_utils import get_vision_attention_seqlens, get_vision_position_ids

_OUTPUT_FIELDS = {field.name for field in dataclasses.fields(BaseModelOutputWithPast)}

CACHE_KEYWORD: str = "cache" if "cache" in _OUTPUT_FIELDS else "past_key_values"
"""The keyword under which this transformers release passes the KV cache to models and layers."""

CACHE_KEYWORDS: tuple[str, ...] = ("cache", "past_key_values")
"""Every name a caller (``generate``, lmms-eval, user code) may use for the cache."""


def cache_argument(cache: Any) -> dict[str, Any]:
    """``{keyword: cache}`` for a decoder layer's or attention module's call on this release."""
    return {CACHE_KEYWORD: cache}


def pop_cache(kwargs: dict[str, Any]) -> Any:
    """Remove the cache from a model call's ``kwargs`` under whichever name it came; ``None`` if absent.

    Raises:
        ValueError: if it came under two names at once.
    """
    given = [name for name in CACHE_KEYWORDS if kwargs.get(name) is not None]
    if len(given) > 1:
        raise ValueError(f"the cache was passed twice, as {given[0]!r} and {given[1]!r}; pass it once")
    values = [kwargs.pop(name, None) for name in CACHE_KEYWORDS]
    return next((value for value in values if value is not None), None)


def token_type_inputs(model_class: type, input_ids: torch.Tensor, image_token_id: int) -> dict[str, torch.Tensor]:
    """``{"mm_token_type_ids": (batch, T) long, 1 on image tokens}`` where ``model_class.forward``
    takes the processor's token types (releases after 5.17 build M-RoPE ids from them), else ``{}``."""
    if "mm_token_type_ids" not in inspect.signature(model_class.forward).parameters:
        return {}
    return {"mm_token_type_ids": (input_ids == image_token_id).long()}


def new_cache(config: Any) -> DynamicCache:
    """An empty dynamic KV cache for a language model's ``config``."""
    return DynamicCache(config=config)


def full_length_cache(config: Any) -> DynamicCache:
    """An empty dynamic cache for a language model's ``config`` whose every attention layer keeps all its
    slots (no sliding-window layer that drops the oldest) and whose linear-attention layers hold their
    recurrent and convolution states (``LinearAttentionLayer``): what a prefill on a static cache fills
    before the static layout is laid out."""
    cache = DynamicCache(config=config)
    cache.layers[:] = [layer if isinstance(layer, LinearAttentionCacheLayerMixin) else DynamicLayer() for layer in cache.layers]
    return cache


def is_recurrent_layer(cache: Any, layer_index: int) -> bool:
    """Whether ``cache``'s layer ``layer_index`` holds a linear-attention layer's recurrent and convolution
    states rather than keys and values."""
    return isinstance(cache.layers[layer_index], LinearAttentionCacheLayerMixin)


def recurrent_layer(cache: Any, layer_index: int) -> Any:
    """``cache``'s layer ``layer_index``, a linear-attention cache layer (``LinearAttentionLayer``)."""
    return cache.layers[layer_index]


def recurrent_cache(layers: dict[int, Any], num_layers: int) -> DynamicCache:
    """A cache of ``num_layers`` layers whose layer ``i`` is ``layers[i]`` (linear-attention cache layers), the others
    empty: what linear-attention layers are given to decode from and update their states in, in place."""
    cache = DynamicCache()
    cache.layers[:] = [layers[index] if index in layers else DynamicLayer() for index in range(num_layers)]
    return cache


def recurrent_states(layer: Any) -> list[torch.Tensor]:
    """The state tensors a linear-attention cache ``layer`` holds (its convolution windows, then its recurrent
    states), each updated in place by the layer's decode steps."""
    return [state for state in (*layer.conv_states.values(), *layer.recurrent_states.values()) if state is not None]


def is_static_cache(cache: Any) -> bool:
    """Whether ``cache`` is one of transformers' static caches (``cache_implementation="static"``)."""
    return bool(getattr(cache, "is_compileable", False))


def static_capacity(cache: Any) -> int:
    """The slots per sample a static cache was sized for (``max_cache_len``).

    Raises:
        ValueError: where a layer was already written (the cache was used outside the engine).
    """
    if any(_holds_tokens(layer) for layer in cache.layers):
        raise ValueError("halting needs an empty static cache at the prefill; this one already holds tokens")
    return max(layer.max_cache_len for layer in cache.layers if not isinstance(layer, LinearAttentionCacheLayerMixin))


def _holds_tokens(layer: Any) -> bool:
    """Whether a cache layer was written: its keys, or a linear-attention layer's states."""
    if isinstance(layer, LinearAttentionCacheLayerMixin):
        return any(layer.is_conv_states_initialized.values()) or any(layer.is_recurrent_states_initialized.values())
    return layer.is_initialized


def prompt_validity(attention_mask: Any, batch_size: int, length: int, device: torch.device) -> torch.Tensor:
    """``(batch, length)`` bool, the valid prompt tokens, from the mask ``generate`` passes a prefill on a
    static cache: a causal mask ``(batch, 1, length, S)`` (bool, or additive float where 0 attends),
    per layer kind in a dict, whose last query (the last prompt token under left padding) attends every
    valid prompt slot; a 2-D padding mask; or ``None`` (no padding).

    Raises:
        ValueError: where only sliding-window masks are given (their last row does not reach every slot).
    """
    if isinstance(attention_mask, dict):
        if "full_attention" not in attention_mask:
            raise ValueError(
                "a static cache on a model whose every layer has a sliding window is not supported while halting; "
                "generate without cache_implementation"
            )
        attention_mask = attention_mask["full_attention"]
    if attention_mask is None:
        return torch.ones(batch_size, length, dtype=torch.bool, device=device)
    if attention_mask.ndim == 2:
        return attention_mask[:, :length].bool()
    last = attention_mask[:, 0, -1, :length]
    return last if last.dtype == torch.bool else last == 0


class EngineStaticLayer(StaticLayer):
    """A static cache layer over buffers the halting engine laid out after the prefill (its own length
    per layer). Its decode steps run as the engine's CUDA graphs, not through ``torch.compile``, so it
    is not compileable: ``generate`` then passes later calls their 2-D padding mask, as for a dynamic cache."""

    is_compileable = False

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, filled: torch.Tensor) -> None:
        super().__init__(max_cache_len=keys.shape[2])
        self.keys, self.values, self.cumulative_length = keys, values, filled
        self.dtype, self.device = keys.dtype, keys.device
        self.batch_size, self.num_heads = keys.shape[:2]
        self.k_head_dim, self.v_head_dim = keys.shape[-1], values.shape[-1]
        self.is_initialized = True

    def reset(self) -> None:
        """Refused: the engine's steps would take the next prompt for new tokens of the last one (a new
        ``StaticCache`` is laid out anew; ``generate`` makes one every call)."""
        raise ValueError("a static cache laid out while halting cannot be reset; use a new StaticCache for the next prompt")

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Refused: beam search would rebind this layer to reordered copies while the engine's steps go on
        reading and writing its own buffers."""
        raise ValueError(
            "beam search on a static cache is not supported while halting; generate without cache_implementation"
        )


def install_static_layers(
    cache: Any, keys: list[torch.Tensor | None], values: list[torch.Tensor | None], filled: list[torch.Tensor],
    recurrent: dict[int, Any],
) -> None:
    """Make static ``cache``'s layer ``i`` hold ``keys[i]`` / ``values[i]`` ``(batch, kv_heads, L_i, head_dim)``
    with ``filled[i]`` (``()`` long on the device) slots written, so ``cache.layers[i]`` and
    ``cache.get_seq_length()`` report the engine's layout; a linear-attention layer ``i`` (``keys[i]`` is
    ``None``) is the cache layer ``recurrent[i]`` that holds its states."""
    cache.layers[:] = [
        recurrent[index] if parts[0] is None else EngineStaticLayer(*parts)
        for index, parts in enumerate(zip(keys, values, filled))
    ]


def size_static_cache_per_call(model: nn.Module) -> None:
    """Let the next ``generate(cache_implementation="static")`` size its cache for its own prompt and answer:
    ``generate`` otherwise keeps the longest length any earlier call asked for (to avoid recompiling), and
    every later decode step then reads that many masked slots (benchmarks time each length alone)."""
    if hasattr(model, "_previous_max_cache_length"):
        del model._previous_max_cache_length


def cached_keys_values(cache: Any, layer_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer ``layer_index``'s cached keys and values, ``(batch, kv_heads, S, head_dim)`` each."""
    layer = cache.layers[layer_index]
    return layer.keys, layer.values


def cached_length(cache: Any, layer_index: int) -> int:
    """How many key slots layer ``layer_index`` of ``cache`` holds: all it was given, or only the latest
    ``sliding_window - 1`` in a sliding-window layer (``DynamicSlidingWindowLayer``); none in a
    linear-attention layer (``LinearAttentionLayer``: a recurrent and a convolution state, no keys)."""
    layer = cache.layers[layer_index]
    keys = getattr(layer, "keys", None)
    return keys.shape[-2] if keys is not None and layer.is_initialized else 0


def model_output(last_hidden_state: torch.Tensor, cache: Any) -> BaseModelOutputWithPast:
    """The language model's output, with ``cache`` under this release's field name."""
    return BaseModelOutputWithPast(last_hidden_state=last_hidden_state, **{CACHE_KEYWORD: cache})


def output_cache(output: Any) -> Any:
    """The KV cache of a model output (``output.cache`` or ``output.past_key_values``)."""
    return output[CACHE_KEYWORD] if CACHE_KEYWORD in output else None


def register_attention(name: str, function: Callable[..., Any]) -> None:
    """Make ``function`` (HF's attention-function signature) available as attention implementation ``name``."""
    AttentionInterface.register(name, function)


@contextmanager
def attention_implementation(config: Any, name: str) -> Iterator[None]:
    """Within the block, the attention modules that read ``config`` call the attention function ``name``.

    Where ``config`` already names it, nothing is set (the setter walks every sub-config, and every
    decode step enters this block)."""
    previous = config._attn_implementation
    if previous == name:
        yield
        return
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = previous


def vision_rotary(attention: nn.Module) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """``apply_rotary_pos_emb_vision(q, k, cos, sin)`` of the modeling module that defines ``attention``
    (Qwen2-VL / Qwen2.5-VL ViT blocks)."""
    return sys.modules[type(attention).__module__].apply_rotary_pos_emb_vision


def qwen2_5_vl_windows(
    visual: nn.Module, grid_thw: torch.Tensor, kwargs: dict[str, Any] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Qwen2.5-VL's windows: the permutation of the merged visual tokens (position ``i`` of the ViT
    blocks' order holds LLM token ``index[i]``; ``(tokens,)`` long) and the windows' cumulative
    bounds over the patches in that order (``(W + 1,)`` int32). Precomputed ``window_index`` /
    ``cu_window_seqlens`` in a tower call's ``kwargs`` are taken from there, as the tower does."""
    if hasattr(visual, "get_window_index"):
        index, bounds = visual.get_window_index(grid_thw)
        return index, torch.unique_consecutive(torch.as_tensor(bounds, dtype=torch.int32, device=grid_thw.device))
    windows = sys.modules[type(visual).__module__].get_vision_window_index
    return windows(
        grid_thw, spatial_merge_size=visual.spatial_merge_size, window_size=visual.window_size,
        patch_size=visual.patch_size, kwargs={} if kwargs is None else kwargs,
    )


def qwen2_5_vl_window_index(visual: nn.Module, grid_thw: torch.Tensor) -> torch.Tensor:
    """The window permutation of :func:`qwen2_5_vl_windows` alone."""
    return qwen2_5_vl_windows(visual, grid_thw)[0]


def qwen_vision_positions(visual: nn.Module, grid_thw: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    """``(P, 2)`` long (row, column) of every patch of a Qwen2-VL / Qwen2.5-VL tower call, in the
    merger's 2 x 2 block order (taken from the call's ``kwargs`` where precomputed)."""
    return get_vision_position_ids(grid_thw, visual.spatial_merge_size, kwargs=kwargs)


def qwen_vision_frames(visual: nn.Module, grid_thw: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    """``(F + 1,)`` int32 cumulative bounds of the frames (an image is one) of a Qwen ViT call."""
    return get_vision_attention_seqlens(grid_thw, visual.config, kwargs=kwargs)[0]


def vision_max_seqlen(bounds: torch.Tensor, config: Any) -> int | None:
    """The longest segment of ``bounds`` where the attention implementation needs it (FlashAttention), else ``None``."""
    return get_max_seqlen(bounds, config)


def vision_output(
    last_hidden_state: torch.Tensor, pooler_output: torch.Tensor | None, hidden_states: tuple[torch.Tensor, ...] | None = None
) -> BaseModelOutputWithPooling:
    """A vision tower's output: its final states, its pooled output (Qwen ViTs: the merged tokens the
    language model receives) and, where the model reads its features there, every block's states."""
    return BaseModelOutputWithPooling(
        last_hidden_state=last_hidden_state, pooler_output=pooler_output, hidden_states=hidden_states
    )


def video_frames_argument(arguments: dict[str, Any]) -> torch.Tensor:
    """The frames of a LLaVA-OneVision ``get_video_features`` call from its bound ``arguments``:
    ``pixel_values`` up to 5.17, ``pixel_values_videos`` later."""
    return arguments["pixel_values_videos"] if "pixel_values_videos" in arguments else arguments["pixel_values"]


def anyres_tile_count(image_size: Any, grid_pinpoints: list, tile_size: int) -> int:
    """Tiles (base view included) that LLaVA-OneVision's anyres cuts an image of ``image_size`` into."""
    return image_size_to_num_patches(image_size, grid_pinpoints, tile_size)


def anyres_grid_shape(image_size: Any, grid_pinpoints: list, tile_size: int) -> tuple[int, int]:
    """``(rows, columns)`` of the crops (base view excluded) that LLaVA-NeXT's anyres cuts an image of
    ``image_size`` ``(height, width)`` into, as its ``pack_image_features`` lays them out."""
    rows, columns = get_anyres_image_grid_shape(image_size, grid_pinpoints, tile_size)
    return int(rows), int(columns)


def flash_attention_available(attn_implementation: str) -> bool:
    """Whether transformers finds the package of ``"flash_attention_2"`` / ``"_3"`` / ``"_4"`` installed."""
    from transformers.utils import import_utils

    version = attn_implementation.rsplit("_", 1)[-1]
    return bool(getattr(import_utils, f"is_flash_attn_{version}_available", lambda: False)())
