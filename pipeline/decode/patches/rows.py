"""A frame's rows split across the ranks of a torch.distributed group, and the
collectives the band decode needs: the halo rows a convolution reads from each
neighbour, and bands of unequal height gathered back into a frame.

Rank r holds rows [r*H//N, (r+1)*H//N) of the latent: contiguous bands in rank order,
so a decoder layer that doubles the resolution doubles every band and the split stays
the same split at every scale. Collectives are torch.distributed's own (NCCL between
GPUs, gloo on the CPU); the gathers pad bands to the tallest, as the collectives want
tensors of one shape on every rank, and crop again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class RowSplit:
    rank: int
    world: int
    group: Any = None          # a torch.distributed ProcessGroup; None: the default group

    def bounds(self, height: int, rank: int | None = None) -> tuple[int, int]:
        """Rows [start, stop) of a frame of `height` rows that `rank` (default: this one) holds."""
        r = self.rank if rank is None else rank
        return r * height // self.world, (r + 1) * height // self.world

    def heights(self, height: int) -> list[int]:
        return [stop - start for start, stop in (self.bounds(height, r) for r in range(self.world))]

    @property
    def has_above(self) -> bool:
        return self.rank > 0

    @property
    def has_below(self) -> bool:
        return self.rank < self.world - 1


def with_halo(x: torch.Tensor, rows: int, split: RowSplit) -> torch.Tensor:
    """(..., h, w) band -> (..., h + 2*rows, w): the `rows` rows of the band above and of
    the band below added at its edges, zeros where the frame ends (a convolution's zero
    padding). Every rank must call it, in the same order (a collective)."""
    if rows == 0:
        return x
    if x.shape[-2] < rows:
        raise ValueError(f"a band of {x.shape[-2]} rows cannot lend a halo of {rows}: too many ranks for "
                         "this frame's height")
    edges = torch.stack([x[..., :rows, :], x[..., -rows:, :]]).contiguous()
    if split.world == 1:
        gathered = [edges]
    else:
        gathered = [torch.empty_like(edges) for _ in range(split.world)]
        dist.all_gather(gathered, edges, group=split.group)
    height = x.shape[-2]
    out = torch.empty((*x.shape[:-2], height + 2 * rows, x.shape[-1]), dtype=x.dtype, device=x.device,
                      memory_format=_layout(x))   # the convolutions' layout (channels-last on GPUs)
    out[..., rows:rows + height, :] = x
    top, bottom = out[..., :rows, :], out[..., rows + height:, :]
    for part, neighbour, edge in ((top, split.rank - 1, 1), (bottom, split.rank + 1, 0)):
        if 0 <= neighbour < split.world:
            part.copy_(gathered[neighbour][edge])
        else:   # the frame's edge: the convolution's zero padding
            part.zero_()
    return out


def _layout(x: torch.Tensor) -> torch.memory_format:
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    if x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous():
        return torch.channels_last_3d
    return torch.contiguous_format


def _padded(x: torch.Tensor, height: int) -> torch.Tensor:
    if x.shape[-2] == height:
        return x.contiguous()
    pad = x.new_zeros((*x.shape[:-2], height - x.shape[-2], x.shape[-1]))
    return torch.cat([x, pad], dim=-2)


def all_rows(x: torch.Tensor, split: RowSplit) -> tuple[torch.Tensor, int]:
    """Every rank's (..., h_r, w) band joined into the whole (..., H, w) frame, on every
    rank, and the row where this rank's band starts in it."""
    if split.world == 1:
        return x, 0
    heights = _heights(x, split)
    tallest = max(heights)
    gathered = [x.new_empty((*x.shape[:-2], tallest, x.shape[-1])) for _ in range(split.world)]
    dist.all_gather(gathered, _padded(x, tallest), group=split.group)
    whole = torch.cat([g[..., :h, :] for g, h in zip(gathered, heights, strict=True)], dim=-2)
    return whole, sum(heights[:split.rank])


def rows_to_first(x: torch.Tensor, split: RowSplit) -> torch.Tensor | None:
    """Every rank's band joined into the whole frame on rank 0 (None elsewhere)."""
    if split.world == 1:
        return x
    heights = _heights(x, split)
    tallest = max(heights)
    gathered = ([x.new_empty((*x.shape[:-2], tallest, x.shape[-1])) for _ in range(split.world)]
                if split.rank == 0 else None)
    dist.gather(_padded(x, tallest), gathered, dst=_global_rank(split, 0), group=split.group)
    if gathered is None:
        return None
    return torch.cat([g[..., :h, :] for g, h in zip(gathered, heights, strict=True)], dim=-2)


def _heights(x: torch.Tensor, split: RowSplit) -> list[int]:
    """Each rank's band height (they differ by at most one row per doubling of the split's
    latent bands, and are exchanged rather than derived so any band works)."""
    mine = torch.tensor([x.shape[-2]], dtype=torch.int64, device=x.device)
    every = [torch.empty_like(mine) for _ in range(split.world)]
    dist.all_gather(every, mine, group=split.group)
    return [int(h.item()) for h in every]


def _global_rank(split: RowSplit, rank: int) -> int:
    return rank if split.group is None else dist.get_global_rank(split.group, rank)

