"""Source stage: latents per frame (or a clip's, latent frame by latent frame), read
from files (`pipeline.files.latents`) or drawn as seeded noise."""

from __future__ import annotations

import torch
import trio

from pipeline.config.job import Source
from pipeline.config.seeds import frame_seed
from pipeline.errors import StageFailed
from pipeline.files.latents import read_clip, read_latents
from pipeline.flow.clips import clip_chunks
from pipeline.flow.frames import LatentFrame
from pipeline.flow.stats import StageStats


def noise_latents(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


async def source_stage(source: Source, frames: list[int], job_seed: int, shape: tuple[int, int, int],
                       stop: trio.Event | None, stats: StageStats, rx: None, tx: trio.MemorySendChannel) -> None:
    """Emit each frame's latents in order; once `stop` is set, emit no more (frames
    already on their way still finish: a draining farm worker)."""
    def load(frame: int) -> LatentFrame:
        seed = frame_seed(job_seed, frame)
        if source.kind == "noise":
            return LatentFrame(frame, seed, noise_latents(seed, shape))
        return LatentFrame(frame, seed, read_latents(source, frame))

    async with tx:
        for frame in frames:
            if stop is not None and stop.is_set():
                return
            try:
                with stats.busy(frame):
                    item = await trio.to_thread.run_sync(load, frame)
            except Exception as err:
                raise StageFailed("source", frame, err) from err
            await stats.send(tx, item)


async def clip_source_stage(source: Source, frames: list[int], job_seed: int, shape: tuple[int, int, int, int],
                            temporal_scale: int, stats: StageStats, rx: None, tx: trio.MemorySendChannel) -> None:
    """Emit the shot's clip one latent frame at a time, in order, with the frames each
    decodes to. A clip decodes from its first latent frame (the cache is causal), so
    a clip job renders every frame or none."""
    def load() -> torch.Tensor:
        if source.kind == "noise":
            return noise_latents(job_seed, shape)
        return read_clip(source)

    async with tx:
        if not frames:  # every frame finished (a resumed run, the farm's video task): nothing to decode
            return
        try:
            with stats.busy(list(frames)):
                clip = await trio.to_thread.run_sync(load)
        except Exception as err:
            raise StageFailed("source", frames[0], err) from err
        for chunk in clip_chunks(clip, frames, job_seed, temporal_scale):
            await stats.send(tx, chunk)
