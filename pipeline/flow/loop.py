"""The loop every stage runs: receive, work, send, with its time counted (one item out
per item in; or, with `many`, a list out per item in, sent item by item).

An error names the stage and the frame, so a failure deep in a thread reaches the user
as "stage 'decode' failed on frame 12: ...".
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio

from pipeline.errors import StageFailed
from pipeline.flow.stats import StageStats


async def map_stage(stats: StageStats, rx: trio.MemoryReceiveChannel,
                    tx: trio.MemorySendChannel, work: Callable[[Any], Awaitable[Any]], *,
                    many: bool = False) -> None:
    async with rx, tx:
        while True:
            try:
                item = await stats.receive(rx)
            except trio.EndOfChannel:
                return
            try:
                with stats.busy(_frames_of(item)):
                    result = await work(item)
            except Exception as err:
                raise StageFailed(stats.name, getattr(item, "frame", None), err) from err
            # Let go of the input before a send that may wait: a frame already copied to
            # the host must not keep its device memory meanwhile.
            del item
            for out in (result if many else [result]):
                await stats.send(tx, out)


def _frames_of(item: Any) -> int | list[int] | None:
    """The frames an item carries: a clip's chunk several, a frame one."""
    frames = getattr(item, "frames", None)
    return list(frames) if frames is not None else getattr(item, "frame", None)
