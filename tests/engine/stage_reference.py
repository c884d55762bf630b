"""A slow reference of multi-stage halting: the full sequence, a full KV cache in every layer, halted
tokens masked out as keys and frozen as states, one decision per decision layer over the tokens still
active. Shares no code with the engine (it builds on :class:`tests.reference.MaskingReference`).

Each decision is DASH's (``chooser`` unset: layer ``l``'s attention over the active tokens, the
``floor(ρ E)`` eligible active tokens of lowest ``‖U‖`` halted before the residual add, ties to the
earlier position) or made by ``chooser`` on the layer's input (a literal re-reading of a baseline):
``chooser(stage, layer, hidden, active, eligible)`` returns the ``(B, T)`` bool tokens active from
``layer`` on.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from tests.reference import LanguageModelInputs, MaskingReference, cache_argument, with_deepstack

Chooser = Callable[[int, int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class StagedMaskingReference(MaskingReference):
    decision_layers: tuple[int, ...] = ()
    chooser: Chooser | None = None
    stage_actives: list[torch.Tensor] | None = None  # (B, T) bool after each decision
    layer_keys: list[torch.Tensor] | None = None  # per layer, (B, S) bool keys visible to later calls

    def prefill(self, inputs: LanguageModelInputs) -> torch.Tensor:
        hidden, valid = inputs.embeds, inputs.valid
        seq_len = valid.shape[1]
        rope = self.rotary(hidden, inputs.rope_ids)
        active, self.stage_actives, self.layer_keys = valid.clone(), [], []
        with torch.no_grad():
            for index, layer in enumerate(self.lm.layers):
                if index in self.decision_layers:
                    stage, entering = self.decision_layers.index(index), hidden
                    eligible = self.eligible & active
                    if self.chooser is None:
                        update, output = self.split_layer(index, hidden, self.layer_mask(seq_len, active, index), rope[index])
                        active = self.halt_lowest(update, eligible, active)
                        hidden = torch.where(active[..., None], with_deepstack(inputs, index, output), entering)
                    else:
                        active = self.chooser(stage, index, hidden, active, eligible)
                    self.stage_actives.append(active)
                if self.chooser is not None or index not in self.decision_layers:
                    output = layer(
                        hidden, attention_mask=self.layer_mask(seq_len, active, index), position_embeddings=rope[index],
                        **cache_argument(self.cache),
                    )
                    output = with_deepstack(inputs, index, output)
                    hidden = torch.where(active[..., None], output, hidden) if self.stage_actives else output
                self.layer_keys.append(active)
        self.active, self.start_layer = active, self.decision_layers[0]
        largest = inputs.rope_ids.amax(dim=-1)
        self.next_rope = (largest.amax(dim=0) if largest.ndim == 2 else largest) + 1
        self.rope_rows = inputs.rope_ids.shape[0] if inputs.rope_ids.ndim == 3 else 0
        return self.lm.norm(hidden)

    def halt_lowest(self, update: torch.Tensor, eligible: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """``active`` less, per sample, the ``floor(ratio * E)`` eligible tokens of lowest ``‖U‖``, one by one."""
        active = active.clone()
        for b in range(active.shape[0]):
            candidates = eligible[b].nonzero().flatten().tolist()
            norms = {t: float(update[b, t].double().norm()) for t in candidates}
            halted = sorted(candidates, key=lambda t: norms[t])[: math.floor(self.ratio * len(candidates) + 1e-9)]
            active[b, halted] = False
        return active

    def append_keys(self, batch: int, query_len: int) -> None:
        new = torch.ones(batch, query_len, dtype=torch.bool)
        self.layer_keys = [torch.cat([keys, new], dim=1) for keys in self.layer_keys]

    def layer_masks(self, query_len: int, index: int) -> torch.Tensor:
        return self.layer_mask(query_len, self.layer_keys[index], index)
