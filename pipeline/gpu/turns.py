"""Renders sharing one GPU in one process (a farm worker's task slots) take turns at it.

Without turns, two tasks started together share the GPU evenly, finish together, and
start the next two together: the host-only ends of both (preparing the first frame,
encoding the last ones) fall at the same moment, and the GPU waits through them
(benchmarks/RESULTS.md, 'Farm frame throughput on GPUs'). With turns, one render's GPU stages (generation, decode)
run at a time, and the next render's begin as soon as this one has queued its last
decode, while its frames are still being copied and written: one task's ends overlap
the other's GPU work.

A render takes the turn when its first latents are ready (or before it generates) and
gives it back when its decode stage ends, however it ends.
"""

from __future__ import annotations

import time

import trio


class GpuTurn:
    """One per GPU and process; handed to every `render` that shares the GPU."""

    def __init__(self) -> None:
        self._free = trio.Semaphore(1)   # not a Lock: taken and given back by different trio tasks


class TurnHold:
    """One render's use of a GpuTurn; with none, every call here does nothing."""

    def __init__(self, turn: GpuTurn | None) -> None:
        self.turn = turn
        self.held = False
        self.waited_s = 0.0

    async def take(self) -> None:
        """Wait for the GPU; at once if this render holds it already (or shares none)."""
        if self.turn is None or self.held:
            return
        start = time.perf_counter()
        await self.turn._free.acquire()
        self.held = True
        self.waited_s += time.perf_counter() - start

    def give(self) -> None:
        """Give the GPU to the next render; nothing if this render does not hold it."""
        if self.held and self.turn is not None:
            self.held = False
            self.turn._free.release()
