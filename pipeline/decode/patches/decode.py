"""One rank's part of a patch-parallel decode: its band of the latent's rows through a
decoder patched for bands (`layers`), the decoded bands gathered on rank 0.

Every rank is given the whole latent (it is small: a 7680x4320 frame's is 4x540x960)
and takes its own rows; rank 0 gets the whole image back, the other ranks None. The
clip decode is `ClipDecoder`'s, each rank's causal cache holding its band's past.
"""

from __future__ import annotations

from typing import Any

import torch

from pipeline.decode.patches.layers import patch_decoder
from pipeline.decode.patches.rows import RowSplit, rows_to_first
from pipeline.decode.video.chunks import ClipDecoder


def _check_height(height: int, split: RowSplit) -> None:
    if height < split.world:
        raise ValueError(f"{height} latent rows cannot be split across {split.world} ranks")


class BandFrame:
    """An image VAE's frame decode, this rank's band of it: (C, h, w) latents, already
    scaled for the VAE -> (3, H, W) image in [-1, 1] on rank 0, None elsewhere."""

    def __init__(self, vae: Any, split: RowSplit) -> None:
        patch_decoder(vae, split)
        self.vae, self.split = vae, split

    def __call__(self, latents: torch.Tensor) -> torch.Tensor | None:
        _check_height(latents.shape[-2], self.split)
        start, stop = self.split.bounds(latents.shape[-2])
        band = self.vae.decode(latents[None, :, start:stop]).sample[0]
        return rows_to_first(band, self.split)


class BandClip:
    """A video VAE's chunked decode (ClipDecoder's `step` and `finish`), this rank's band."""

    def __init__(self, vae: Any, split: RowSplit) -> None:
        patch_decoder(vae, split)
        self.clip = ClipDecoder(vae)
        self.split = split

    def step(self, latent_frame: torch.Tensor, first: bool) -> torch.Tensor | None:
        """(1, C, 1, h, w) denormalised latents -> (1, 3, t, H, W) frames on rank 0, None elsewhere."""
        _check_height(latent_frame.shape[-2], self.split)
        start, stop = self.split.bounds(latent_frame.shape[-2])
        band = self.clip.step(latent_frame[..., start:stop, :], first)
        return rows_to_first(band, self.split)

    def finish(self) -> None:
        self.clip.finish()


def band_decoder(vae: Any, split: RowSplit) -> BandFrame | BandClip:
    return BandClip(vae, split) if type(vae).__name__ == "AutoencoderKLWan" else BandFrame(vae, split)
