"""Which decode a model and a plan get, chosen in one place:

    video VAE, tiles planned   TiledClipDecoder   a clip chunk by chunk, each chunk in tiles
    video VAE                  ClipDecoder        a clip chunk by chunk, whole frames
    image VAE, tiles planned   TiledFrame         the micro-task decode (see below)
    AutoencoderKL              LayeredFrame       the whole frame layer by layer, over bands of
                                                  rows: untiled decode's exact statistics
    image VAE                  WholeFrame         diffusers' decode of the whole frame
                                                  (with diffusers' own tiling if the preset asks)

Every image decode takes (C, h, w) latents, already scaled for the VAE, and returns the
(3, H, W) image in [-1, 1]; every clip decode takes one latent frame at a time.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from pipeline.decode import layered
from pipeline.decode.budget import TilePlan
from pipeline.decode.kl_split import SplitDecoder, split_decoder
from pipeline.decode.layered import LayeredFrame
from pipeline.decode.shared_norm import FrameNormStats
from pipeline.decode.tiled import TiledDecoder
from pipeline.decode.tiles import make_grid
from pipeline.decode.video.chunks import ClipDecoder
from pipeline.decode.video.tiled import TiledClipDecoder
from pipeline.models.vae import Vae, VaeInfo


class FrameDecode(Protocol):
    def __call__(self, latents: torch.Tensor) -> torch.Tensor: ...
    def statistics(self) -> dict[str, int]: ...


@runtime_checkable
class ClipDecode(Protocol):
    def step(self, latent_frame: torch.Tensor, first: bool) -> torch.Tensor: ...
    def finish(self) -> None: ...
    def statistics(self) -> dict[str, int]: ...


class WholeFrame:
    def __init__(self, vae: Vae) -> None:
        self.vae = vae

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents[None]).sample[0]

    def statistics(self) -> dict[str, int]:
        return {}


class TiledFrame:
    """The micro-task decode: an AutoencoderKL's decoder is cut (`kl_split`) so that
    its head (the mid block, whose attention spans the frame) runs on the whole frame
    and only the tail runs in tiles; another VAE is tiled whole. Tiles share their
    frame's GroupNorm statistics when the plan asks (`shared_norm`)."""

    def __init__(self, vae: Vae, info: VaeInfo, tiles: TilePlan, device: torch.device) -> None:
        self.split: SplitDecoder | None = split_decoder(vae, tiles.whole_up_blocks)
        tiled_part = self.split.tail_modules if self.split else vae.decoder
        decode_batch = self.split.tail if self.split else (lambda batch: vae.decode(batch).sample)
        grid, f = tiles.grid, self.split.feature_scale if self.split else 1
        if f > 1:  # the tail starts from features f times the latent size: the same grid, scaled
            grid = make_grid(grid.height * f, grid.width * f, grid.tile * f, grid.overlap * f)
        norm = None
        if tiles.norm_proxy > 0 and any(isinstance(m, torch.nn.GroupNorm) for m in tiled_part.modules()):
            norm = FrameNormStats(tiled_part)
        channels_last = self.split is not None and vae.decoder.conv_in.weight.is_contiguous(
            memory_format=torch.channels_last)
        self.tiled = TiledDecoder(decode_batch, grid, info.scale // f, tiles.batch, device,
                                  norm=norm, proxy=tiles.norm_proxy, channels_last=channels_last)

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        features = self.split.head(latents[None])[0] if self.split else latents
        return self.tiled.decode([features])[0]

    def statistics(self) -> dict[str, int]:
        return self.tiled.statistics()


def choose(vae: Vae, info: VaeInfo, tiles: TilePlan | None,
           device: torch.device) -> FrameDecode | ClipDecode:
    if info.is_video:
        return TiledClipDecoder(vae, tiles.grid, tiles.batch) if tiles is not None else ClipDecoder(vae)
    if tiles is not None:
        return TiledFrame(vae, info, tiles, device)
    if layered.fits(vae) and not getattr(vae, "use_tiling", False):
        return LayeredFrame(vae)
    return WholeFrame(vae)
