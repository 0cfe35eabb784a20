"""One FFmpeg encoder per thread and frame shape: PyAV codec contexts keep state
between frames and cannot be shared by writer threads, while opening one per frame
costs more than a small frame's encode."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable

import av

_local = threading.local()


def thread_codec(key: Hashable, open_codec: Callable[[], av.VideoCodecContext]) -> av.VideoCodecContext:
    """This thread's encoder for `key`, opened by `open_codec` the first time."""
    codecs: dict[Hashable, av.VideoCodecContext] = getattr(_local, "codecs", None) or {}
    _local.codecs = codecs
    if key not in codecs:
        codecs[key] = open_codec()
    return codecs[key]
