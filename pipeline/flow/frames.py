"""What flows between the stages: one frame at each step of its way to disk."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from pipeline.gpu.device import Event


@dataclass
class LatentFrame:
    """Source -> decode: latents in host memory, as the pipeline that made them left them."""
    frame: int
    seed: int
    latents: torch.Tensor          # (C, h, w)


@dataclass
class ClipChunk:
    """Source -> decode, for a video VAE: one latent frame of the shot's clip and the
    pixel frames it decodes to (1 for the first, `temporal_scale` after it)."""
    index: int                     # latent frame in the clip; 0 starts the causal cache
    frames: tuple[int, ...]        # shot frame numbers it decodes to
    seeds: tuple[int, ...]
    latents: torch.Tensor          # (C, 1, h, w)
    last: bool                     # the clip's last latent frame: the cache can go

    @property
    def frame(self) -> int:        # for error messages: "failed on frame N"
        return self.frames[0]


@dataclass
class DeviceFrame:
    """Decode -> watermark -> transfer: final pixels on the device, valid once `ready` passes."""
    frame: int
    seed: int
    pixels: torch.Tensor           # (H, W, 3) on the device: uint8, uint16 or float16
    ready: Event
    verdict: torch.Tensor | None = None   # on the device, from decode: quality.OK or what is wrong


@dataclass
class HostFrame:
    """Transfer -> write: pixels in a ring slot, which the writers give back when done."""
    frame: int
    seed: int
    slot: int
    pixels: np.ndarray             # (H, W, 3) view of the ring slot, the frame format's dtype
    planes: dict[str, np.ndarray] = field(default_factory=dict)   # pixel format -> Y'CbCr planes (ycbcr.py)
