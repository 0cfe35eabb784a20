"""PNG through PyAV's encoder (FFmpeg's), which releases the GIL and is about 2x faster
than Pillow per frame (benchmarks/RESULTS.md, 'GPU overlap'), so writer threads scale
with cores. 8-bit (rgb24) and 16-bit (rgb48) RGB.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import av
import numpy as np

from pipeline.files.codecs import thread_codec


def encode_png(pixels: np.ndarray, compression: int) -> bytes | memoryview:
    """RGB (H, W, 3) uint8 or uint16 -> PNG bytes of that depth (a view of the encoder's
    packet where it made one: copying a 4K PNG into `bytes` holds the GIL for ~1 ms a
    copy, time the thread that queues the GPU's kernels waits for)."""
    height, width, _ = pixels.shape
    deep = pixels.dtype == np.uint16

    def open_codec() -> av.VideoCodecContext:
        codec = cast(av.VideoCodecContext, av.CodecContext.create("png", "w"))
        codec.width, codec.height = width, height
        codec.pix_fmt = "rgb48be" if deep else "rgb24"  # PNG stores 16-bit samples big-endian
        codec.options = {"compression_level": str(compression)}
        return codec

    codec = thread_codec(("png", width, height, compression, deep), open_codec)
    frame = av.VideoFrame.from_ndarray(pixels, format="rgb48le" if deep else "rgb24")
    packets = codec.encode(frame)
    if len(packets) == 1:
        return memoryview(packets[0])   # keeps the packet alive; hashlib and write() take it as is
    return b"".join(bytes(packet) for packet in packets)


def read_png(path: Path, *, native: bool = False) -> np.ndarray:
    """PNG file -> RGB uint8 (H, W, 3); with `native`, 16-bit files come back as uint16."""
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        deep = frame.format.name.startswith(("rgb48", "rgba64"))
        return frame.to_ndarray(format="rgb48le" if native and deep else "rgb24")
