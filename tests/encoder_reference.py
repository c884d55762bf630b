"""A slow reference of encoder-side halting that keeps every patch and masks halted ones out.

It shares no code with the encoder engine. It records what the unmodified tower hands its blocks
(the patch states entering block 0; for the Qwen ViTs every block's ``cu_seqlens`` and rotary
tables too: HF's own layout, Qwen2.5-VL's window order included), then computes every block by
hand from its weights over all patches with an explicit mask: same attention segment (frame,
window or tile) and, after the decision block ``l_v``, an active key. From ``l_v`` on, halted
patches are overwritten after every block with the state they entered ``l_v`` with. Units are the
frames of ``grid_thw`` (``h * w`` patches, ``t`` of them per image or video) for the Qwen ViTs and
the tiles for SigLIP and InternViT (whose ``[CLS]``, token 0, is never a candidate); the decision
is a Python loop per unit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from dash_vl.hf_compat import vision_rotary


@dataclass
class RecordedBlocks:
    """``hidden`` ``(P, D)`` entering block 0; ``segments`` the ``cu_seqlens`` of each block; ``rotary`` ``(cos, sin)``."""

    hidden: torch.Tensor
    segments: list[torch.Tensor]
    rotary: tuple[torch.Tensor, torch.Tensor]


def record_blocks(tower, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> tuple[RecordedBlocks, object]:
    """The unmodified tower's block inputs, and its output."""
    calls = []
    hooks = [
        block.register_forward_pre_hook(lambda module, args, kwargs: calls.append((args, kwargs)), with_kwargs=True)
        for block in tower.blocks
    ]
    with torch.no_grad():
        output = tower(pixel_values, grid_thw=grid_thw)
    for hook in hooks:
        hook.remove()
    args, kwargs = calls[0]
    hidden = args[0] if args else kwargs["hidden_states"]
    return RecordedBlocks(hidden, [kw["cu_seqlens"] for _, kw in calls], kwargs["position_embeddings"]), output


def segment_of(bounds: torch.Tensor) -> torch.Tensor:
    """``(P,)``: the segment index of every patch."""
    segment = torch.empty(int(bounds[-1]), dtype=torch.long)
    for index in range(len(bounds) - 1):
        segment[int(bounds[index]) : int(bounds[index + 1])] = index
    return segment


def frame_units(grid_thw: torch.Tensor) -> list[list[int]]:
    """The patch positions of each frame, in order."""
    units, start = [], 0
    for t, h, w in grid_thw.tolist():
        for _ in range(t):
            units.append(list(range(start, start + h * w)))
            start += h * w
    return units


def block_by_hand(block, hidden: torch.Tensor, allowed: torch.Tensor, rotary) -> tuple[torch.Tensor, torch.Tensor]:
    """Block ``(P, D)`` -> (attention update ``U``, output), attention restricted to ``allowed`` ``(P, P)``."""
    attention = block.attn
    patches = hidden.shape[0]
    query, key, value = attention.qkv(block.norm1(hidden)).reshape(patches, 3, attention.num_heads, -1).unbind(1)
    query, key = vision_rotary(attention)(query, key, *rotary)
    scores = torch.einsum("qhd,khd->hqk", query.float(), key.float()) * attention.scaling
    probabilities = scores.masked_fill(~allowed, -torch.inf).softmax(dim=-1)
    mixed = torch.einsum("hqk,khd->qhd", probabilities, value.float()).reshape(patches, -1).to(hidden.dtype)
    update = attention.proj(mixed)
    state = hidden + update
    return update, state + block.mlp(block.norm2(state))


def reference_encoder(
    tower, pixel_values: torch.Tensor, grid_thw: torch.Tensor, ratio: float, start: int,
    scores: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Final patch states ``(P, D)`` in the blocks' order and the active patches ``(P,)`` bool; each
    unit halts its lowest patches by ``‖U‖`` at ``start``, or by ``scores`` ``(P,)`` where given."""
    recorded, _ = record_blocks(tower, pixel_values, grid_thw)
    hidden = recorded.hidden
    active = torch.ones(hidden.shape[0], dtype=torch.bool)
    with torch.no_grad():
        for index, block in enumerate(tower.blocks):
            segment = segment_of(recorded.segments[index])
            allowed = segment[:, None] == segment[None, :]
            if index > start:
                allowed &= active[None, :]
            update, output = block_by_hand(block, hidden, allowed, recorded.rotary)
            if index == start:
                frozen = hidden
                for unit in frame_units(grid_thw):
                    norms = {
                        patch: float(update[patch].double().norm() if scores is None else scores[patch]) for patch in unit
                    }
                    halted = sorted(unit, key=lambda patch: norms[patch])[: math.floor(ratio * len(unit) + 1e-9)]
                    active[halted] = False
            if index >= start:
                output = torch.where(active[:, None], output, frozen)
            hidden = output
    return hidden, active


def masked_attention(query, key, value, allowed: torch.Tensor, scale: float) -> torch.Tensor:
    """``(tiles, n, heads, d)`` queries, keys, values -> ``(tiles, n, heads * d)``, keys outside ``allowed`` ``(tiles, n, n)`` hidden."""
    scores = torch.einsum("bqhd,bkhd->bhqk", query.float(), key.float()) * scale
    probabilities = scores.masked_fill(~allowed[:, None], -torch.inf).softmax(dim=-1)
    return torch.einsum("bhqk,bkhd->bqhd", probabilities, value.float()).flatten(2).to(query.dtype)


def heads(tensor: torch.Tensor, count: int) -> torch.Tensor:
    return tensor.view(*tensor.shape[:2], count, -1)


def siglip_layer_by_hand(layer, tiles: torch.Tensor, allowed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SigLIP encoder layer on ``(tiles, n, D)`` -> (attention update, output)."""
    attention = layer.self_attn
    normed = layer.layer_norm1(tiles)
    q, k, v = (heads(projection(normed), attention.num_heads) for projection in (attention.q_proj, attention.k_proj, attention.v_proj))
    update = attention.out_proj(masked_attention(q, k, v, allowed, attention.scale))
    state = tiles + update
    return update, state + layer.mlp(layer.layer_norm2(state))


def internvit_layer_by_hand(layer, tiles: torch.Tensor, allowed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """InternViT layer on ``(tiles, n, D)`` -> (attention update with layer scale, output)."""
    attention = layer.attention
    normed = layer.layernorm_before(tiles)
    q = heads(attention.q_norm(attention.q_proj(normed)), attention.num_heads)
    k = heads(attention.k_norm(attention.k_proj(normed)), attention.num_heads)
    v = heads(attention.v_proj(normed), attention.num_heads)
    update = layer.lambda_1 * attention.projection_layer(masked_attention(q, k, v, allowed, attention.scale))
    state = tiles + update
    return update, state + layer.lambda_2 * layer.mlp(layer.layernorm_after(state))


def reference_tiled_encoder(
    blocks, layer_by_hand, call: tuple[tuple, dict], tower, ratio: float, start: int, has_cls: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Final states ``(tiles, n, D)`` of a tile-batched tower called with ``call`` and the active
    patches ``(tiles, n)`` bool; per tile the ``floor(ratio * candidates)`` lowest ``‖U‖`` halt."""
    entering = []
    hook = blocks[0].register_forward_pre_hook(lambda module, args: entering.append(args[0]))
    with torch.no_grad():
        tower(*call[0], **call[1])
    hook.remove()
    hidden = entering[0]
    count, length, _ = hidden.shape
    active = torch.ones(count, length, dtype=torch.bool)
    with torch.no_grad():
        for index, layer in enumerate(blocks):
            allowed = torch.ones(count, length, length, dtype=torch.bool)
            if index > start:
                allowed &= active[:, None, :]
            update, output = layer_by_hand(layer, hidden, allowed)
            if index == start:
                frozen = hidden
                for tile in range(count):
                    candidates = list(range(1 if has_cls else 0, length))
                    norms = {patch: float(update[tile, patch].double().norm()) for patch in candidates}
                    halted = sorted(candidates, key=lambda patch: norms[patch])[: math.floor(ratio * len(candidates) + 1e-9)]
                    active[tile, halted] = False
            if index >= start:
                output = torch.where(active[..., None], output, frozen)
            hidden = output
    return hidden, active
