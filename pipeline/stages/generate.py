"""Generation stage: a diffusers pipeline makes the frames' latents on the compute
stream, batch by batch; each frame's latents go on to decode as soon as its batch is
done. Decode queues its kernels on the same stream, so the GPU runs them in order,
while the copy and the writers of batch N overlap the generation of batch N+1. The
stage takes the GPU turn (`pipeline.gpu.turns`) before it starts; decode gives it back."""

from __future__ import annotations

import torch
import trio

from pipeline.config.job import Generation
from pipeline.config.seeds import frame_seed
from pipeline.errors import StageFailed
from pipeline.flow.clips import clip_chunks
from pipeline.flow.frames import LatentFrame
from pipeline.flow.stats import StageStats
from pipeline.gpu.device import DeviceContext
from pipeline.gpu.turns import TurnHold
from pipeline.models.generation import Pipeline, batches, generate_clip, generate_latents


async def generate_stage(pipe: Pipeline, generation: Generation, ctx: DeviceContext, frames: list[int],
                         job_seed: int, size: tuple[int, int], stop: trio.Event | None, turn: TurnHold,
                         stats: StageStats, rx: None, tx: trio.MemorySendChannel) -> None:
    width, height = size

    def run(batch: list[int]) -> list[LatentFrame]:
        seeds = [frame_seed(job_seed, f) for f in batch]
        with torch.no_grad(), ctx.on(ctx.compute):
            latents = generate_latents(pipe, generation, batch, seeds, width, height)
        return [LatentFrame(f, s, z) for f, s, z in zip(batch, seeds, latents, strict=True)]

    async with tx:
        await turn.take()
        for batch in batches(generation, frames):
            if stop is not None and stop.is_set():
                return
            try:
                with stats.busy(list(batch)):
                    items = await trio.to_thread.run_sync(run, batch)
            except Exception as err:
                raise StageFailed("generate", batch[0], err) from err
            for item in items:
                await stats.send(tx, item)


async def generate_clip_stage(pipe: Pipeline, generation: Generation, ctx: DeviceContext, frames: list[int],
                              job_seed: int, size: tuple[int, int], temporal_scale: int, turn: TurnHold,
                              stats: StageStats, rx: None, tx: trio.MemorySendChannel) -> None:
    """A text-to-video pipeline: one call makes the shot's clip (seeded by the job seed
    and the first frame), sent on one latent frame at a time, as a "clip" source does."""
    width, height = size

    def run() -> torch.Tensor:
        with torch.no_grad(), ctx.on(ctx.compute):
            return generate_clip(pipe, generation, len(frames), frame_seed(job_seed, frames[0]), width, height)

    async with tx:
        if not frames:
            return
        await turn.take()
        try:
            with stats.busy(list(frames)):
                clip = await trio.to_thread.run_sync(run)
        except Exception as err:
            raise StageFailed("generate", frames[0], err) from err
        for chunk in clip_chunks(clip, frames, job_seed, temporal_scale):
            await stats.send(tx, chunk)
