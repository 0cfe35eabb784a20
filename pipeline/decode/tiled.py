"""Micro-task decode: frames decoded as batches of overlapping latent tiles, blended
back on the device with the planner's weights (`pipeline.decode.tiles`).

A batch that runs out of device memory is split in half and retried, down to a single
tile, before the frame fails; the smaller size is kept for the batches after it, and
every split is counted. Blending is one weighted slice-add per tile, on the device.
With `norm` set, every tile of a frame is normalised with that frame's GroupNorm
statistics (`pipeline.decode.shared_norm`), recorded first from a subsampled whole frame.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from pipeline.decode.oom import unless_out_of_memory
from pipeline.decode.shared_norm import FrameNormStats, downscale
from pipeline.decode.tiles import TileGrid, blend_weights, pack

DecodeBatch = Callable[[torch.Tensor], torch.Tensor]   # (B, C, h, w) -> (B, 3, h*s, w*s)


class TiledDecoder:
    def __init__(self, decode_batch: DecodeBatch, grid: TileGrid, scale: int, batch: int,
                 device: torch.device | str = "cpu", *, norm: FrameNormStats | None = None,
                 proxy: int = 2, channels_last: bool = False) -> None:
        self.decode_batch = decode_batch
        self.norm = norm
        self.proxy = proxy
        # a model run in channels-last gets its tiles so, and the canvas matches its output
        self.layout = torch.channels_last if channels_last else torch.contiguous_format
        self.grid = grid
        self.scale = scale
        self.batch = batch
        self.weights = blend_weights(grid, scale).to(device)
        self.oom_splits = 0      # batches re-split after running out of device memory
        self.batches = 0

    def decode(self, latents: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """(C, h, w) latents of successive frames -> (3, H, W) float32 images; tiles of
        neighbouring frames may share a batch."""
        s, grid = self.scale, self.grid
        first = latents[0]
        canvases = [torch.empty((1, 3, grid.height * s, grid.width * s), device=first.device, dtype=torch.float32,
                                memory_format=self.layout)[0].zero_() for _ in latents]
        tasks = pack(len(latents), len(grid.tiles), self.batch)
        if self.norm is None:
            self._run(latents, tasks, canvases)
            return canvases
        with self.norm.lock:  # the GroupNorm layers are patched: one decode at a time per model
            with self.norm.recording():
                self.decode_batch(downscale(torch.stack(list(latents)), self.proxy))
            with self.norm.applying():
                self._run(latents, tasks, canvases)
        return canvases

    def _run(self, latents: Sequence[torch.Tensor], tasks: list[list[tuple[int, int]]],
             canvases: list[torch.Tensor]) -> None:
        s, grid = self.scale, self.grid
        while tasks:
            batch = tasks.pop(0)
            tiles = torch.stack([latents[f][:, t.y:t.y + t.h, t.x:t.x + t.w]
                                 for f, t in ((f, grid.tiles[i]) for f, i in batch)]
                                ).contiguous(memory_format=self.layout)
            out = self._decode(tiles, torch.tensor([f for f, _ in batch], device=tiles.device))
            self.batches += 1
            for (frame, index), image in zip(batch, out, strict=True):
                t = grid.tiles[index]
                canvases[frame][:, t.y * s:(t.y + t.h) * s, t.x * s:(t.x + t.w) * s].add_(
                    image.float() * self.weights[index])
            if len(batch) > self.batch and tasks:  # a split happened: repack the rest smaller
                rest = [task for b in tasks for task in b]
                tasks = [rest[i:i + self.batch] for i in range(0, len(rest), self.batch)]

    def _decode(self, tiles: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        if self.norm is not None:
            self.norm.frame_of_sample = frames
        out = unless_out_of_memory(lambda: self.decode_batch(tiles), can_split=len(tiles) > 1)
        if out is not None:
            return out
        self.oom_splits += 1
        self.batch = min(self.batch, len(tiles) // 2)
        parts, start = [], 0
        while start < len(tiles):  # at the size that is known to fit so far
            size = self.batch
            parts.append(self._decode(tiles[start:start + size], frames[start:start + size]))
            start += size
        return torch.cat(parts)

    def statistics(self) -> dict[str, int]:
        return {"tile_batches": self.batches, "batch_size": self.batch, "oom_splits": self.oom_splits}
