"""InternVL 2.5 / 3 in HF format (HF ``InternVLForConditionalGeneration``; Qwen2 or Llama language model).

Visual tokens are the ``<IMG_CONTEXT>`` placeholders that the pixel-shuffled tile features
replace, for images (every dynamic tile and the thumbnail) and video frames alike. The
``<img>`` / ``</img>`` delimiters and ``FrameN:`` labels are text. The language model's
layers are used through the shared pre-norm interface, whichever family it is.
"""

from __future__ import annotations

from dash_vl.adapter import VisionLanguageAdapter


class InternVLAdapter(VisionLanguageAdapter):
    model_types = ("internvl",)
