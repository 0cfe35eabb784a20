"""Any picture file a person may hand the watermark check, as 8-bit RGB frames: our
frame formats (PNG 8/16-bit, EXR) through our readers, JPEG and video (MP4, MOV, MKV,
anything FFmpeg decodes) through PyAV."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np

from pipeline.files.formats import read_frame, to_rgb8

OUR_FRAMES = (".png", ".exr")


def read_pictures(path: Path, max_frames: int) -> Iterator[np.ndarray]:
    """Up to `max_frames` HxWx3 uint8 frames, in order. Raises whatever the reader raises
    on a file it cannot read."""
    if path.suffix.lower() in OUR_FRAMES:
        yield to_rgb8(read_frame(path))
        return
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError("no picture or video stream in it")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for count, frame in enumerate(container.decode(stream)):
            if count >= max_frames:
                break
            yield frame.to_ndarray(format="rgb24")
