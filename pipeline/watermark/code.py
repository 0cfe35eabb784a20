"""Payload text <-> the 128 bits a tile carries: 8 bytes of UTF-8 and 64 bits of
BCH parity (bchlib, the Linux kernel's BCH over GF(2^8), t = 8).

BCH rather than Reed-Solomon: each code bit rides on its own frequency, so the channel
makes independent bit errors, which BCH corrects one by one (any 8 of 128), while RS
spends a whole byte on each. Measured on this channel model (benchmarks/RESULTS.md):
at 6 bit errors in 128 RS(16, 8) with erasures recovered 52 % and miscorrected 48 %,
BCH with Chase decoding recovers nearly all. Soft decisions enter by Chase decoding:
the CHASE_BITS least reliable bits are flipped in every combination and the decoded
candidate that agrees best with the soft values wins."""

from __future__ import annotations

from itertools import combinations

import bchlib
import numpy as np

PAYLOAD_BYTES = 8
_BCH = bchlib.BCH(8, m=8)
BITS = (PAYLOAD_BYTES + _BCH.ecc_bytes) * 8
CHASE_BITS = 4


class BadPayload(ValueError):
    """The payload text cannot be carried (too long)."""


def payload_bytes(payload: str) -> bytes:
    data = payload.encode()
    if len(data) > PAYLOAD_BYTES:
        raise BadPayload(f"is {len(data)} bytes of UTF-8; at most {PAYLOAD_BYTES}")
    return data.ljust(PAYLOAD_BYTES, b"\0")


def encode(payload: str) -> np.ndarray:
    """The codeword as BITS values of +1/-1."""
    data = payload_bytes(payload)
    codeword = data + bytes(_BCH.encode(data))
    return np.unpackbits(np.frombuffer(codeword, dtype=np.uint8)).astype(np.int8) * 2 - 1


def _correct(bits: np.ndarray) -> np.ndarray | None:
    word = bytearray(np.packbits(bits > 0).tobytes())
    data, ecc = word[:PAYLOAD_BYTES], word[PAYLOAD_BYTES:]
    if _BCH.decode(bytes(data), bytes(ecc)) < 0:
        return None
    _BCH.correct(data, ecc)
    return np.unpackbits(np.frombuffer(bytes(data + ecc), dtype=np.uint8)).astype(np.float64) * 2 - 1


def decode(soft: np.ndarray) -> bytes | None:
    """The 8 payload bytes from BITS soft values (sign = bit, size = confidence), or None
    when no codeword is within reach."""
    weakest = np.argsort(np.abs(soft))[:CHASE_BITS]
    best, best_agreement = None, -np.inf
    for count in range(CHASE_BITS + 1):
        for flipped in combinations(weakest, count):
            trial = np.where(soft > 0, 1.0, -1.0)
            trial[list(flipped)] *= -1
            corrected = _correct(trial)
            if corrected is not None and float(corrected @ soft) > best_agreement:
                best, best_agreement = corrected, float(corrected @ soft)
    if best is None:
        return None
    return np.packbits(best[:PAYLOAD_BYTES * 8] > 0).tobytes()
