"""Frame files read a few ahead of the one being used, in threads.

A video made from published frames (a resumed run, the farm's video and segment tasks)
reads each PNG back before encoding it. Read on the encoder's thread, the farm's ProRes
video task took 330 ms a 1080p frame, where the encoder alone takes 71-85 ms on a natural
1080p frame (benchmarks/RESULTS.md). A few threads reading ahead take the reads off the
encoder's path; what that gains on a many-core host is benchmarks/video_from_files.py's
to say (not yet run on the GPU machine).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np


class ReadAhead:
    """`take(frame)` in `order` returns `read(frame)`, having started the reads of the
    next `depth` frames of `order` in threads. Call `close()` when done (or abandoned)."""

    def __init__(self, read: Callable[[int], np.ndarray], order: Sequence[int], depth: int) -> None:
        self._read = read
        self._order = list(order)
        self._position = {frame: i for i, frame in enumerate(self._order)}
        self._depth = max(1, depth)
        self._submitted = 0   # how many of `order` have been handed to the pool
        self._pending: dict[int, Future[np.ndarray]] = {}
        self._pool: ThreadPoolExecutor | None = None

    def take(self, frame: int) -> np.ndarray:
        where = self._position.get(frame)
        if where is None:   # not one of the frames planned for: read it here
            return self._read(frame)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self._depth, thread_name_prefix="read-ahead")
        while self._submitted < min(len(self._order), where + 1 + self._depth):
            upcoming = self._order[self._submitted]
            self._pending[upcoming] = self._pool.submit(self._read, upcoming)
            self._submitted += 1
        future = self._pending.pop(frame, None)
        return future.result() if future is not None else self._read(frame)

    @property
    def reads_started(self) -> int:
        return self._submitted

    def close(self) -> None:
        """Reads not started are dropped; those under way finish in their threads."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self._pending.clear()
