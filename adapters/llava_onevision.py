"""LLaVA-OneVision (HF ``LlavaOnevisionForConditionalGeneration``, Qwen2 language model).

Visual tokens are every ``<image>`` and ``<video>`` placeholder the processor expands: each
image's base view and anyres crops, the image-newline features placed after every row of
crop features (the processor gives them ``<image>`` placeholders too), each video frame's
pooled features and the newline after the video. Rotary ids are 1-D and kept per token.
"""

from __future__ import annotations

from dash_vl.adapter import VisionLanguageAdapter


class LlavaOnevisionAdapter(VisionLanguageAdapter):
    model_types = ("llava_onevision",)
