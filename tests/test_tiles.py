"""The micro-task planner (pipeline.decode.tiles), property-tested: every latent cell and
every pixel covered, blend weights summing to one, batches within the budget and
holding every task once, in order; a clip's tiles within the budget, or the plan that
needs the least when nothing fits."""

from __future__ import annotations

import itertools
from pathlib import Path

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.decode.budget import clip_tile_plan, tile_plan
from pipeline.decode.tiles import balanced_batch, batch_size, blend_weights, make_grid, pack
from pipeline.models.vae import VaeInfo

WAN21 = VaeInfo(path=Path("wan"), class_name="AutoencoderKLWan", latent_channels=16, scale=8, scaling_factor=1.0,
                shift_factor=0.0, force_upcast=False, sample_size=256, full_res_channels=96, temporal_scale=4,
                parameters=126_892_531)


@st.composite
def grids(draw: st.DrawFn, max_side: int = 300) -> tuple[int, int, int, int]:
    tile = draw(st.integers(1, 96))
    overlap = draw(st.integers(0, tile - 1))
    return draw(st.integers(1, max_side)), draw(st.integers(1, max_side)), tile, overlap


@given(grids())
@settings(max_examples=300, deadline=None)
def test_tiles_cover_every_cell_inside_the_frame_with_one_shape(case: tuple[int, int, int, int]) -> None:
    height, width, tile, overlap = case
    grid = make_grid(height, width, tile, overlap)
    covered = torch.zeros(height, width, dtype=torch.int32)
    for t in grid.tiles:
        assert t.y >= 0 and t.x >= 0 and t.y + t.h <= height and t.x + t.w <= width
        assert (t.h, t.w) == grid.tile_shape
        covered[t.y:t.y + t.h, t.x:t.x + t.w] += 1
    assert int(covered.min()) >= 1
    th, tw = grid.tile_shape
    assert th <= tile and tw <= tile
    for size, length, starts in ((th, height, sorted({t.y for t in grid.tiles})),
                                 (tw, width, sorted({t.x for t in grid.tiles}))):
        assert all(b - a <= size - overlap for a, b in itertools.pairwise(starts))  # overlap kept
        # the fewest tiles: one tile fewer, each of the largest size, could not cover the axis
        assert len(starts) == 1 or (len(starts) - 1) * (tile - overlap) + overlap < length


@given(grids(max_side=40), st.sampled_from([1, 2, 8]))
@settings(max_examples=150, deadline=None)
def test_blend_weights_sum_to_one_at_every_pixel(case: tuple[int, int, int, int], scale: int) -> None:
    height, width, tile, overlap = case
    grid = make_grid(height, width, tile, overlap)
    weights = blend_weights(grid, scale)
    assert weights.shape == (len(grid.tiles), 1, grid.tile_shape[0] * scale, grid.tile_shape[1] * scale)
    assert float(weights.min()) > 0
    total = torch.zeros(height * scale, width * scale, dtype=torch.float64)
    for t, w in zip(grid.tiles, weights, strict=True):
        total[t.y * scale:(t.y + t.h) * scale, t.x * scale:(t.x + t.w) * scale] += w[0].double()
    assert torch.allclose(total, torch.ones_like(total), atol=1e-5)


@given(st.integers(1, 12), st.integers(1, 50), st.integers(1, 64))
def test_batches_hold_every_task_once_in_order(frames: int, tiles: int, size: int) -> None:
    batches = pack(frames, tiles, size)
    assert all(1 <= len(b) <= size for b in batches)
    assert [task for b in batches for task in b] == [(f, t) for f in range(frames) for t in range(tiles)]


@given(st.integers(1, 200), st.integers(1, 64))
def test_balanced_batches_are_as_few_and_as_even_as_the_limit_allows(tiles: int, most: int) -> None:
    size = balanced_batch(tiles, most)
    assert size <= most
    assert -(-tiles // size) == -(-tiles // most)               # no more batches than needed
    batches = [len(b) for b in pack(1, tiles, size)]
    assert max(batches) - min(batches) < len(batches)           # near-equal: the last is not a sliver


@given(st.floats(1, 1e11), st.floats(1, 1e10))
def test_batch_size_stays_within_the_budget(budget: float, tile_bytes: float) -> None:
    size = batch_size(budget, tile_bytes)
    assert size >= 1
    assert size == 1 or size * tile_bytes <= budget


@given(grids(max_side=300), st.floats(0.5, 100.0))
@settings(deadline=None)
def test_clip_tiles_fit_the_budget_or_need_the_least(case: tuple[int, int, int, int], budget_gib: float) -> None:
    height, width, tile, overlap = case
    plan = tile_plan(WAN21, (16, height, width), torch.bfloat16, tile, overlap, budget_gib, 0)
    th, tw = plan.grid.tile_shape
    assert plan.clip and th <= max(tile, 1) and tw <= max(tile, 1)
    assert 1 <= plan.batch <= len(plan.grid.tiles)
    if plan.modelled_peak > plan.budget_bytes:   # nothing fits: no tile size from `tile` down needs less
        assert plan.batch == 1
        sizes = range(tile, overlap, -8) if tile > overlap + 8 else [tile]
        assert all(clip_tile_plan(WAN21, make_grid(height, width, size, overlap), 2, budget_gib).modelled_peak
                   >= plan.modelled_peak for size in sizes)


def test_groupnorm_proxy_is_lowered_for_small_frames() -> None:
    from pipeline.decode.budget import usable_proxy

    assert usable_proxy(2, 270, 480) == 2      # 3840x2160: a 135x240 proxy
    assert usable_proxy(4, 60, 80) == 2        # a 15x20 proxy would mislead: 30x40 instead
    assert usable_proxy(2, 36, 64) == 1        # the demo's frames: statistics of the whole frame
    assert usable_proxy(0, 270, 480) == 0      # off stays off
