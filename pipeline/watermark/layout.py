"""What the key decides: which spatial frequencies of the 256x256 tile carry which code
bit, which carry the synchronisation signal, and each one's phase.

The band is 5..29 cycles per tile (0.020..0.113 cycles per pixel): below 0.125 so that a
frame shrunk to a quarter still holds it, above the lowest frequencies where the mark
would show as blotches; low enough that H.264/H.265 at CRF 28 keep most of it. Rows and
columns through the axes and through multiples of 16 cycles are left out: pictures are
full of horizontal and vertical structure, and 16x16 block codecs put their grid there.
Measured against a 128-pixel tile with one bin per bit (benchmarks/RESULTS.md): the
larger tile gives each bit 5 bins and keeps 98 % of bits through H.264 CRF 28 where the
smaller kept 88 %.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from pipeline.watermark.code import BITS

TILE = 256
BAND = (5.0, 29.0)  # cycles per tile: 0.020..0.113 cycles per pixel
CODE_SHARE = 0.6    # of the band's bins (5 per code bit); the rest is the sync signal
GRID = 16           # cycles per tile of a 16-pixel block grid (8-pixel blocks: 32, out of band)


@dataclass(frozen=True)
class Layout:
    code_ky: np.ndarray     # bin i carries code bit code_bit[i]
    code_kx: np.ndarray
    code_bit: np.ndarray
    code_phase: np.ndarray  # exp(i * phase), complex
    sync_ky: np.ndarray     # bins with a fixed sign: find the offset, prove presence
    sync_kx: np.ndarray
    sync_phase: np.ndarray


def _band_bins() -> list[tuple[int, int]]:
    """One bin of each conjugate pair (ky > 0) inside the band."""
    top = int(BAND[1])
    return [(ky, kx) for ky in range(1, top + 1) for kx in range(-top, top + 1)
            if BAND[0] <= np.hypot(ky, kx) <= BAND[1] and kx % GRID != 0 and ky % GRID != 0]


@lru_cache(maxsize=16)
def layout(key: str) -> Layout:
    seed = int.from_bytes(hashlib.sha256(f"framefarm-watermark-2:{key}".encode()).digest()[:8], "little")
    rng = np.random.default_rng(seed)
    bins = np.array(_band_bins())[rng.permutation(len(_band_bins()))]
    phase = np.exp(1j * rng.uniform(0, 2 * np.pi, len(bins)))
    code = max(1, int(len(bins) * CODE_SHARE) // BITS) * BITS
    return Layout(bins[:code, 0], bins[:code, 1], np.arange(code) % BITS, phase[:code],
                  bins[code:, 0], bins[code:, 1], phase[code:])
