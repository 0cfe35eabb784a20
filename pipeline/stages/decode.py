"""Decode stage: latents -> final pixels on the device, on the compute stream.

The decode a job gets is chosen once (`pipeline.decode.strategy`); this stage moves
the latents to the device, runs it, and quantises the image to the frame format's
precision (uint8, uint16 or float16), laid out HWC on the device, so the copy moves
final bytes only. A video VAE's clip arrives latent frame by latent frame; each
chunk's frames go on together.
"""

from __future__ import annotations

import torch
import trio

from pipeline.decode.budget import TilePlan
from pipeline.decode.quantise import quantise_hwc, verdict
from pipeline.decode.strategy import ClipDecode, FrameDecode, choose
from pipeline.flow.frames import ClipChunk, DeviceFrame, LatentFrame
from pipeline.flow.loop import map_stage
from pipeline.flow.stats import StageStats
from pipeline.gpu.busy import BusyClock
from pipeline.gpu.device import DeviceContext
from pipeline.gpu.turns import TurnHold
from pipeline.models.dtypes import DTYPES
from pipeline.models.vae import Vae, VaeInfo


class Decoder:
    def __init__(self, vae: Vae, info: VaeInfo, dtype: str, ctx: DeviceContext,
                 pixel_dtype: torch.dtype = torch.uint8, tiles: TilePlan | None = None,
                 colour_lut: torch.Tensor | None = None, strategy: FrameDecode | ClipDecode | None = None) -> None:
        self.info = info
        self.colour_lut = colour_lut    # the job's colour transform, baked, on the device
        self.dtype = DTYPES[dtype]
        self.pixel_dtype = pixel_dtype  # what the frame format stores
        self.ctx = ctx
        # a given strategy (a decode across devices) is this decoder's to close
        self.strategy: FrameDecode | ClipDecode = strategy or choose(vae, info, tiles, ctx.device)
        # The generating pipeline normalised a clip's latents per channel: (z - mean) / std
        self.latents_std_mean: tuple[torch.Tensor, torch.Tensor] | None = None
        if info.latents_mean is not None and info.latents_std is not None:
            view = (-1, 1, 1, 1)  # per channel of (C, T, h, w)
            std, mean = (torch.tensor(values, device=ctx.device).reshape(view).to(self.dtype)
                         for values in (info.latents_std, info.latents_mean))
            self.latents_std_mean = (std, mean)
        self.busy = BusyClock()  # how busy decode keeps the compute stream

    def close(self) -> None:
        """Stop what the decode started (the processes of a decode across devices)."""
        close = getattr(self.strategy, "close", None)
        if close is not None:
            close()

    @property
    def decodes_clips(self) -> bool:
        return self.info.is_video

    def statistics(self) -> dict[str, float]:
        """The compute stream's busy time (waits for the GPU) and the tiles' batches and splits."""
        return {**self.busy.statistics(), **self.strategy.statistics()}

    def _to_device(self, latents: torch.Tensor) -> torch.Tensor:
        if self.ctx.is_cuda and not latents.is_cuda:  # generated latents are on the device already
            # From pageable memory the copy would wait for the stream's earlier work
            # (the frame before), leaving the GPU idle while this frame's kernels are
            # queued; from pinned memory it is queued like a kernel. Latents are small
            # and PyTorch's caching host allocator reuses the pinned blocks.
            latents = latents.pin_memory()
        return latents.to(self.ctx.device, non_blocking=True).to(self.dtype)

    def decode(self, item: LatentFrame) -> DeviceFrame:
        """Runs in a worker thread. On a GPU it only queues the work; it can still wait
        while the GPU's launch queue is full (at 4K about one decode's time), which
        keeps the next frame's work queued behind this one."""
        decode = self.strategy
        assert not isinstance(decode, ClipDecode)
        with torch.no_grad(), self.ctx.on(self.ctx.compute):
            begin = self.busy.start(self.ctx.compute)
            latents = self._to_device(item.latents) / self.info.scaling_factor + self.info.shift_factor
            image = decode(latents)
            pixels = quantise_hwc(image, self.pixel_dtype, self.colour_lut)
            check = verdict(image, pixels)
            ready = self.ctx.record(self.ctx.compute)
            self.busy.stop(self.ctx.compute, begin, f"frame {item.frame}")
        return DeviceFrame(item.frame, item.seed, pixels, ready, check)

    def decode_clip(self, item: ClipChunk) -> list[DeviceFrame]:
        """A video VAE's next latent frame -> its pixel frames, all ready at one event."""
        clip = self.strategy
        assert isinstance(clip, ClipDecode)
        with torch.no_grad(), self.ctx.on(self.ctx.compute):
            begin = self.busy.start(self.ctx.compute)
            latents = self._to_device(item.latents)
            if self.latents_std_mean is not None:
                std, mean = self.latents_std_mean
                latents = latents * std + mean
            images = clip.step(latents[None], first=item.index == 0)[0]   # (3, t, H, W)
            if images.shape[1] != len(item.frames):
                raise RuntimeError(f"latent frame {item.index} decoded to {images.shape[1]} frames, "
                                   f"expected {len(item.frames)}")
            pixels = [quantise_hwc(images[:, i], self.pixel_dtype, self.colour_lut) for i in range(images.shape[1])]
            checks = [verdict(images[:, i], p) for i, p in enumerate(pixels)]
            ready = self.ctx.record(self.ctx.compute)
            self.busy.stop(self.ctx.compute, begin, f"frames {item.frames[0]}-{item.frames[-1]}")
            if item.last:
                clip.finish()
        return [DeviceFrame(f, seed, p, ready, c)
                for f, seed, p, c in zip(item.frames, item.seeds, pixels, checks, strict=True)]


async def decode_stage(decoder: Decoder, turn: TurnHold, stats: StageStats, rx: trio.MemoryReceiveChannel,
                       tx: trio.MemorySendChannel) -> None:
    """Decodes each item as it comes; holds the GPU turn from its first item (when
    renders share a GPU) and gives it back when it ends, however it ends."""
    limiter = trio.CapacityLimiter(1)  # one decode queued at a time keeps VRAM bounded

    async def work(item: LatentFrame) -> DeviceFrame:
        await turn.take()
        return await trio.to_thread.run_sync(decoder.decode, item, limiter=limiter)

    async def work_clip(item: ClipChunk) -> list[DeviceFrame]:
        await turn.take()
        return await trio.to_thread.run_sync(decoder.decode_clip, item, limiter=limiter)

    try:
        if decoder.decodes_clips:  # a chunk's frames go downstream at once: copied and written
            await map_stage(stats, rx, tx, work_clip, many=True)  # while the next chunk decodes
        else:
            await map_stage(stats, rx, tx, work)
    finally:
        turn.give()
