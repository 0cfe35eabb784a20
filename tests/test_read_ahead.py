"""Frames read back for a video made from files are read a few ahead, in threads, and
come back in the order asked, each the frame's own pixels."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from pipeline.files.read_ahead import ReadAhead


def pixels_of(frame: int) -> np.ndarray:
    return np.full((2, 3, 3), frame, dtype=np.uint8)


def test_each_take_gives_its_own_frame_and_starts_the_next_reads() -> None:
    reads = ReadAhead(pixels_of, [1, 2, 3, 5, 8], depth=2)
    try:
        assert reads.take(1)[0, 0, 0] == 1
        assert reads.reads_started == 3          # 1, and 2 and 3 ahead
        assert reads.take(2)[0, 0, 0] == 2
        assert reads.reads_started == 4
        assert [reads.take(f)[0, 0, 0] for f in (3, 5, 8)] == [3, 5, 8]
        assert reads.take(4)[0, 0, 0] == 4       # not planned for: read at once
    finally:
        reads.close()


def test_the_reads_ahead_run_at_the_same_time() -> None:
    # frames 2-4 can only finish together: read one after another, the barrier breaks
    together = threading.Barrier(3, timeout=20)

    def read(frame: int) -> np.ndarray:
        if frame in (2, 3, 4):
            together.wait()
        return pixels_of(frame)

    reads = ReadAhead(read, range(1, 8), depth=3)
    try:
        assert [reads.take(f)[0, 0, 0] for f in range(1, 8)] == list(range(1, 8))
    finally:
        reads.close()


def test_a_failed_read_reaches_the_taker() -> None:
    def read(frame: int) -> np.ndarray:
        if frame == 3:
            raise OSError("frame 3: no such file")
        return pixels_of(frame)

    reads = ReadAhead(read, range(1, 6), depth=4)
    try:
        assert reads.take(1)[0, 0, 0] == 1 and reads.take(2)[0, 0, 0] == 2
        with pytest.raises(OSError, match="frame 3"):
            reads.take(3)
    finally:
        reads.close()
