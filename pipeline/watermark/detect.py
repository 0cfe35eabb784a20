"""Finding the mark without being told how the picture was cropped or resized.

1. Scale: the mark repeats every TILE pixels, so the picture's spectrum, whitened
   (|F| in place of |F|^2), has an autocorrelation with peaks at multiples of the period.
   The four highest peaks between a quarter and twice the tile, each moved to the
   shortest period that explains it and refined on a far multiple, are the candidate
   scales, with the unresized tile as a third; resampling the picture by TILE/period
   brings the tile back to 256 pixels. Cost: one FFT of the picture, then per candidate
   one resample and one fold (a 1080p still: about 1 s on one core in numpy).
2. Offset: the high-passed, activity-normalised luma is folded (summed modulo the tile)
   into one 256x256 tile; cross-correlating its spectrum with the key's sync bins gives
   the crop offset at the peak (one 256x256 FFT).
3. Bits: each code bit's bin, phase-corrected for the offset, gives a soft value;
   Reed-Solomon with erasures reads the payload.

For video the folded tiles of all frames are summed before steps 2 and 3: every frame
carries the same payload, so the evidence adds up.

The p-value: for a fixed picture and a random key, the key's sync phases are
independent and uniform, so the magnitude-weighted sum of cosines S over n bins is
sub-Gaussian with variance sum(|F_k|^2)/2 (I0(x) <= exp(x^2/4)): P(z >= t) <= exp(-t^2/2).
The search over TILE^2 offsets and CANDIDATES periods is paid for by a union bound.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.watermark.code import BITS, decode
from pipeline.watermark.layout import BAND, TILE, layout

P_THRESHOLD = 1e-6
MIN_PERIOD, MAX_PERIOD = TILE / 4.5, TILE * 2.2   # resize 0.25..2, with a margin
CANDIDATES = 5      # periods tried: the four likeliest estimates and the unresized tile
PROFILE_FRAMES = 8  # video: frames whose spectra set the period


@dataclass(frozen=True)
class Detection:
    found: bool
    payload: str | None
    p_value: float        # chance that an unmarked input (or a wrong key) scores this high
    score: float          # the sync z-score at the best offset
    period: float         # the tile's size in the input's pixels (256 = not resized)
    frames: int = 1
    code_bits: np.ndarray | None = field(default=None, repr=False, compare=False)  # +-1, before correction


def luma(rgb8: np.ndarray) -> np.ndarray:
    rgb = rgb8.astype(np.float32)
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


def _box(image: np.ndarray, size: int) -> np.ndarray:
    """Mean over a size x size window (odd size), clipped at the borders: running sums,
    so the cost does not grow with the window."""
    out = image.astype(np.float32)
    for axis in (0, 1):
        moved = np.moveaxis(out, axis, 0)
        n, half = moved.shape[0], size // 2
        total = np.zeros((n + 2 * half + 1, *moved.shape[1:]), np.float64)
        np.cumsum(moved, axis=0, out=total[half + 1:n + half + 1])
        total[n + half + 1:] = total[n + half]
        sums = total[size:] - total[:-size]
        count = np.minimum(np.arange(n) + half + 1, n) - np.maximum(np.arange(n) - half, 0)
        out = np.moveaxis((sums / count.reshape(-1, *[1] * (moved.ndim - 1))).astype(np.float32), 0, axis)
    return out


def period_profile(y: np.ndarray) -> np.ndarray:
    """Autocorrelation of the picture's spectral lines along both axes, lags up to
    4 * MAX_PERIOD or half the picture's shorter side. The power spectrum divided by its local
    mean keeps narrow lines (a repeating tile) and flattens the picture's smooth spectrum."""
    height, width = y.shape
    taper = np.outer(np.hanning(height), np.hanning(width)).astype(np.float32) ** 0.25
    power = np.abs(np.fft.fft2((y - y.mean()) * taper)).astype(np.float32) ** 2
    local = np.fft.ifftshift(_box(np.fft.fftshift(power), 5))
    lines = np.clip(power / np.maximum(local, 1e-12), 0, 10) - 1
    fy = np.abs(np.fft.fftfreq(height))[:, None]
    fx = np.abs(np.fft.fftfreq(width))[None, :]
    lines[(np.hypot(fy, fx) < BAND[0] / MAX_PERIOD) | (fy < 1.5 / height) | (fx < 1.5 / width)] = 0
    auto = np.fft.ifft2(lines).real
    lags = min(int(MAX_PERIOD * 4), height // 2, width // 2)
    profile = (auto[0, :lags] + auto[:lags, 0]) / lines.size
    return profile - _box(profile[None], 9)[0]


def period_candidates(profile: np.ndarray, count: int = CANDIDATES - 1) -> list[float]:
    """The `count` likeliest tile periods: the highest peaks, each moved to the shortest
    period that explains it (a peak at 2P or 3P) and refined on its farthest multiple."""
    lo, hi = int(MIN_PERIOD), min(int(MAX_PERIOD), len(profile) - 3)
    if hi <= lo:
        return []   # too small a picture to measure: only the unresized tile is tried
    inner = profile[lo:hi + 1]
    peaks = [lo + i for i in range(1, len(inner) - 1) if inner[i] >= inner[i - 1] and inner[i] >= inner[i + 1]]
    found: list[float] = []
    for peak in sorted(peaks, key=lambda i: -profile[i]):
        period = _refine(profile, _fundamental(profile, peak))
        if all(abs(period - other) > 0.01 * other for other in found):
            found.append(period)
        if len(found) == count:
            break
    return found


def _fundamental(profile: np.ndarray, best: int) -> int:
    for divisor in (4, 3, 2):
        near = round(best / divisor)
        if near - 2 >= MIN_PERIOD and profile[near - 2:near + 3].max() > 0.4 * profile[best]:
            return near - 2 + int(np.argmax(profile[near - 2:near + 3]))
    return best


def _refine(profile: np.ndarray, best: int) -> float:
    """Sub-pixel period from peaks at ever farther multiples: the error shrinks with the multiple."""
    period = float(best)
    multiple = 1
    while (multiple + 1) * period + 3 < len(profile):
        multiple += 1
    for step in range(1, multiple + 1):
        centre = round(step * period)
        if centre + 4 > len(profile):
            break
        peak = centre - 2 + int(np.argmax(profile[centre - 2:centre + 3]))
        a, b, c = profile[peak - 1], profile[peak], profile[peak + 1]
        shift = 0.5 * (a - c) / (a - 2 * b + c) if (a - 2 * b + c) < 0 else 0.0
        period = (peak + shift) / step
    return period


def fold(y: np.ndarray, period: float) -> np.ndarray:
    """Resample so the tile is TILE pixels, high-pass, normalise by local activity and sum
    modulo the tile: TILExTILE float64."""
    if abs(period - TILE) > 0.05:
        tensor = torch.from_numpy(np.ascontiguousarray(y))[None, None]
        scale = TILE / period
        y = F.interpolate(tensor, scale_factor=scale, mode="bilinear", align_corners=False,
                          recompute_scale_factor=False, antialias=scale < 1)[0, 0].numpy()
    residual = y - _box(y, 9)
    activity = _box(np.abs(residual), 15) + 1.0
    weighted = residual / activity
    height, width = weighted.shape
    padded = np.zeros((-(-height // TILE) * TILE, -(-width // TILE) * TILE), np.float64)
    padded[:height, :width] = weighted
    return padded.reshape(padded.shape[0] // TILE, TILE, padded.shape[1] // TILE, TILE).sum(axis=(0, 2))


def read_tile(folded: np.ndarray, key: str, *, period: float, trials: int, frames: int = 1) -> Detection:
    """Offset, presence and payload from a folded tile (summed over frames for video)."""
    return read_spectrum(np.fft.fft2(folded), key, period=period, trials=trials, frames=frames)


def read_spectrum(spectrum: np.ndarray, key: str, *, period: float, trials: int, frames: int = 1) -> Detection:
    """read_tile from the folded tile's FFT (key-independent: computed once for many keys)."""
    lay = layout(key)
    sync = spectrum[lay.sync_ky, lay.sync_kx] * np.conj(lay.sync_phase)
    cross = np.zeros((TILE, TILE), complex)
    cross[lay.sync_ky, lay.sync_kx] = sync
    cross[-lay.sync_ky, -lay.sync_kx] = np.conj(sync)
    correlation = np.fft.ifft2(cross).real * TILE * TILE / 2   # sum over bins of |F| cos(angle)
    dy, dx = np.unravel_index(int(np.argmax(correlation)), correlation.shape)
    noise = np.sqrt(np.sum(np.abs(sync) ** 2) / 2)
    score = float(correlation[dy, dx] / noise) if noise > 0 else 0.0
    p_value = float(min(1.0, trials * TILE * TILE * np.exp(-score * score / 2)))
    shift = np.exp(2j * np.pi * (lay.code_ky * dy + lay.code_kx * dx) / TILE)
    code = spectrum[lay.code_ky, lay.code_kx] * np.conj(lay.code_phase) * shift
    soft = np.bincount(lay.code_bit, weights=code.real, minlength=BITS).astype(np.float64)
    soft = soft / max(float(np.sqrt(np.mean(soft**2))), 1e-12)
    message = decode(soft) if p_value <= P_THRESHOLD else None
    bits = np.where(soft > 0, 1, -1).astype(np.int8)
    if message is None:
        return Detection(False, None, p_value, score, period, frames, bits)
    payload = message.rstrip(b"\0").decode(errors="replace")
    return Detection(True, payload, p_value, score, period, frames, bits)


def detect_frames(frames: Iterable[np.ndarray], key: str) -> Detection:
    """One verdict for RGB uint8 frames of one picture sequence (a still is one frame),
    read as they come: the first PROFILE_FRAMES set the candidate periods; the candidate
    whose sync peak stands highest over them is the one the later frames are folded at
    (the p-value still pays for every candidate)."""
    head: list[np.ndarray] = []
    tiles: dict[float, np.ndarray] = {}
    count = 0
    for frame in frames:
        count += 1
        if tiles:
            for period in tiles:
                tiles[period] += fold(luma(frame), period)
            continue
        head.append(luma(frame))
        if len(head) == PROFILE_FRAMES:
            tiles = candidate_tiles(head)
            best = max(tiles, key=lambda period: read_tile(tiles[period], key, period=period, trials=1).score)
            tiles = {best: tiles[best]}
            head = []
    if head:
        tiles = candidate_tiles(head)
    if not tiles:
        raise ValueError("no frames to look at")
    verdicts = [read_tile(tile, key, period=period, trials=CANDIDATES, frames=count)
                for period, tile in tiles.items()]
    return min(verdicts, key=lambda found: (not found.found, found.p_value))


def candidate_tiles(lumas: list[np.ndarray]) -> dict[float, np.ndarray]:
    """Folded tiles at every candidate period (key-independent): the unresized tile, the
    common case, and the likeliest periods the frames' spectra show."""
    estimates = period_candidates(np.sum([period_profile(y) for y in lumas], axis=0))
    periods = dict.fromkeys([float(TILE), *estimates])
    return {period: np.sum([fold(y, period) for y in lumas], axis=0) for period in periods}


def detect(pixels: np.ndarray, key: str) -> Detection:
    """Look for a mark made with `key` in an RGB uint8 HxWx3 image."""
    return detect_frames([pixels], key)
