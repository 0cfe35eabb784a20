"""Generation stage: a diffusers pipeline makes the frames' latents on the compute
stream, batch by batch; each frame's latents go on to decode as soon as its batch is
done. Decode queues its kernels on the same stream, so the GPU runs them in order,
while the copy and the writers of batch N overlap the generation of batch N+1."""

from __future__ import annotations

import torch
import trio

from ..device import DeviceContext
from ..errors import StageFailed
from ..frames import LatentFrame
from ..generate import batches, generate_clip, generate_latents
from ..job import Generation
from ..seeds import frame_seed
from ..stats import StageStats
from .source import clip_chunks


async def generate_stage(pipe: torch.nn.Module, generation: Generation, ctx: DeviceContext, frames: list[int],
                         job_seed: int, size: tuple[int, int], stats: StageStats, tx: trio.MemorySendChannel,
                         stop: trio.Event | None = None) -> None:
    width, height = size

    def run(batch: list[int]) -> list[LatentFrame]:
        seeds = [frame_seed(job_seed, f) for f in batch]
        with torch.no_grad(), ctx.on(ctx.compute):
            latents = generate_latents(pipe, generation, batch, seeds, width, height)
        return [LatentFrame(f, s, z) for f, s, z in zip(batch, seeds, latents, strict=True)]

    async with tx:
        for batch in batches(generation, frames):
            if stop is not None and stop.is_set():
                return
            try:
                with stats.busy():
                    items = await trio.to_thread.run_sync(run, batch)
            except Exception as err:
                raise StageFailed("generate", batch[0], err) from err
            for item in items:
                await stats.send(tx, item)


async def generate_clip_stage(pipe: torch.nn.Module, generation: Generation, ctx: DeviceContext, frames: list[int],
                              job_seed: int, size: tuple[int, int], temporal_scale: int, stats: StageStats,
                              tx: trio.MemorySendChannel) -> None:
    """A text-to-video pipeline: one call makes the shot's clip (seeded by the job seed
    and the first frame), sent on one latent frame at a time, as a "clip" source does."""
    width, height = size

    def run() -> torch.Tensor:
        with torch.no_grad(), ctx.on(ctx.compute):
            return generate_clip(pipe, generation, len(frames), frame_seed(job_seed, frames[0]), width, height)

    async with tx:
        if not frames:
            return
        try:
            with stats.busy():
                clip = await trio.to_thread.run_sync(run)
        except Exception as err:
            raise StageFailed("generate", frames[0], err) from err
        for chunk in clip_chunks(clip, frames, job_seed, temporal_scale):
            await stats.send(tx, chunk)
