"""How busy a CUDA stream kept the GPU: timing events around each piece of its work.

Busy time is the sum of the pieces' GPU durations; the span runs from the first
piece's start to the last one's end, both read on the GPU clock. A stream that always
has its next piece queued before the last one ends is busy for its whole span
(fraction 1.0); every gap, where it waited for the host to feed it, lowers it.
Finished pieces are folded into the sum as new ones start, so memory stays constant
whatever the shot length. On the CPU every call is a no-op and there is no figure.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import torch

from pipeline.gpu.device import Stream

# Pieces kept unfolded at most; older ones are waited for (they finished long ago).
_MAX_PENDING = 64


class BusyClock:
    def __init__(self) -> None:
        # (track, trace) to add each piece to as a GPU span; set by a run that traces
        self.spans: tuple[str, Any] | None = None
        self._pending: deque[tuple[torch.cuda.Event, torch.cuda.Event]] = deque()
        self._first: torch.cuda.Event | None = None
        self._last: torch.cuda.Event | None = None
        self._busy_ms = 0.0

    def start(self, stream: Stream) -> torch.cuda.Event | None:
        """Record on `stream` before its work; pass the result to `stop` after it."""
        if stream is None:
            return None
        begin = torch.cuda.Event(enable_timing=True)
        begin.record(stream)
        if self._first is None:
            self._first = begin
        return begin

    def stop(self, stream: Stream, begin: torch.cuda.Event | None, label: str = "") -> None:
        if stream is None or begin is None:
            return
        end = torch.cuda.Event(enable_timing=True)
        end.record(stream)
        if self.spans is not None:
            track, trace = self.spans
            trace.gpu(track, label, begin, end)
        self._pending.append((begin, end))
        self._last = end
        self._fold(wait=False)

    def _fold(self, *, wait: bool) -> None:
        while self._pending:
            begin, end = self._pending[0]
            if not end.query():
                if not wait and len(self._pending) <= _MAX_PENDING:
                    return
                end.synchronize()
            self._busy_ms += begin.elapsed_time(end)
            self._pending.popleft()

    def statistics(self) -> dict[str, float]:
        """Waits for the last piece. Empty on the CPU or before any piece."""
        if self._first is None or self._last is None:
            return {}
        self._fold(wait=True)
        span_ms = self._first.elapsed_time(self._last)
        return {"gpu_busy_s": round(self._busy_ms / 1000, 3), "gpu_span_s": round(span_ms / 1000, 3),
                "gpu_busy_fraction": round(self._busy_ms / span_ms, 4) if span_ms > 0 else 1.0}
