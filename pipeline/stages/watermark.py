"""Watermark stage: adds the run's precomputed mark on the lowest-priority stream.

It waits for the decode on the GPU (an event, no host wait) and hands the next stage
a new event; on the CPU it adds the mark in a worker thread. Per frame: the masking
(local activity of luma) and one add, see pipeline/watermark/embed.py.
"""

from __future__ import annotations

import torch
import trio

from pipeline.config.job import Watermark
from pipeline.flow.frames import DeviceFrame
from pipeline.flow.loop import map_stage
from pipeline.flow.stats import StageStats
from pipeline.flow.trace import gpu_work
from pipeline.gpu.device import DeviceContext
from pipeline.watermark.embed import embed
from pipeline.watermark.pattern import pattern


def offsets_for(mark: Watermark, height: int, width: int, ctx: DeviceContext) -> torch.Tensor:
    """Built once per run: the unmasked mark, (H, W) float16 grey levels on the device
    (half the bytes of float32 for the per-frame read; the mark is a few grey levels)."""
    return torch.from_numpy(pattern(mark.key, mark.payload, height, width)).to(ctx.device, torch.float16)


async def watermark_stage(offsets: torch.Tensor, ctx: DeviceContext, stats: StageStats,
                          rx: trio.MemoryReceiveChannel, tx: trio.MemorySendChannel) -> None:
    trace = stats.trace if ctx.is_cuda else None

    def mark(item: DeviceFrame) -> DeviceFrame:
        with torch.no_grad(), ctx.on(ctx.watermark):
            ctx.after(ctx.watermark, item.ready)
            with gpu_work(trace, "GPU watermark stream", f"frame {item.frame}", ctx.watermark):
                embed(item.pixels, offsets)
            item.ready = ctx.record(ctx.watermark)
        return item

    async def work(item: DeviceFrame) -> DeviceFrame:
        return await trio.to_thread.run_sync(mark, item)

    await map_stage(stats, rx, tx, work)
