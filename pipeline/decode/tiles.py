"""The micro-task planner: a frame's latents as overlapping tiles, their blend weights,
and batches of tiles sized to a VRAM budget.

Tiles are all the same size, so any tiles, from one frame or from successive ones,
stack into one batch. Along each axis the planner takes the fewest tiles of at most
`tile` cells that overlap by at least `overlap`, shrinks them to the smallest size
that still covers the frame and spreads them evenly, first at one edge and last at
the other: every cell is covered whatever the size, and no tile decodes much more
than its share (a 3840x2160 frame, 270x480 cells, with 64-cell tiles: aligning only
the last tile to the edge decoded 42 % more cells than the frame has; 45 tiles of 61
cells spread evenly decode 29 % more; 12 tiles of 96x126 cells, from 128, 12 %).
Each tile's weight is a tent that falls to near zero across its overlap with a
neighbour and stays 1 at the frame's edges; the weights are divided by their sum, so
they add up to exactly one at every pixel and the blend of identical tiles is exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Tile:
    y: int          # top row, in latent cells
    x: int          # left column
    h: int
    w: int


@dataclass(frozen=True)
class TileGrid:
    height: int     # the frame's latent size
    width: int
    tile: int       # requested tile side, in latent cells
    overlap: int
    tiles: tuple[Tile, ...]

    @property
    def tile_shape(self) -> tuple[int, int]:
        return self.tiles[0].h, self.tiles[0].w


def axis_tiles(length: int, tile: int, overlap: int) -> tuple[int, list[int]]:
    """(size, starts) of the tiles along one axis: the fewest tiles of at most `tile`
    cells overlapping by at least `overlap`, each as small as covering allows, spread
    evenly from edge to edge."""
    if length <= tile:
        return length, [0]
    count = -(-(length - overlap) // (tile - overlap))
    size = -(-(length + (count - 1) * overlap) // count)   # <= tile, as count was chosen
    # floor of evenly spaced starts: no gap exceeds size - overlap, so overlaps hold
    return size, [i * (length - size) // (count - 1) for i in range(count)]


def make_grid(height: int, width: int, tile: int, overlap: int) -> TileGrid:
    if tile < 1 or not 0 <= overlap < tile:
        raise ValueError(f"need tile >= 1 and 0 <= overlap < tile, got tile {tile}, overlap {overlap}")
    th, ys = axis_tiles(height, tile, overlap)
    tw, xs = axis_tiles(width, tile, overlap)
    return TileGrid(height, width, tile, overlap, tuple(Tile(y, x, th, tw) for y in ys for x in xs))


def _tent(length: int, start: int, size: int, ramp: int) -> torch.Tensor:
    """1-D weight of a tile over its own pixels: rises over `ramp` pixels from each side
    that is not a frame edge, 1 elsewhere; never zero, so every pixel counts."""
    pos = torch.arange(size, dtype=torch.float64) + 0.5
    weight = torch.ones(size, dtype=torch.float64)
    if ramp > 0:
        if start > 0:
            weight = torch.minimum(weight, pos / ramp)
        if start + size < length:
            weight = torch.minimum(weight, (size - pos) / ramp)
    return weight


def blend_weights(grid: TileGrid, scale: int) -> torch.Tensor:
    """(tiles, 1, h*scale, w*scale) float32 weights, summing to one at every frame pixel."""
    ramp = grid.overlap * scale
    height, width = grid.height * scale, grid.width * scale
    raw = torch.stack([
        torch.outer(_tent(height, t.y * scale, t.h * scale, ramp), _tent(width, t.x * scale, t.w * scale, ramp))
        for t in grid.tiles])
    total = torch.zeros(height, width, dtype=torch.float64)
    for t, w in zip(grid.tiles, raw, strict=True):
        total[t.y * scale:(t.y + t.h) * scale, t.x * scale:(t.x + t.w) * scale] += w
    for i, t in enumerate(grid.tiles):
        raw[i] /= total[t.y * scale:(t.y + t.h) * scale, t.x * scale:(t.x + t.w) * scale]
    return raw[:, None].float()


def batch_size(budget_bytes: float, tile_bytes: float, *, at_most: int = 64) -> int:
    """Tiles per batch within the budget; at least one (a single tile is the floor)."""
    return max(1, min(at_most, math.floor(budget_bytes / max(tile_bytes, 1.0))))


def balanced_batch(tiles_per_frame: int, most: int) -> int:
    """The batch size that splits a frame's tiles into as few batches as `most` allows,
    of near-equal size (13 tiles, at most 12 a batch: 7 and 6, not 12 and 1)."""
    batches = -(-tiles_per_frame // most)
    return -(-tiles_per_frame // batches)


def pack(frame_count: int, tiles_per_frame: int, size: int) -> list[list[tuple[int, int]]]:
    """(frame position, tile index) tasks in shot order, in batches of `size`: a batch
    may hold the end of one frame and the start of the next."""
    tasks = [(f, t) for f in range(frame_count) for t in range(tiles_per_frame)]
    return [tasks[i:i + size] for i in range(0, len(tasks), size)]


def modelled_tile_bytes(widest_full_res_channels: int, tile_pixels: int, dtype_bytes: int,
                        live_tensors: float = 5.0) -> float:
    """Peak decode memory of one tile: `live_tensors` activations of the widest layer at
    full resolution. 5.0 fits the peaks measured for the SD-class decoder's tail in
    bf16 (batches of 768x1008-pixel tiles, about 1.83 GiB a tile; an untiled 3840x2160
    decode gives 4.8: benchmarks/RESULTS.md, 'Micro-task decode')."""
    return live_tensors * widest_full_res_channels * tile_pixels * dtype_bytes
