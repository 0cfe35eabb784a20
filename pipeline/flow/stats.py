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

    async def receive(self, channel: trio.MemoryReceiveChannel) -> Any:
        """Next item, or raise trio.EndOfChannel once the stage before has finished."""
        start = time.perf_counter()
        try:
            return await channel.receive()
        finally:
            self.waiting_s += time.perf_counter() - start

    async def send(self, channel: trio.MemorySendChannel, item: Any) -> None:
        start = time.perf_counter()
        try:
            await channel.send(item)
        finally:
            self.blocked_s += time.perf_counter() - start
            self.items += 1
            self.mark_out()

    def mark_out(self) -> None:
        """An item left the stage (`send` calls it; a last stage calls it itself)."""
        self.last_out = time.perf_counter()
        if self.first_out is None:
            self.first_out = self.last_out

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.busy_s += time.perf_counter() - start

    def as_dict(self) -> dict[str, Any]:
        times = {}
        if self.first_out is not None and self.last_out is not None:
            times = {"first_out_s": round(self.first_out - self.origin, 3),
                     "last_out_s": round(self.last_out - self.origin, 3)}
        return {"busy_s": round(self.busy_s, 3), "waiting_s": round(self.waiting_s, 3),
                "blocked_s": round(self.blocked_s, 3), "items": self.items, **times, **self.extra}
