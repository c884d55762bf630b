"""One decode step of the decoder stack, captured as a CUDA graph and replayed.

A static-cache step (:mod:`dash_vl.engine.static_slots`) has fixed shapes and reads nothing to the host,
so its hundreds of kernel launches can be recorded once and replayed as one: the host no longer
paces the GPU (an eager step of a 7B model launches about 20 kernels a layer, ≈ 20 ms of host
work against a few ms of GPU work). The graph reads its inputs from buffers of its own (the new
tokens' states and rotary ids, copied in before each replay) and writes the step's final states
to a buffer of its own; the KV buffers it writes are those of the static cache it was captured on.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Step = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``step(hidden (batch, Q, D), rope_ids (..., batch, Q)) -> (batch, Q, D)``: one call's device work."""


class DecodeGraph:
    """``step`` recorded once for inputs shaped like ``hidden`` and ``rope_ids``, replayed by :meth:`__call__`.

    Recording does not run ``step``: the first replay does. ``step`` must have run eagerly once
    before (loading its kernels and libraries' workspaces).
    """

    def __init__(self, step: Step, hidden: torch.Tensor, rope_ids: torch.Tensor) -> None:
        self.hidden = hidden.clone()
        self.rope_ids = rope_ids.clone()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.output = step(self.hidden, self.rope_ids)

    @staticmethod
    def supported(device: torch.device) -> bool:
        """Whether steps on ``device`` can be recorded (CUDA devices)."""
        return device.type == "cuda"

    def fits(self, hidden: torch.Tensor, rope_ids: torch.Tensor) -> bool:
        """Whether a call's inputs have the recorded shapes and dtypes."""
        return (hidden.shape, hidden.dtype, rope_ids.shape) == (self.hidden.shape, self.hidden.dtype, self.rope_ids.shape)

    def __call__(self, hidden: torch.Tensor, rope_ids: torch.Tensor) -> torch.Tensor:
        """Replay the step on ``hidden`` and ``rope_ids``; returns a copy of its output (the graph's own
        buffer is overwritten by the next replay)."""
        self.hidden.copy_(hidden)
        self.rope_ids.copy_(rope_ids)
        self.graph.replay()
        return self.output.clone()
