"""Watermark stage: adds the run's precomputed mark on the lowest-priority stream.

It waits for the decode on the GPU (an event, no host wait) and hands the next stage
a new event; on the CPU it adds the mark in a worker thread.
"""

from __future__ import annotations

import torch
import trio

from pipeline.config.job import Watermark
from pipeline.flow.frames import DeviceFrame
from pipeline.flow.loop import map_stage
from pipeline.flow.stats import StageStats
from pipeline.gpu.device import DeviceContext
from pipeline.watermark import spread_spectrum as watermark


def offsets_for(mark: Watermark, height: int, width: int, ctx: DeviceContext) -> torch.Tensor:
    """Built once per run: (H, W, 1) int16 on the device."""
    pattern = watermark.pattern(mark.key, mark.payload, height, width)
    return torch.from_numpy(pattern)[..., None].to(ctx.device)


async def watermark_stage(offsets: torch.Tensor, ctx: DeviceContext, stats: StageStats,
                          rx: trio.MemoryReceiveChannel, tx: trio.MemorySendChannel) -> None:
    def mark(item: DeviceFrame) -> DeviceFrame:
        with torch.no_grad(), ctx.on(ctx.watermark):
            ctx.after(ctx.watermark, item.ready)
            watermark.embed(item.pixels, offsets)
            item.ready = ctx.record(ctx.watermark)
        return item

    async def work(item: DeviceFrame) -> DeviceFrame:
        return await trio.to_thread.run_sync(mark, item)

    await map_stage(stats, rx, tx, work)
