"""The watermark on its own: found with its key and payload, absent otherwise."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.watermark import spread_spectrum as watermark


def picture(height: int = 180, width: int = 320) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    sun = ((x - 200) ** 2 + (y - 60) ** 2 < 900) * 120
    channels = [x * 255 // width, y * 255 // height, (x + y) % 200 + sun]
    return np.stack(channels, -1).clip(0, 255).astype(np.uint8)


def marked(image: np.ndarray, key: str, payload: str) -> np.ndarray:
    tensor = torch.from_numpy(image.copy())
    offsets = torch.from_numpy(watermark.pattern(key, payload, *image.shape[:2]))[..., None]
    watermark.embed(tensor, offsets)
    return tensor.numpy()


def test_round_trip() -> None:
    found = watermark.detect(marked(picture(), "k1", "SHOT-7"), "k1")
    assert found.found and found.payload == "SHOT-7" and found.score > watermark.MIN_SCORE


def test_unmarked_and_wrong_key_are_absent() -> None:
    assert not watermark.detect(picture(), "k1").found
    assert not watermark.detect(marked(picture(), "k1", "SHOT-7"), "k2").found


def test_mark_is_small_and_luminance_only() -> None:
    image = picture()
    difference = marked(image, "k1", "x").astype(int) - image.astype(int)
    assert np.abs(difference).max() <= watermark.STRENGTH
    unclipped = (image > 2).all(-1) & (image < 253).all(-1)
    channels = difference[unclipped]
    assert (channels[:, 0] == channels[:, 1]).all() and (channels[:, 1] == channels[:, 2]).all()
