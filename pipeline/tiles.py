"""The micro-task planner: a frame's latents as overlapping tiles, their blend weights,
and batches of tiles sized to a VRAM budget.

Tiles are all the same size (a frame smaller than the tile in one axis gets tiles of
the frame's size in that axis), so any tiles, from one frame or from successive ones,
stack into one batch. Along each axis tiles start every `tile - overlap` cells and the
last one is aligned to the frame's edge, so every cell is covered whatever the size.
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


def axis_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Starts of the tiles along one axis: every `tile - overlap`, the last at the edge."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def make_grid(height: int, width: int, tile: int, overlap: int) -> TileGrid:
    if tile < 1 or not 0 <= overlap < tile:
        raise ValueError(f"need tile >= 1 and 0 <= overlap < tile, got tile {tile}, overlap {overlap}")
    th, tw = min(tile, height), min(tile, width)
    tiles = tuple(Tile(y, x, th, tw) for y in axis_starts(height, tile, overlap)
                  for x in axis_starts(width, tile, overlap))
    return TileGrid(height, width, tile, overlap, tiles)


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


def pack(frame_count: int, tiles_per_frame: int, size: int) -> list[list[tuple[int, int]]]:
    """(frame position, tile index) tasks in shot order, in batches of `size`: a batch
    may hold the end of one frame and the start of the next."""
    tasks = [(f, t) for f in range(frame_count) for t in range(tiles_per_frame)]
    return [tasks[i:i + size] for i in range(0, len(tasks), size)]


def modelled_tile_bytes(widest_full_res_channels: int, tile_pixels: int, dtype_bytes: int,
                        live_tensors: float = 4.8) -> float:
    """Peak decode memory of one tile: `live_tensors` activations of the widest layer at
    full resolution. 4.8 fits the reference figure of DESIGN.md (an SD-class decoder,
    256 channels at full size, bf16: 19 GiB for a 3840x2160 frame); on a GPU the
    decoder measures its first tile instead."""
    return live_tensors * widest_full_res_channels * tile_pixels * dtype_bytes

