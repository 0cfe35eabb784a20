"""Per-frame seeds: a pure function of (job seed, frame index).

A frame rendered alone, resumed, or on another worker gets the same seed, and so the
same picture. SHA-256 rather than `hash()`, which Python salts per process.
"""

from __future__ import annotations

import hashlib


def frame_seed(job_seed: int, frame: int) -> int:
    digest = hashlib.sha256(f"framefarm:{job_seed}:{frame}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)
