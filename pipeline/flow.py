"""The loop every one-in, one-out stage runs: receive, work, send, with its time counted.

An error names the stage and the frame, so a failure deep in a thread reaches the user
as "stage 'decode' failed on frame 12: ...".
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio

from .errors import StageFailed
from .stats import StageStats


async def map_stage(stats: StageStats, rx: trio.MemoryReceiveChannel,
                    tx: trio.MemorySendChannel, work: Callable[[Any], Awaitable[Any]]) -> None:
    async with rx, tx:
        while True:
            try:
                item = await stats.receive(rx)
            except trio.EndOfChannel:
                return
            try:
                with stats.busy():
                    result = await work(item)
            except Exception as err:
                raise StageFailed(stats.name, getattr(item, "frame", None), err) from err
            await stats.send(tx, result)
