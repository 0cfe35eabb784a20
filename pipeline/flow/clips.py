"""A video VAE's clip as the items that travel to decode: one latent frame at a time,
with the shot frames it decodes to."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from pipeline.config.seeds import frame_seed
from pipeline.decode.video.chunks import chunk_frames
from pipeline.flow.frames import ClipChunk


def clip_chunks(clip: torch.Tensor, frames: list[int], job_seed: int, temporal_scale: int) -> Iterator[ClipChunk]:
    """A (C, T, h, w) clip as its latent frames, each with the shot frames it decodes to."""
    for index in range(clip.shape[1]):
        numbers = tuple(frames[i] for i in chunk_frames(index, temporal_scale))
        yield ClipChunk(index, numbers, tuple(frame_seed(job_seed, f) for f in numbers),
                        clip[:, index:index + 1], index == clip.shape[1] - 1)
