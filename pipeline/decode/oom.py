"""Out of device memory in a batch of tiles: give the memory back and let the caller
split the batch, instead of failing the frame.

The split happens outside the `except` block on purpose: inside it the exception's
traceback keeps the failed batch's tensors alive, so a retry there would run with
their memory still taken.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

T = TypeVar("T")


def unless_out_of_memory(run: Callable[[], T], *, can_split: bool,
                         undo: Callable[[], None] | None = None) -> T | None:
    """`run()`'s result, or None when it ran out of device memory and the work can be
    split (the caller splits it and retries the halves). `undo` puts back what the
    failed attempt changed. One item that does not fit fails with the allocator's message."""
    try:
        return run()
    except torch.cuda.OutOfMemoryError:  # torch.OutOfMemoryError on torch >= 2.5
        if undo is not None:
            undo()
        if not can_split:
            raise
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # give the failed batch's blocks back before the retry
    return None
