"""A video VAE's chunked decode (pipeline.decode.video.chunks) tiled in space as well, so a clip's
frames decode within a VRAM budget whatever their size.

Like the image decode's split (pipeline.decode.kl_split), the Wan decoder is cut in two: the
head (conv_in and the mid block, whose attention spans the frame) runs on the whole
latent frame, where it is small; the tail (the up blocks, where the resolution grows
64-fold and the memory goes, and the output convolutions) runs on overlapping tiles of
the head's features, blended on the device with the planner's weights
(pipeline.decode.tiles). Each part keeps its own causal cache: the head one for the frame,
the tail one per batch of tiles, the batch dimension holding its tiles, so a tile
meets its own past in every chunk. The batches are fixed for the clip; one that runs
out of device memory has its cache rolled back (the decoder replaces cache entries,
never writes into them), is split in half with its cache, and both halves retry; the
split stays for the rest of the clip and is counted. The Wan decoder has no
GroupNorm (its RMS norm is per position), so nothing but the convolutions' reach
couples neighbouring tiles, and the overlap covers that.

The steps are diffusers' `WanDecoder3d.forward` opened at the mid block;
tests/test_wan_tiles.py checks head then tail on one whole-frame tile equals the
whole decode exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from pipeline.decode.oom import unless_out_of_memory
from pipeline.decode.tiles import TileGrid, blend_weights
from pipeline.models.vae import Vae

Cache = list   # per causal convolution: None, diffusers' "Rep" marker, or a tensor


def _causal(conv: torch.nn.Module, x: torch.Tensor, cache: Cache, index: list[int]) -> torch.Tensor:
    """One cached causal convolution, as WanDecoder3d.forward runs conv_in and conv_out."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import CACHE_T

    i = index[0]
    keep = x[:, :, -CACHE_T:].clone()
    if keep.shape[2] < 2 and cache[i] is not None:   # one new frame: keep the last cached one too
        keep = torch.cat([cache[i][:, :, -1:].to(keep.device), keep], dim=2)
    out = conv(x, cache[i])
    cache[i] = keep
    index[0] += 1
    return out


def head(decoder: Any, x: torch.Tensor, cache: Cache) -> torch.Tensor:
    index = [0]
    x = _causal(decoder.conv_in, x, cache, index)
    return decoder.mid_block(x, feat_cache=cache, feat_idx=index)


def tail(decoder: Any, x: torch.Tensor, cache: Cache, first: bool) -> torch.Tensor:
    index = [0]
    for up_block in decoder.up_blocks:
        x = up_block(x, feat_cache=cache, feat_idx=index, first_chunk=first)
    x = decoder.nonlinearity(decoder.norm_out(x))
    return _causal(decoder.conv_out, x, cache, index)


def cache_slots(decoder: Any) -> tuple[int, int]:
    """Causal convolutions in the head and in the tail: the length of each part's cache."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

    def count(module: torch.nn.Module) -> int:
        return sum(isinstance(m, WanCausalConv3d) for m in module.modules())

    in_head = 1 + count(decoder.mid_block)
    return in_head, count(decoder) - in_head


@dataclass(eq=False)   # batches are told apart by identity (their caches hold tensors)
class TileBatch:
    tiles: list[int]      # indices into the grid, the cache's batch order
    cache: Cache


class TiledClipDecoder:
    """ClipDecoder's interface (`step`, `finish`), tiled in space."""

    def __init__(self, vae: Vae, grid: TileGrid, batch: int) -> None:
        self.vae = vae
        self.grid = grid
        self.batch = batch
        self.head_slots, self.tail_slots = cache_slots(vae.decoder)
        self.weights: torch.Tensor | None = None   # made on the device of the first tiles
        self.head_cache: Cache | None = None
        self.batches: list[TileBatch] = []
        self.oom_splits = 0
        self.tile_batches = 0

    def step(self, latent_frame: torch.Tensor, first: bool) -> torch.Tensor:
        """(1, C, 1, h, w) denormalised latents of the clip's next latent frame (`first`
        starts a clip) -> (1, 3, t, H, W) float32 pixel frames in [-1, 1]."""
        if first:
            self.head_cache = [None] * self.head_slots
            order = list(range(len(self.grid.tiles)))
            self.batches = [TileBatch(order[i:i + self.batch], [None] * self.tail_slots)
                            for i in range(0, len(order), self.batch)]
        if self.head_cache is None:
            raise RuntimeError("a clip's first chunk must be decoded first")
        decoder = self.vae.decoder
        features = head(decoder, self.vae.post_quant_conv(latent_frame), self.head_cache)
        canvas = None
        for batch in list(self.batches):
            for part, images in self._decode(batch, features, first):
                canvas = self._blend(canvas, part.tiles, images)
        assert canvas is not None
        return canvas[None].clamp_(-1.0, 1.0)

    def finish(self) -> None:
        self.head_cache, self.batches = None, []   # give the caches' activations back

    def statistics(self) -> dict[str, int]:
        return {"tile_batches": self.tile_batches, "batch_size": self.batch, "oom_splits": self.oom_splits}

    def _decode(self, batch: TileBatch, features: torch.Tensor, first: bool
                ) -> list[tuple[TileBatch, torch.Tensor]]:
        """The batch's tiles through the tail; on running out of memory, the batch split
        in two (in self.batches too) and each half decoded, recursively."""
        from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

        tiles = [self.grid.tiles[i] for i in batch.tiles]
        crops = torch.cat([features[:, :, :, t.y:t.y + t.h, t.x:t.x + t.w] for t in tiles])
        before = list(batch.cache)

        def undo() -> None:
            batch.cache[:] = before   # the failed step replaced some entries: put them back

        images = unless_out_of_memory(lambda: tail(self.vae.decoder, crops, batch.cache, first),
                                      can_split=len(batch.tiles) > 1, undo=undo)
        if images is None:
            del crops
            self.oom_splits += 1
            halves = split(batch)
            self.batch = min(self.batch, len(halves[0].tiles))
            at = self.batches.index(batch)
            self.batches[at:at + 1] = halves
            return [done for half in halves for done in self._decode(half, features, first)]
        self.tile_batches += 1
        if self.vae.config.patch_size is not None:
            images = unpatchify(images, patch_size=self.vae.config.patch_size)
        return [(batch, images)]

    def _blend(self, canvas: torch.Tensor | None, tiles: list[int], images: torch.Tensor) -> torch.Tensor:
        grid = self.grid
        s = images.shape[-1] // grid.tiles[tiles[0]].w    # pixels per latent cell
        if canvas is None:
            canvas = images.new_zeros((3, images.shape[2], grid.height * s, grid.width * s), dtype=torch.float32)
        if self.weights is None or self.weights.shape[-1] != grid.tile_shape[1] * s:
            self.weights = blend_weights(grid, s).to(images.device)
        for index, image in zip(tiles, images, strict=True):
            t = grid.tiles[index]
            canvas[:, :, t.y * s:(t.y + t.h) * s, t.x * s:(t.x + t.w) * s].add_(
                image.float() * self.weights[index][:, None])
        return canvas


def split(batch: TileBatch) -> list[TileBatch]:
    """Two batches of half the tiles each, each with its slice of the cache."""
    half = -(-len(batch.tiles) // 2)

    def part(start: int, stop: int | None) -> Cache:
        return [c[start:stop] if isinstance(c, torch.Tensor) else c for c in batch.cache]

    return [TileBatch(batch.tiles[:half], part(0, half)), TileBatch(batch.tiles[half:], part(half, None))]
