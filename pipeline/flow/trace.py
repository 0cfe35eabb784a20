"""A run's timeline in the Trace Event Format (what Perfetto and chrome://tracing open).

Host tracks: one per stage, one per writer; a span per frame of work ("frame N"), and
the waits between ("waiting" for input, "blocked" on output). GPU tracks: a span per
frame from the CUDA timing events around the decode, the watermark and the copy, placed on the host
clock by one reference event recorded on an idle stream at the start of the run.
Counters: ring slots in use and each stage's output channel depth.

Off (no `--trace`), nothing is made: every hook is one `is None` test.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from pathlib import Path
from typing import Any

import torch

HOST_PID, GPU_PID = 1, 2
# Waits shorter than this are not worth a span (a busy channel hands items on in microseconds)
MIN_WAIT_S = 50e-6


class Trace:
    def __init__(self) -> None:
        self.origin = time.perf_counter()
        self._events: list[dict[str, Any]] = []
        self._tracks: dict[tuple[int, str], int] = {}
        self._gpu: list[tuple[str, str, torch.cuda.Event, torch.cuda.Event]] = []
        self._gpu_ref: tuple[torch.cuda.Event, float] | None = None
        self._lock = threading.Lock()   # writers and the decode thread add events too

    def _tid(self, pid: int, track: str) -> int:
        key = (pid, track)
        if key not in self._tracks:
            self._tracks[key] = len(self._tracks) + 1
        return self._tracks[key]

    def _us(self, at: float) -> float:
        return round((at - self.origin) * 1e6, 3)

    def span(self, track: str, name: str, start: float, end: float, **args: Any) -> None:
        """Host work or a wait on `track`, between two perf_counter() readings."""
        with self._lock:
            self._events.append({"ph": "X", "pid": HOST_PID, "tid": self._tid(HOST_PID, track), "name": name,
                                 "ts": self._us(start), "dur": round((end - start) * 1e6, 3),
                                 **({"args": args} if args else {})})

    def wait(self, track: str, name: str, start: float, end: float) -> None:
        if end - start >= MIN_WAIT_S:
            self.span(track, name, start, end)

    def counter(self, name: str, at: float, value: float) -> None:
        with self._lock:
            self._events.append({"ph": "C", "pid": HOST_PID, "name": name, "ts": self._us(at),
                                 "args": {"value": value}})

    def align_gpu(self, stream: torch.cuda.Stream) -> None:
        """The GPU clock's reference: an event on an idle stream, read as the host time
        its synchronize returns (within tens of microseconds)."""
        event = torch.cuda.Event(enable_timing=True)
        event.record(stream)
        event.synchronize()
        self._gpu_ref = (event, time.perf_counter())

    def gpu(self, track: str, name: str, begin: torch.cuda.Event, end: torch.cuda.Event) -> None:
        """A GPU span between two timing events (resolved when the trace is written)."""
        if self._gpu_ref is not None:
            with self._lock:
                self._gpu.append((track, name, begin, end))

    @contextmanager
    def gpu_work(self, track: str, name: str, stream: torch.cuda.Stream) -> Iterator[None]:
        """A GPU span around the work queued on `stream` inside the block."""
        begin = torch.cuda.Event(enable_timing=True)
        begin.record(stream)
        yield
        end = torch.cuda.Event(enable_timing=True)
        end.record(stream)
        self.gpu(track, name, begin, end)

    def events(self) -> list[dict[str, Any]]:
        """Every event, GPU spans resolved (waits for their events), and the tracks' names."""
        with self._lock:
            events = list(self._events)
            gpu, self._gpu = list(self._gpu), []
        if self._gpu_ref is not None:
            ref, host = self._gpu_ref
            for track, name, begin, end in gpu:
                end.synchronize()
                start = host + ref.elapsed_time(begin) / 1e3
                events.append({"ph": "X", "pid": GPU_PID, "tid": self._tid(GPU_PID, track), "name": name,
                               "ts": self._us(start), "dur": round(begin.elapsed_time(end) * 1e3, 3)})
        names = [{"ph": "M", "pid": pid, "name": "process_name", "args": {"name": "host" if pid == HOST_PID
                                                                         else "GPU"}}
                 for pid in sorted({pid for pid, _ in self._tracks})]
        names += [{"ph": "M", "pid": pid, "tid": tid, "name": "thread_name", "args": {"name": track}}
                  for (pid, track), tid in self._tracks.items()]
        names += [{"ph": "M", "pid": pid, "tid": tid, "name": "thread_sort_index", "args": {"sort_index": tid}}
                  for (pid, track), tid in self._tracks.items()]
        return names + sorted(events, key=lambda e: e["ts"])

    def write(self, path: Path, metadata: dict[str, Any]) -> None:
        """The trace as JSON, written whole (a temporary file renamed into place)."""
        data = {"traceEvents": self.events(), "displayTimeUnit": "ms", "otherData": metadata}
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(data, separators=(",", ":")))
            os.replace(tmp, path)
        except BaseException:
            with suppress(OSError):   # a full disk, a directory in the way: no temporary file left
                tmp.unlink()
            raise


def gpu_work(trace: Trace | None, track: str, name: str,
             stream: torch.cuda.Stream | None) -> AbstractContextManager[None]:
    """`trace.gpu_work(...)`, or nothing when the run is not traced or not on a GPU
    (timing events cost a little)."""
    return trace.gpu_work(track, name, stream) if trace is not None and stream is not None else nullcontext()
