"""The run's mark before masking: a 256x256 tile of band-limited noise, repeated over
the frame. It depends only on the key, payload and frame size, so a run builds it once;
repeating it is what lets the detector find the mark again after a crop (the tile's
offset) or a resize (the period)."""

from __future__ import annotations

import numpy as np

from pipeline.watermark.code import encode
from pipeline.watermark.layout import TILE, layout

STRENGTH = 1.9   # RMS grey levels (of 255) before masking: >= 42 dB PSNR with rounding


def tile(key: str, payload: str) -> np.ndarray:
    """The tile, float32 TILExTILE, RMS 1 (grey levels once scaled by STRENGTH)."""
    lay = layout(key)
    spectrum = np.zeros((TILE, TILE), complex)
    spectrum[lay.code_ky, lay.code_kx] = encode(payload)[lay.code_bit] * lay.code_phase
    spectrum[lay.sync_ky, lay.sync_kx] = lay.sync_phase
    spectrum[-lay.code_ky, -lay.code_kx] = np.conj(spectrum[lay.code_ky, lay.code_kx])
    spectrum[-lay.sync_ky, -lay.sync_kx] = np.conj(lay.sync_phase)
    out = np.fft.ifft2(spectrum).real
    return (out / np.sqrt(np.mean(out**2))).astype(np.float32)


def pattern(key: str, payload: str, height: int, width: int) -> np.ndarray:
    """The unmasked offset per pixel in grey levels, float32 HxW, tile origin at (0, 0)."""
    one = tile(key, payload) * STRENGTH
    reps = (-(-height // TILE), -(-width // TILE))
    return np.ascontiguousarray(np.tile(one, reps)[:height, :width])
