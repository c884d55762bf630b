"""Qwen3-VL (HF ``Qwen3VLForConditionalGeneration``).

What it shares with Qwen2-VL (:class:`~dash_vl.adapters.qwen2_vl.Qwen2VLAdapter`): visual tokens are
the ``<|image_pad|>`` / ``<|video_pad|>`` placeholders the merger's outputs replace (a video's
``<t seconds>`` timestamps and per-frame ``<|vision_start|>`` / ``<|vision_end|>`` are text); rotary
ids are the 3-D M-RoPE ids the outer model computes, kept per token (the language model's rotary
interleaves the three sections, which happens inside HF's rotary module); the ViT packs a call's
patches into one sequence cut per frame, so VisionZip's evidence is read as on Qwen2-VL.

DeepStack: HF's language model adds the features of intermediate ViT blocks
(``deepstack_visual_embeds``, one ``(visual tokens, D)`` tensor per layer) to the hidden states at
the visual positions (``visual_pos_masks``) after each of its first decoder layers (three on the
8B checkpoint). The engine adds the same terms after the same layers
(:mod:`dash_vl.engine.residual_additions`), to the tokens each layer runs on:

* a decision after the last DeepStack layer sees exactly what HF computes before it;
* a decision inside them (FastV with ``K = 2``, DASH with ``l_s = 1``) adds each later feature to
  the visual tokens still active, gathered with them; a halted token keeps the state it entered its
  decision layer with and receives none, as it receives no attention or MLP update;
* a pre-LLM method (VisionZip, VisPruner, DivPrune, CDPruner; decision at layer 0) keeps each
  kept token's own features; VisionZip's merged contextual tokens take the features of the
  placeholder they occupy.

Videos through ``ask``: the frames sampled by :attr:`video_sampling` (qwen-vl-utils' rule, 2 frames a
second) go to the processor as they are, with timestamps at that rate
(:meth:`video_processor_arguments`).

Encoder-side halting (``vision_ratio``) is refused: the DeepStack mergers read intermediate ViT
blocks, where halted patches would need a definition of their own.
"""

from __future__ import annotations

from typing import Any

import torch

from dash_vl.adapters.encoder_base import EncoderAdapter
from dash_vl.adapters.qwen2_vl import Qwen2VLAdapter
from dash_vl.engine.residual_additions import ResidualAdditions


class Qwen3VLAdapter(Qwen2VLAdapter):
    model_types = ("qwen3_vl",)

    def residual_additions(self, hidden_states: torch.Tensor, forward_kwargs: dict[str, Any]) -> ResidualAdditions:
        """DeepStack's terms: per layer ``i`` of ``deepstack_visual_embeds``, its ``(visual tokens, D)``
        features scattered over the ``(batch, T)`` ``visual_pos_masks`` in row-major order (as HF indexes
        them), zero elsewhere; ``(batch, T, D)`` in ``hidden_states``' dtype."""
        positions = forward_kwargs.pop("visual_pos_masks", None)
        features = forward_kwargs.pop("deepstack_visual_embeds", None)
        if features is None:
            return ResidualAdditions()
        mask = positions.to(hidden_states.device)[..., None]
        return ResidualAdditions({
            layer: torch.zeros_like(hidden_states).masked_scatter(mask, feature.to(hidden_states.device, hidden_states.dtype))
            for layer, feature in enumerate(features)
        })

    def video_processor_arguments(self, frame_counts: list[int]) -> dict[str, Any]:
        """The frames stay as sampled (``do_sample_frames=False``: Qwen3-VL's video processor would sample
        again), taken as :attr:`video_sampling`'s ``fps`` frames a second for the ``<t seconds>`` timestamps
        the processor writes before each frame pair."""
        fps = self.video_sampling.fps
        metadata = [{"total_num_frames": count, "fps": fps, "frames_indices": list(range(count))} for count in frame_counts]
        return {"do_sample_frames": False, "video_metadata": metadata}

    def encoder_adapter(self) -> EncoderAdapter:
        raise NotImplementedError(
            "encoder-side halting (vision_ratio) does not support Qwen3-VL: its DeepStack mergers read intermediate "
            "ViT blocks, which halted patches would leave undefined; use vision_ratio=None"
        )
