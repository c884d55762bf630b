"""The interface between the halting engine and one model family.

An adapter tells the engine where a model keeps its decoder layers, final norm, rotary
embedding and token embedding, how position ids become rotary ids, which prompt tokens are
visual, and how a decoder layer splits into its attention and feed-forward sub-layers. The
defaults here fit HF's pre-norm decoder layers (``input_layernorm``, ``self_attn``,
``post_attention_layernorm``, ``mlp``: Llama, Qwen2, Qwen2-VL, Qwen3, ...); a family overrides
only what differs.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, ClassVar

import torch
from torch import nn

from dash_vl.adapters.encoder_base import EncoderAdapter
from dash_vl.engine.encoder_evidence import SegmentAttention, VisualEvidence
from dash_vl.engine.residual_additions import ResidualAdditions
from dash_vl.media import FrameSampling

ATTENTION_KINDS: tuple[str, ...] = ("full_attention", "sliding_attention")


class ModelAdapter:
    """Maps one HF model family onto the engine's decoder-loop interface.

    Subclasses set :attr:`model_types` (HF ``config.model_type`` values) and
    :attr:`auto_class` (the ``transformers`` auto class that loads the family), and override
    :attr:`text_model` where the language model is not ``model.model``.
    """

    model_types: ClassVar[tuple[str, ...]] = ()
    auto_class: ClassVar[str] = "AutoModelForCausalLM"
    has_visual_tokens: ClassVar[bool] = False
    layer_kinds: ClassVar[tuple[str, ...]] = ATTENTION_KINDS
    """The kinds of decoder layer (``config.layer_types`` values) the family's adapter runs; a family with
    ``"linear_attention"`` layers (recurrent token mixers, Qwen3.5) adds it."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    @property
    def text_model(self) -> nn.Module:
        """The decoder stack whose ``forward`` the engine takes over (embeddings, layers, norm)."""
        return self.model.model

    @property
    def prompt_module(self) -> nn.Module:
        """The module that receives the prompt's ``input_ids`` before they become embeddings."""
        return self.model

    @property
    def text_config(self) -> Any:
        """The language model's config (hidden size, heads, attention implementation)."""
        return self.text_model.config

    @property
    def layers(self) -> nn.ModuleList:
        return self.text_model.layers

    @property
    def final_norm(self) -> nn.Module:
        return self.text_model.norm

    @property
    def attn_implementation(self) -> str:
        return self.text_config._attn_implementation

    @cached_property
    def layer_types(self) -> tuple[str, ...]:
        """The kind of every decoder layer: ``"full_attention"``, ``"sliding_attention"`` or, where the
        family has them (:attr:`layer_kinds`), ``"linear_attention"``.

        ``config.layer_types`` where the config has it (Gemma-3, Qwen2, ...); else every layer is
        sliding where ``config.sliding_window`` is set (Mistral), as HF's own cache reads it.

        Raises:
            ValueError: for a kind the engine cannot mask (chunked attention, ...).
        """
        config = self.text_config
        types = getattr(config, "layer_types", None)
        if types is None:
            kind = "full_attention" if getattr(config, "sliding_window", None) is None else "sliding_attention"
            types = [kind] * len(self.layers)
        unsupported = sorted(set(types) - set(self.layer_kinds))
        if unsupported:
            raise ValueError(f"dash_vl cannot mask layers of kind {unsupported}; it supports {self.layer_kinds}")
        return tuple(types)

    @property
    def has_linear_layers(self) -> bool:
        """Whether some decoder layer mixes tokens with a recurrence (``"linear_attention"``), not attention."""
        return "linear_attention" in self.layer_types

    @property
    def attention_output_gate(self) -> bool:
        """Whether ``q_proj`` of the attention layers also yields a per-head output gate (``2 x heads x head_dim``
        outputs): ``config.attn_output_gate`` where the config sets it."""
        return bool(getattr(self.text_config, "attn_output_gate", False))

    @property
    def sliding_window(self) -> int | None:
        """Keys this many positions or more before a query are masked in ``"sliding_attention"`` layers."""
        return getattr(self.text_config, "sliding_window", None)

    @property
    def layer_windows(self) -> tuple[int | None, ...]:
        """Per decoder layer, its sliding window in positions: :attr:`sliding_window` for a
        ``"sliding_attention"`` layer, ``None`` for full attention (``len(layers)`` entries).

        Read from the config on every access, as :attr:`sliding_window` is.
        """
        window = self.sliding_window
        return tuple(window if kind == "sliding_attention" else None for kind in self.layer_types)

    def window_shorter_than(self, seq_len: int) -> int | None:
        """The sliding window of a layer that would mask part of a ``seq_len``-token prompt (a window
        shorter than the prompt), or ``None`` where every layer attends over the whole prompt."""
        windows = [window for window in self.layer_windows if window is not None and window < seq_len]
        return min(windows, default=None)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``(batch, T)`` token ids to ``(batch, T, hidden)`` embeddings."""
        return self.text_model.embed_tokens(input_ids)

    def rope_position_ids(
        self, position_ids: torch.Tensor | None, batch_size: int, seq_len: int, past_len: int, device: torch.device
    ) -> torch.Tensor:
        """Rotary position ids ``(..., batch, T)`` for the new tokens; the engine gathers on the last dim.

        Default: 1-D positions, ``past_len + arange(T)`` where the caller gave none.
        """
        if position_ids is None:
            position_ids = torch.arange(past_len, past_len + seq_len, device=device).expand(batch_size, -1)
        return position_ids

    def position_embeddings(
        self, hidden_states: torch.Tensor, rope_ids: torch.Tensor, layer_type: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cos, sin)`` for ``rope_ids`` as decoder layers of kind ``layer_type`` expect them.

        Default: one rotary embedding for every kind of layer.
        """
        return self.text_model.rotary_emb(hidden_states, rope_ids)

    def visual_mask(self, input_ids: torch.Tensor | None) -> torch.Tensor | None:
        """``(batch, T)`` bool, True on visual tokens; ``None`` when the family has none."""
        return None

    def residual_additions(self, hidden_states: torch.Tensor, forward_kwargs: dict[str, Any]) -> ResidualAdditions:
        """What the model adds to the residual stream after some decoder layers, outside them, for the new
        tokens ``hidden_states`` ``(batch, T, D)``; the keywords that carry it are taken out of
        ``forward_kwargs`` (those the outer model passed its language model's ``forward``).

        Default: nothing (:class:`~dash_vl.engine.residual_additions.ResidualAdditions` is empty).
        """
        return ResidualAdditions()

    def attention_update(self, layer: nn.Module, hidden_states: torch.Tensor, **attention_kwargs: Any) -> torch.Tensor:
        """The attention sub-layer's output ``U`` (``(batch, T, hidden)``, before the residual add)."""
        normed = layer.input_layernorm(hidden_states)
        update, _ = layer.self_attn(hidden_states=normed, **attention_kwargs)
        return update

    def attention_queries(
        self, layer: nn.Module, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        """The attention sub-layer's queries for ``hidden_states`` ``(batch, Q, hidden)``: normed,
        projected, per-head normed where the family has ``q_norm``, rotary applied and multiplied by
        the attention's scaling; ``(batch, heads, Q, head_dim)``."""
        attention = layer.self_attn
        return self._projected(attention.q_proj, getattr(attention, "q_norm", None), layer, hidden_states,
                               position_embeddings) * attention.scaling

    def attention_keys(
        self, layer: nn.Module, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        """The attention sub-layer's keys for ``hidden_states`` ``(batch, S, hidden)``, as it caches them:
        normed, projected, per-head normed where the family has ``k_norm``, rotary applied;
        ``(batch, kv_heads, S, head_dim)``."""
        attention = layer.self_attn
        return self._projected(attention.k_proj, getattr(attention, "k_norm", None), layer, hidden_states,
                               position_embeddings)

    @staticmethod
    def _projected(
        projection: nn.Module, head_norm: nn.Module | None, layer: nn.Module, hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        """``projection(input_layernorm(h))`` per head, ``head_norm`` applied where given, then the rotary
        ``(cos, sin)`` (``(batch, S, head_dim)``); ``(batch, heads, S, head_dim)``."""
        normed = layer.input_layernorm(hidden_states)
        heads = projection(normed).view(*normed.shape[:-1], -1, layer.self_attn.head_dim)
        if head_norm is not None:
            heads = head_norm(heads)
        return rotated(heads.transpose(1, 2), position_embeddings)

    def feed_forward(self, layer: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
        """The rest of the layer after the attention residual: ``h + mlp(norm(h))``."""
        return hidden_states + layer.mlp(layer.post_attention_layernorm(hidden_states))


def rotated(heads: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """``heads`` ``(batch, heads, S, head_dim)`` with the rotary ``(cos, sin)`` (``(batch, S, rotary_dim)``)
    applied to their first ``rotary_dim`` channels (all of them but where the family rotates part of each head)."""
    cos, sin = (part.unsqueeze(1) for part in position_embeddings)
    rotary_dim = cos.shape[-1]
    turned, kept = heads[..., :rotary_dim], heads[..., rotary_dim:]
    first, second = turned.chunk(2, dim=-1)
    return torch.cat([turned * cos + torch.cat([-second, first], dim=-1) * sin, kept], dim=-1)


class VisionLanguageAdapter(ModelAdapter):
    """A VLM whose language model is ``model.model.language_model`` and whose visual tokens are the
    placeholders named by ``config.image_token_id`` / ``config.video_token_id`` (where present).

    :attr:`video_sampling` says how many frames the Python API takes from a video file for
    the family (32 evenly spaced unless a family says otherwise); :attr:`takes_video` is False
    for a family whose model takes none.

    For policies that read the vision encoder (VisionZip, see :mod:`dash_vl.engine.vision_evidence`) a
    family names its feature functions (:attr:`feature_functions`), the attention module of the
    encoder's feature layer (:attr:`vision_feature_attention`), whether that encoder has a
    ``[CLS]`` token, how to get queries and keys from that module's inputs
    (:meth:`vision_segments`; the default fits encoders with ``q_proj`` / ``k_proj`` over a
    batch of tiles) and how its patches become LLM visual tokens (:meth:`tokens_from_patches`);
    where :attr:`selects_before_projector` (the encoder's patch states go straight to the
    projector, LLaVA-1.5 and LLaVA-NeXT) the family also implements
    :class:`~dash_vl.engine.encoder_evidence.PatchesToProjector`, through which VisionZip and VisPruner
    run their official rules before the projector.

    For encoder-side halting (:mod:`dash_vl.engine.vision_encoder`) a family names the adapter of its
    vision tower (:meth:`encoder_adapter`).
    """

    auto_class = "AutoModelForImageTextToText"
    has_visual_tokens = True
    video_sampling: ClassVar[FrameSampling] = FrameSampling("uniform", max_frames=32)
    visual_token_id_names: ClassVar[tuple[str, ...]] = ("image_token_id", "video_token_id")
    feature_functions: ClassVar[dict[str, str]] = {"image": "get_image_features", "video": "get_video_features"}
    vision_has_cls: ClassVar[bool] = False
    selects_before_projector: ClassVar[bool] = False
    takes_video: ClassVar[bool] = True

    @property
    def text_model(self) -> nn.Module:
        return self.model.model.language_model

    @property
    def prompt_module(self) -> nn.Module:
        return self.model.model

    def visual_mask(self, input_ids: torch.Tensor | None) -> torch.Tensor | None:
        if input_ids is None:
            return None
        mask = torch.zeros_like(input_ids, dtype=torch.bool)
        for name in self.visual_token_id_names:
            token_id = getattr(self.model.config, name, None)
            if token_id is not None:
                mask |= input_ids == token_id
        return mask

    def video_processor_arguments(self, frame_counts: list[int]) -> dict[str, Any]:
        """Keywords for the processor's call on videos already sampled by :attr:`video_sampling`
        (``frame_counts``: frames of each). Default: none."""
        return {}

    @property
    def vision_feature_attention(self) -> nn.Module:
        """The self-attention module of the vision encoder layer whose output the LLM receives."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its vision encoder's attention")

    def feature_layer(self, layers: nn.ModuleList) -> nn.Module:
        """The encoder layer that produces ``hidden_states[config.vision_feature_layer]``."""
        index = self.model.config.vision_feature_layer
        if not isinstance(index, int) or index == 0:
            raise ValueError(f"vision_feature_layer must be one nonzero layer index, got {index!r}")
        return layers[index if index < 0 else index - 1]

    def vision_segments(self, attention: nn.Module, args: tuple, kwargs: dict) -> list[SegmentAttention]:
        """One :class:`SegmentAttention` per tile of the batch ``(tiles, n, width)`` entering ``attention``
        (``q_proj`` / ``k_proj``, ``q_norm`` / ``k_norm`` where present, no rotary)."""
        hidden = args[0] if args else kwargs["hidden_states"]
        queries, keys = attention.q_proj(hidden), attention.k_proj(hidden)
        if hasattr(attention, "k_norm"):
            queries, keys = attention.q_norm(queries), attention.k_norm(keys)
        queries, keys = (part.view(*hidden.shape[:2], attention.num_heads, -1).transpose(1, 2) for part in (queries, keys))
        queries = queries * attention.scale
        metric = keys.mean(dim=1)
        return [SegmentAttention(queries[tile], keys[tile], metric[tile]) for tile in range(hidden.shape[0])]

    def encoder_adapter(self) -> EncoderAdapter:
        """The adapter of the vision tower whose ``forward`` the encoder halting engine takes over."""
        raise NotImplementedError(
            f"{type(self).__name__} has no encoder adapter: encoder-side halting (vision_ratio) supports Qwen2-VL, "
            "Qwen2.5-VL, LLaVA-OneVision, InternVL, LLaVA-1.5 and LLaVA-NeXT"
        )

    def tokens_from_patches(self, modality: str, patches: torch.Tensor, arguments: dict[str, Any]) -> VisualEvidence:
        """Map the evidence of one feature-function call from encoder patches to LLM visual tokens.

        Args:
            modality: ``"image"`` or ``"video"``.
            patches: ``(P, 1 + m)``: dominance then metric of every patch the LLM's features come
                from (``[CLS]`` excluded), in the encoder's order.
            arguments: the feature function's arguments by name.
        """
        raise NotImplementedError(f"{type(self).__name__} does not map encoder patches to visual tokens")
