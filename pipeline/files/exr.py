"""OpenEXR through PyAV's encoder (FFmpeg's): half-float RGB, compressed the way the job
says (zip16 by default: lossless by blocks of 16 scanlines), the way compositing
packages expect render passes.

Values: compositing packages read EXR as scene-linear light. The decoder's output is
display-referred sRGB/BT.709, so by default the sRGB transfer is inverted before the
file is written (a lookup over every half-float value: exact and one gather per
pixel), and the file carries the BT.709/D65 chromaticities. A job can keep the values
display-referred (`output.exr_transfer = "srgb"`). Either way the file says which in a
`framefarm.transfer` attribute, so our own readers (the video from published frames,
the watermark check) get display values back. Each frame also says where it came
from: `framefarm.shot`, `framefarm.frame`, `framefarm.job_hash` and the standard
`framesPerSecond`. FFmpeg's encoder writes none of these attributes: they are
inserted into its header, and the chunk offsets that follow it moved by as many bytes.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import av
import numpy as np

from pipeline.config.formats import EXR_COMPRESSIONS, EXR_TRANSFERS
from pipeline.files.codecs import thread_codec

# BT.709 primaries and D65 white: red x, y, green x, y, blue x, y, white x, y
BT709_CHROMATICITIES = (0.64, 0.33, 0.30, 0.60, 0.15, 0.06, 0.3127, 0.3290)
_TRANSFER_ATTRIBUTE = "framefarm.transfer"
_LINES_PER_CHUNK = {0: 1, 1: 1, 2: 1, 3: 16, 4: 32, 5: 16, 6: 32, 7: 32, 8: 256, 9: 256}


def srgb_to_linear(values: np.ndarray) -> np.ndarray:
    """The sRGB EOTF (IEC 61966-2-1), odd-extended below zero; float32."""
    v = np.abs(values.astype(np.float32))
    linear = np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)
    return np.copysign(linear, values).astype(np.float32)


def linear_to_srgb(values: np.ndarray) -> np.ndarray:
    """The inverse of srgb_to_linear; float32."""
    v = np.abs(values.astype(np.float32))
    encoded = np.where(v <= 0.0031308, v * 12.92, 1.055 * v ** (1 / 2.4) - 0.055)
    return np.copysign(encoded, values).astype(np.float32)


_HALF_TO_LINEAR: np.ndarray | None = None


def _linearise(pixels: np.ndarray) -> np.ndarray:
    global _HALF_TO_LINEAR
    if pixels.dtype != np.float16:
        return srgb_to_linear(pixels)
    if _HALF_TO_LINEAR is None:   # every half value, once per process (128 KiB)
        with np.errstate(invalid="ignore", over="ignore"):   # NaN stays NaN; past 65504 it is inf
            _HALF_TO_LINEAR = srgb_to_linear(np.arange(65536, dtype=np.uint16).view(np.float16)).astype(np.float16)
    return _HALF_TO_LINEAR[np.ascontiguousarray(pixels).view(np.uint16)]


Attribute = tuple[str, str, bytes]   # name, EXR type name, value bytes


def frame_attributes(shot: str, frame: int, job_hash: str, fps: int) -> list[Attribute]:
    """What a frame file says of where it came from (read by `read_attributes`)."""
    return [("framesPerSecond", "rational", struct.pack("<iI", fps, 1)),
            ("framefarm.shot", "string", shot.encode()),
            ("framefarm.frame", "int", struct.pack("<i", frame)),
            ("framefarm.job_hash", "string", job_hash.encode())]


COLOUR_TRANSFER = "colour"   # values a job's [colour] transform made: stored as they are


def encode_exr(pixels: np.ndarray, transfer: str = "linear", compression: str = "zip16",
               attributes: Sequence[Attribute] = (),
               chromaticities: tuple[float, ...] | None = BT709_CHROMATICITIES) -> bytes:
    """Float (H, W, 3) RGB, half or single -> EXR bytes stored as half floats: display-
    referred values linearised when `transfer` is "linear", kept for "srgb" and for
    COLOUR_TRANSFER; `attributes` and the `chromaticities` (None: unknown, not written)
    in the header."""
    height, width, _ = pixels.shape

    def open_codec() -> av.VideoCodecContext:
        codec = cast(av.VideoCodecContext, av.CodecContext.create("exr", "w"))
        codec.width, codec.height, codec.pix_fmt = width, height, "gbrpf32le"
        codec.options = {"format": "half", "compression": compression}   # `format`: FFmpeg ignores unknown keys
        return codec

    assert (transfer in EXR_TRANSFERS or transfer == COLOUR_TRANSFER) and compression in EXR_COMPRESSIONS
    values = _linearise(pixels) if transfer == "linear" else pixels
    codec = thread_codec(("exr", width, height, compression), open_codec)
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(values, dtype=np.float32), format="gbrpf32le")
    data = b"".join(bytes(packet) for packet in codec.encode(frame))
    primaries = [] if chromaticities is None else [
        ("chromaticities", "chromaticities", struct.pack("<8f", *chromaticities))]
    return with_attributes(data, [*primaries, (_TRANSFER_ATTRIBUTE, "string", transfer.encode()), *attributes])


def header_attributes(data: bytes) -> tuple[dict[str, tuple[str, bytes]], int]:
    """A single-part scanline EXR's header attributes {name: (type, value)} and the
    offset of the byte that ends the header."""
    if data[:4] != b"\x76\x2f\x31\x01":
        raise ValueError("not an OpenEXR file")
    at, attributes = 8, {}
    while data[at] != 0:
        name_end = data.index(b"\0", at)
        type_end = data.index(b"\0", name_end + 1)
        size = struct.unpack_from("<i", data, type_end + 1)[0]
        value_at = type_end + 5
        attributes[data[at:name_end].decode()] = (data[name_end + 1:type_end].decode(), data[value_at:value_at + size])
        at = value_at + size
    return attributes, at


def read_attributes(path: Path) -> dict[str, object]:
    """The header's attributes of the types this module writes, decoded; others as bytes."""
    decoded: dict[str, object] = {}
    for name, (kind, value) in header_attributes(path.read_bytes())[0].items():
        if kind == "string":
            decoded[name] = value.decode()
        elif kind == "int":
            decoded[name] = struct.unpack("<i", value)[0]
        elif kind == "rational":
            decoded[name] = struct.unpack("<iI", value)
        elif kind == "compression":
            decoded[name] = {0: "none", 1: "rle", 2: "zip1", 3: "zip16"}.get(value[0], value[0])
        elif kind == "chromaticities":
            decoded[name] = struct.unpack("<8f", value)
        else:
            decoded[name] = value
    return decoded


def with_attributes(data: bytes, extra: list[tuple[str, str, bytes]]) -> bytes:
    """EXR bytes with `extra` (name, type, value) attributes added to the header, and the
    chunk offset table that follows the header moved by the bytes added."""
    attributes, end = header_attributes(data)
    _xmin, ymin, _xmax, ymax = struct.unpack("<4i", attributes["dataWindow"][1])
    chunks = math.ceil((ymax - ymin + 1) / _LINES_PER_CHUNK[attributes["compression"][1][0]])
    added = b"".join(name.encode() + b"\0" + kind.encode() + b"\0" + struct.pack("<i", len(value)) + value
                     for name, kind, value in extra)
    table = np.frombuffer(data, dtype="<u8", count=chunks, offset=end + 1) + len(added)
    return data[:end] + added + b"\0" + table.astype("<u8").tobytes() + data[end + 1 + 8 * chunks:]


def read_exr(path: Path) -> np.ndarray:
    """EXR file -> float32 (H, W, 3) RGB, the stored values exactly."""
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        if frame.format.name != "gbrpf16le":
            return frame.to_ndarray(format="gbrpf32le")
        # FFmpeg decodes half-float EXR to half planes; swscale's conversion to float32
        # is not exact (0.25 came back as 0.249897), so the planes are read as they are
        g, b, r = (np.frombuffer(memoryview(plane), dtype=np.float16).reshape(frame.height, -1)[:, :frame.width]
                   for plane in frame.planes)
        return np.stack([r, g, b], axis=-1).astype(np.float32)


def read_exr_display(path: Path) -> np.ndarray:
    """EXR file -> float32 (H, W, 3) display-referred RGB, whichever way it was stored."""
    values = read_exr(path)
    attributes, _ = header_attributes(path.read_bytes())
    return linear_to_srgb(values) if attributes.get(_TRANSFER_ATTRIBUTE, ("", b""))[1] == b"linear" else values
