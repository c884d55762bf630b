"""Terms a model adds to the residual stream between decoder layers, outside the layers themselves.

Qwen3-VL's DeepStack is one: HF's language model adds visual features from intermediate ViT blocks
to the hidden states at the visual positions after each of its first decoder layers. The engine
owns that loop, so the adapter hands the terms over
(:meth:`dash_vl.adapters.base.ModelAdapter.residual_additions`) and the engine adds each after its
layer in the layout the layer ran in: the prompt's (padded or packed), or the compact layout of the
tokens still active after a decision, gathered with them. Halted tokens keep the state they entered
their decision layer with, so they receive no later term; the active ones receive exactly what HF
adds to them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from dash_vl.engine.active_set import ActiveSet
    from dash_vl.engine.layouts import TokenLayout


@dataclass(frozen=True)
class ResidualAdditions:
    """Per decoder layer, what is added to that layer's output.

    Attributes:
        per_layer: layer index → ``(batch, T, D)`` in the padded layout of the tokens the additions
            are over (zero where nothing is added); empty where the model adds nothing.
    """

    per_layer: dict[int, torch.Tensor] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.per_layer)

    def after(self, layer_index: int, states: torch.Tensor, layout: TokenLayout | None = None) -> torch.Tensor:
        """``states`` leaving layer ``layer_index`` (in ``layout``: ``(batch, T, D)`` padded, ``(1, N, D)``
        packed; ``None``: padded) plus that layer's term, in the states' dtype and device."""
        addition = self.per_layer.get(layer_index)
        if addition is None:
            return states
        addition = addition.to(states.device, states.dtype)
        return states + (addition if layout is None else layout.pack(addition))

    def tokens(self, start: int, end: int) -> ResidualAdditions:
        """The terms of tokens ``[start, end)`` of the sequence."""
        return ResidualAdditions({index: addition[:, start:end] for index, addition in self.per_layer.items()})

    def gathered(self, active: ActiveSet) -> ResidualAdditions:
        """The terms of the active tokens in their compact ``(batch, K, D)`` layout; zero on its padding slots."""
        gathered = {}
        for index, addition in self.per_layer.items():
            slots = active.index.to(addition.device)
            taken = addition.gather(1, slots[..., None].expand(-1, -1, addition.shape[-1]))
            gathered[index] = torch.where(active.slot_valid.to(addition.device)[..., None], taken, 0)
        return ResidualAdditions(gathered)
