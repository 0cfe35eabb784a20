"""Per-stage time accounting: busy, waiting for input, blocked on output.

A stage reads through `receive`, sends through `send` and wraps its work in `busy()`;
the run summary shows where the time went (the slowest stage is busy all the time,
the others wait on it). `first_out_s`/`last_out_s`, seconds from `origin` (the run's
start) to the stage's first and last item out, show the shot's fill and drain: how
long before the last stage's first frame, and after the decode's last one.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import trio

from pipeline.flow.trace import Trace


@dataclass
class StageStats:
    name: str
    busy_s: float = 0.0
    waiting_s: float = 0.0
    blocked_s: float = 0.0
    items: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    origin: float = field(default_factory=time.perf_counter)
    first_out: float | None = None
    last_out: float | None = None
    trace: Trace | None = None        # the run's timeline, when it asks for one

    async def receive(self, channel: trio.MemoryReceiveChannel, track: str | None = None) -> Any:
        """Next item, or raise trio.EndOfChannel once the stage before has finished."""
        start = time.perf_counter()
        try:
            return await channel.receive()
        finally:
            end = time.perf_counter()
            self.waiting_s += end - start
            if self.trace is not None:
                self.trace.wait(track or self.name, "waiting", start, end)

    async def send(self, channel: trio.MemorySendChannel, item: Any) -> None:
        start = time.perf_counter()
        try:
            await channel.send(item)
        finally:
            end = time.perf_counter()
            self.blocked_s += end - start
            self.items += 1
            self.mark_out()
            if self.trace is not None:
                self.trace.wait(self.name, "blocked", start, end)
                self.trace.counter(f"{self.name} output queue", end,
                                   channel.statistics().current_buffer_used)

    def mark_out(self) -> None:
        """An item left the stage (`send` calls it; a last stage calls it itself)."""
        self.last_out = time.perf_counter()
        if self.first_out is None:
            self.first_out = self.last_out

    @contextlib.contextmanager
    def busy(self, frames: int | list[int] | None = None, track: str | None = None) -> Iterator[None]:
        """Time the stage's work on `frames` (one, several: a batch or a clip's chunk)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            end = time.perf_counter()
            self.busy_s += end - start
            if self.trace is not None:
                self.trace.span(track or self.name, _label(frames), start, end,
                                **({} if frames is None else {"frames": [frames] if isinstance(frames, int)
                                                              else list(frames)}))

    def as_dict(self) -> dict[str, Any]:
        times = {}
        if self.first_out is not None and self.last_out is not None:
            times = {"first_out_s": round(self.first_out - self.origin, 3),
                     "last_out_s": round(self.last_out - self.origin, 3)}
        return {"busy_s": round(self.busy_s, 3), "waiting_s": round(self.waiting_s, 3),
                "blocked_s": round(self.blocked_s, 3), "items": self.items, **times, **self.extra}


def _label(frames: int | list[int] | None) -> str:
    if frames is None:
        return "work"
    if isinstance(frames, int):
        return f"frame {frames}"
    return f"frame {frames[0]}" if len(frames) == 1 else f"frames {frames[0]}-{frames[-1]}"
