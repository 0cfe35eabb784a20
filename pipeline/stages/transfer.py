"""Transfer stage: device pixels -> a host ring slot, on the copy stream.

Order of a slot's life, by three points: decode (or watermark) done, an event on the
GPU that the copy stream waits for; copy done, an event trio awaits before handing the
slot on and dropping the device tensor (so the allocator never reuses memory a copy
still reads: no reliance on record_stream); host IO done, when the writers give the
slot back to the ring.

Where the videos take Y'CbCr converted on the device (tuning.video_rgb_to_yuv), the
conversion runs here too, on the copy stream after the frame's copy, and its planes are
copied into the slot's plane buffers.
"""

from __future__ import annotations

import time

import torch
import trio

from pipeline.colour.ycbcr import to_planes
from pipeline.decode.quantise import OK, VERDICTS
from pipeline.errors import BadFrame
from pipeline.flow.frames import DeviceFrame, HostFrame
from pipeline.flow.loop import map_stage
from pipeline.flow.stats import StageStats
from pipeline.flow.trace import gpu_work
from pipeline.gpu.device import DeviceContext, Event
from pipeline.gpu.ring import HostRing


async def transfer_stage(ring: HostRing, ctx: DeviceContext, stats: StageStats,
                         rx: trio.MemoryReceiveChannel, tx: trio.MemorySendChannel) -> None:
    trace = stats.trace if ctx.is_cuda else None

    def copy(item: DeviceFrame, slot: int) -> tuple[Event, torch.Tensor | None]:
        with ctx.on(ctx.copy):
            ctx.after(ctx.copy, item.ready)
            with gpu_work(trace, "GPU copy stream", f"frame {item.frame}", ctx.copy):
                ring.tensor(slot).copy_(item.pixels, non_blocking=ctx.is_cuda)
                for fmt, host in ring.planes(slot).items():   # the video writers' Y'CbCr
                    host.copy_(to_planes(item.pixels, fmt), non_blocking=ctx.is_cuda)
            verdict = None
            if item.verdict is not None:
                verdict = torch.empty((), dtype=item.verdict.dtype, pin_memory=ctx.is_cuda)
                verdict.copy_(item.verdict, non_blocking=ctx.is_cuda)
            return ctx.record(ctx.copy), verdict

    async def work(item: DeviceFrame) -> HostFrame:
        start = time.perf_counter()
        slot = await ring.acquire()
        if stats.trace is not None:
            stats.trace.counter("ring slots in use", time.perf_counter(), ring.in_use())
        waited = time.perf_counter() - start  # a full ring means the writers are behind:
        stats.blocked_s += waited             # count it as blocked on output, not busy
        stats.busy_s -= waited
        try:
            done, verdict = await trio.to_thread.run_sync(copy, item, slot)
            await ctx.completed(done)
            if verdict is not None and int(verdict) != OK:
                raise BadFrame(VERDICTS[int(verdict)])
        except BaseException:
            ring.release(slot)
            raise
        return HostFrame(item.frame, item.seed, slot, ring.array(slot),
                         {fmt: planes.numpy() for fmt, planes in ring.planes(slot).items()})

    await map_stage(stats, rx, tx, work)
