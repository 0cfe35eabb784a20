"""Decode stage: latents -> final pixels on the device, on the compute stream.

The VAE output is clamped, scaled, quantised to the frame format's precision (uint8,
uint16 or float16; `pipeline.formats`) and laid out HWC on the device, so the copy
moves final bytes only. Whole-frame decode; the micro-task decode (overlapping tiles
in budgeted batches, `pipeline.tiled_decode`) when the preset says `decode = "tiles"`;
or diffusers' own tiling when it says `tiling = true`. A video VAE decodes its clip a
latent frame at a time (`pipeline.wan_chunks`), tiled in space when the preset says
`decode = "tiles"` (`pipeline.wan_tiles`).
"""

from __future__ import annotations

import torch
import trio

from ..busy import BusyClock
from ..device import DeviceContext
from ..flow import map_stage
from ..frames import ClipChunk, DeviceFrame, LatentFrame
from ..groupnorm_sync import FrameNormStats
from ..model import DTYPES, VaeInfo
from ..stats import StageStats
from ..tile_plan import TilePlan
from ..tiled_decode import TiledDecoder
from ..tiles import make_grid
from ..vae_split import split_decoder
from ..wan_chunks import ClipDecoder
from ..wan_tiles import TiledClipDecoder


def quantise_hwc(image: torch.Tensor, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """(3, H, W) in [-1, 1], any float dtype -> (H, W, 3) of `dtype`: uint8 or uint16
    rounded to their full range, or float16 in [0, 1]."""
    unit = (image.float() * 0.5 + 0.5).clamp_(0, 1)
    if dtype.is_floating_point:
        quantised = unit.to(dtype)
    else:
        top = 255 if dtype == torch.uint8 else 65535
        quantised = unit.mul_(top).round_().to(dtype)
    return quantised.permute(1, 2, 0).contiguous()


class Decoder:
    def __init__(self, vae: torch.nn.Module, info: VaeInfo, dtype: str, ctx: DeviceContext,
                 pixel_dtype: torch.dtype = torch.uint8, tiles: TilePlan | None = None) -> None:
        self.vae = vae
        self.info = info
        self.dtype = DTYPES[dtype]
        self.pixel_dtype = pixel_dtype  # what the frame format stores
        self.ctx = ctx
        self.tiled: TiledDecoder | None = None
        image_tiles = tiles if not info.is_video else None   # a clip's tiles: TiledClipDecoder
        self.split = split_decoder(vae, tiles.whole_up_blocks) if image_tiles is not None else None
        if image_tiles is not None:
            # tile only the split decoder's tail when there is one: the head runs whole
            tiled_part = self.split.tail_modules if self.split else vae.decoder
            decode_batch = self.split.tail if self.split else (lambda batch: vae.decode(batch).sample)
            grid, f = tiles.grid, self.split.feature_scale if self.split else 1
            if f > 1:  # the tail starts from features f times the latent size: the same grid, scaled
                grid = make_grid(grid.height * f, grid.width * f, grid.tile * f, grid.overlap * f)
            norm = None
            if tiles.norm_proxy > 0 and any(isinstance(m, torch.nn.GroupNorm) for m in tiled_part.modules()):
                norm = FrameNormStats(tiled_part)
            self.tiled = TiledDecoder(decode_batch, grid, info.scale // f, tiles.batch, ctx.device,
                                      norm=norm, proxy=tiles.norm_proxy)
        self.clip: ClipDecoder | TiledClipDecoder | None = None
        if info.is_video:
            self.clip = (TiledClipDecoder(vae, tiles.grid, tiles.batch) if tiles is not None
                         else ClipDecoder(vae))
        self.latents_mean = self.latents_std = None
        if info.latents_mean is not None and info.latents_std is not None:
            view = (-1, 1, 1, 1)  # per channel of (C, T, h, w)
            self.latents_mean = torch.tensor(info.latents_mean, device=ctx.device).reshape(view)
            self.latents_std = torch.tensor(info.latents_std, device=ctx.device).reshape(view)
        self.busy = BusyClock()  # how busy decode keeps the compute stream

    def statistics(self) -> dict[str, float]:
        """The compute stream's busy time (waits for the GPU) and the tiles' batches and splits."""
        figures = dict(self.busy.statistics())
        tiled = self.tiled or (self.clip if isinstance(self.clip, TiledClipDecoder) else None)
        if tiled is not None:
            figures.update(tiled.statistics())
        return figures

    def decode(self, item: LatentFrame) -> DeviceFrame:
        """Runs in a worker thread. On a GPU it only queues the work; it can still wait
        while the GPU's launch queue is full (at 4K it measured about one decode's time),
        which keeps the next frame's work queued behind this one."""
        with torch.no_grad(), self.ctx.on(self.ctx.compute):
            begin = self.busy.start(self.ctx.compute)
            latents = item.latents
            if self.ctx.is_cuda and not latents.is_cuda:  # generated latents are on the device already
                # From pageable memory the copy would wait for the stream's earlier work
                # (the frame before), leaving the GPU idle while this frame's kernels are
                # queued; from pinned memory it is queued like a kernel. Latents are small
                # and PyTorch's caching host allocator reuses the pinned blocks.
                latents = latents.pin_memory()
            latents = latents.to(self.ctx.device, non_blocking=True).to(self.dtype)
            latents = latents / self.info.scaling_factor + self.info.shift_factor
            if self.tiled is not None:
                features = self.split.head(latents[None])[0] if self.split else latents
                image = self.tiled.decode([features])[0]
            else:
                image = self.vae.decode(latents[None]).sample[0]
            pixels = quantise_hwc(image, self.pixel_dtype)
            ready = self.ctx.record(self.ctx.compute)
            self.busy.stop(self.ctx.compute, begin)
        return DeviceFrame(item.frame, item.seed, pixels, ready)

    def _to_device(self, latents: torch.Tensor) -> torch.Tensor:
        if self.ctx.is_cuda and not latents.is_cuda:
            latents = latents.pin_memory()  # see decode()
        return latents.to(self.ctx.device, non_blocking=True).to(self.dtype)

    def decode_clip(self, item: ClipChunk) -> list[DeviceFrame]:
        """A video VAE's next latent frame -> its pixel frames, all ready at one event
        (tiled in space when the preset says `decode = "tiles"`)."""
        assert self.clip is not None
        with torch.no_grad(), self.ctx.on(self.ctx.compute):
            begin = self.busy.start(self.ctx.compute)
            latents = self._to_device(item.latents)
            if self.latents_mean is not None:  # the generating pipeline normalised them: (z - mean) / std
                latents = latents * self.latents_std.to(self.dtype) + self.latents_mean.to(self.dtype)
            images = self.clip.step(latents[None], first=item.index == 0)[0]   # (3, t, H, W)
            if images.shape[1] != len(item.frames):
                raise RuntimeError(f"latent frame {item.index} decoded to {images.shape[1]} frames, "
                                   f"expected {len(item.frames)}")
            pixels = [quantise_hwc(images[:, i], self.pixel_dtype) for i in range(images.shape[1])]
            ready = self.ctx.record(self.ctx.compute)
            self.busy.stop(self.ctx.compute, begin)
            if item.last:
                self.clip.finish()
        return [DeviceFrame(f, seed, p, ready) for f, seed, p in zip(item.frames, item.seeds, pixels, strict=True)]


async def decode_stage(decoder: Decoder, stats: StageStats, rx: trio.MemoryReceiveChannel,
                       tx: trio.MemorySendChannel) -> None:
    limiter = trio.CapacityLimiter(1)  # one decode queued at a time keeps VRAM bounded

    async def work(item: LatentFrame) -> DeviceFrame:
        return await trio.to_thread.run_sync(decoder.decode, item, limiter=limiter)

    async def work_clip(item: ClipChunk) -> list[DeviceFrame]:
        return await trio.to_thread.run_sync(decoder.decode_clip, item, limiter=limiter)

    if decoder.clip is not None:  # a chunk's frames go downstream at once: copied and written
        await map_stage(stats, rx, tx, work_clip, many=True)  # while the next chunk decodes
    else:
        await map_stage(stats, rx, tx, work)
