"""The encoder report's ``relative_flops`` (:func:`dash_vl.engine.vision_encoder.encoder_flops`) against FLOPs
counted by hand here from the blocks' weight shapes, the patches of each frame / window / tile, and
the reference encoder's kept set (:mod:`tests.encoder_reference`); none of the engine's counting code
is used for the expected values."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from dash_vl import Halting
from tests.conftest import FAMILY_NAMES, processor_of, vl_inputs
from tests.encoder_reference import reference_encoder, reference_tiled_encoder
from tests.engine.test_encoder_halting import TILED, deep_tower_model, tower_calls, tower_of

# Qwen ViT calls built here: an image of 10 x 12 patches, and a video of 2 frames of 4 x 4 patches.
QWEN_GRID = torch.tensor([[1, 10, 12], [2, 4, 4]])
FRAMES = [120, 16, 16]
# Qwen2.5-VL's windows (tiny tower: 56 px / 14 px patches / merge 2 = 2 x 2 merged tokens = 4 x 4
# patches): the 5 x 6 merged grid cuts into rows of 2, 2, 1 merged tokens and columns of 2, 2, 2;
# each 2 x 2 merged frame of the video is one window.
WINDOWS = [16] * 6 + [8] * 3 + [16, 16]


def linears(module: nn.Module) -> list[nn.Linear]:
    return [child for child in module.modules() if isinstance(child, nn.Linear)]


def block_by_hand(block: nn.Module, mlp: nn.Module):
    """FLOPs of one block, from its own weights: 2 per multiply-add of every attention linear per
    query, of every MLP linear per MLP token, and ``4 * width`` per query-key pair (scores and values)."""
    attention_weights = sum(linear.weight.numel() for linear in linears(block) if not any(linear is m for m in linears(mlp)))
    mlp_weights = sum(linear.weight.numel() for linear in linears(mlp))
    width = linears(mlp)[0].in_features

    def flops(queries: int, pairs: int, mlp_tokens: int) -> int:
        return 2 * attention_weights * queries + 4 * width * pairs + 2 * mlp_weights * mlp_tokens

    return flops


def squares(lengths: list[int]) -> int:
    return sum(length * length for length in lengths)


def expected_relative(flops, start: int, depth: int, segments_of, kept_of) -> float:
    """By hand: blocks < start on every patch; block ``start``'s attention on every patch, its MLP on
    the kept ones; later blocks on the kept patches of each segment. ``segments_of(block)`` and
    ``kept_of(block)`` are that block's segment lengths over all / kept patches."""
    patches = sum(segments_of(0))
    kept = sum(kept_of(0))
    unmodified = sum(flops(patches, squares(segments_of(block)), patches) for block in range(depth))
    halted = sum(flops(patches, squares(segments_of(block)), patches) for block in range(start))
    halted += flops(patches, squares(segments_of(start)), kept)
    halted += sum(flops(kept, squares(kept_of(block)), kept) for block in range(start + 1, depth))
    return halted / unmodified


def qwen_call(tower) -> torch.Tensor:
    config = tower.config
    features = config.in_channels * config.temporal_patch_size * config.patch_size**2
    return torch.randn(int(QWEN_GRID.prod(dim=1).sum()), features, generator=torch.Generator().manual_seed(3))


def run_halting(model, tower, ratio: float, start: int, *args, **kwargs):
    with Halting(model, vision_ratio=ratio, vision_start_layer=start) as halting, torch.no_grad():
        tower(*args, **kwargs)
    return halting.encoder_reports[-1]


def in_pieces(mask: torch.Tensor, lengths: list[int]) -> list[int]:
    """Active patches of each consecutive piece of ``lengths`` of ``mask`` ``(P,)``."""
    return [int(piece.sum()) for piece in mask.split(lengths)]


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_block_shapes_match_the_blocks_weights(family):
    """Linear FLOPs per patch are twice the weights of the block's linear layers."""
    model = deep_tower_model(family)
    with Halting(model, vision_ratio=0.5) as halting:
        shapes = halting.encoder_engine.shapes
        block = halting.encoder_engine.adapter.blocks[0]
    assert shapes.projection_flops(1) + shapes.mlp_flops(1) == 2 * sum(linear.weight.numel() for linear in linears(block))


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_vision_ratio_zero_is_exactly_the_unmodified_flops(family):
    model = deep_tower_model(family)
    prompt = vl_inputs(processor_of(family), 1, "image")
    (args, kwargs), *_ = tower_calls(model, prompt)
    assert run_halting(model, tower_of(model), 0.0, 1, *args, **kwargs).relative_flops == 1.0


@pytest.mark.parametrize("start", [1, 2])
@pytest.mark.parametrize("ratio", [0.5, 0.9])
def test_qwen2_vl_frames_by_hand(ratio, start):
    model = deep_tower_model("qwen2_vl")
    tower = tower_of(model)
    pixels = qwen_call(tower)
    _, active = reference_encoder(tower, pixels, QWEN_GRID, ratio, start)
    report = run_halting(model, tower, ratio, start, pixels, grid_thw=QWEN_GRID)
    kept = in_pieces(active, FRAMES)
    assert report.patches == FRAMES and report.kept == kept
    flops = block_by_hand(tower.blocks[0], tower.blocks[0].mlp)
    expected = expected_relative(flops, start, len(tower.blocks), lambda block: FRAMES, lambda block: kept)
    assert report.relative_flops == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("start", [1, 2])
@pytest.mark.parametrize("ratio", [0.5, 0.9])
def test_qwen2_5_vl_windows_and_full_frame_block_by_hand(ratio, start):
    """Blocks 0, 1, 3 attend within windows, block 2 within frames: each recut to its own kept patches."""
    model = deep_tower_model("qwen2_5_vl")
    tower = tower_of(model)
    assert list(tower.fullatt_block_indexes) == [2]
    pixels = qwen_call(tower)
    _, active = reference_encoder(tower, pixels, QWEN_GRID, ratio, start)  # in the blocks' (window) order
    report = run_halting(model, tower, ratio, start, pixels, grid_thw=QWEN_GRID)
    kept_windows = in_pieces(active, WINDOWS)
    kept_frames = [sum(kept_windows[:9]), *kept_windows[9:]]  # a frame's windows are consecutive
    assert report.patches == FRAMES and report.kept == kept_frames
    flops = block_by_hand(tower.blocks[0], tower.blocks[0].mlp)
    expected = expected_relative(
        flops, start, len(tower.blocks),
        lambda block: FRAMES if block == 2 else WINDOWS,
        lambda block: kept_frames if block == 2 else kept_windows,
    )
    assert report.relative_flops == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("tiled_family", sorted(TILED))
@pytest.mark.parametrize("start", [1, 3])
def test_tiled_tower_tiles_by_hand(tiled_family, start):
    """Each tile is one segment; InternViT's ``[CLS]`` is a patch of its tile and always kept."""
    blocks_of, layer_by_hand, _, has_cls = TILED[tiled_family]
    model = deep_tower_model(tiled_family)
    tower = tower_of(model)
    call = tower_calls(model, vl_inputs(processor_of(tiled_family), 1, "image"))[0]
    _, active = reference_tiled_encoder(blocks_of(tower), layer_by_hand, call, tower, 0.75, start, has_cls)
    report = run_halting(model, tower, 0.75, start, *call[0], **call[1])
    tiles, length = active.shape
    kept = active.sum(dim=1).tolist()
    assert report.patches == [length] * tiles and report.kept == kept
    block = blocks_of(tower)[0]
    flops = block_by_hand(block, block.mlp)
    expected = expected_relative(flops, start, len(blocks_of(tower)), lambda block: [length] * tiles, lambda block: kept)
    assert report.relative_flops == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "internvl"])
def test_more_halting_costs_fewer_flops(family):
    model = deep_tower_model(family)
    tower = tower_of(model)
    if family == "internvl":
        args, kwargs = tower_calls(model, vl_inputs(processor_of(family), 1, "image"))[0]
    else:
        args, kwargs = (qwen_call(tower),), {"grid_thw": QWEN_GRID}
    values = [run_halting(model, tower, ratio, 1, *args, **kwargs).relative_flops for ratio in (0.0, 0.25, 0.5, 0.9)]
    assert values[0] == 1.0
    assert all(later < earlier for earlier, later in itertools.pairwise(values))


def test_summary_shows_the_relative_flops():
    model = deep_tower_model("qwen2_vl")
    tower = tower_of(model)
    report = run_halting(model, tower, 0.5, 2, qwen_call(tower), grid_thw=QWEN_GRID)
    assert f"{report.relative_flops:.3f}x the encoder FLOPs" in report.summary()
    assert "kept 76 of 152 patches (3 units)" in report.summary()
