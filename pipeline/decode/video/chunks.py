"""Chunked decode of a video VAE (diffusers' AutoencoderKLWan): one latent frame at a
time, the causal convolution cache carried from chunk to chunk, each chunk's pixel
frames handed on as soon as they exist (the first latent frame makes 1 frame, each
later one `scale_factor_temporal` frames), so they can be copied and written while the
next chunk decodes. The steps are diffusers' own `AutoencoderKLWan._decode`, opened
up; the cache is this object's, not the model's, so two clips decoding with one
loaded model (a farm worker with two tasks in flight) keep apart.
tests/test_wan_chunks.py checks the result equals diffusers' whole-clip decode, so a
diffusers release that changes the decoder's calling convention fails there.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from pipeline.models.vae import Vae


class ClipDecoder:
    def __init__(self, vae: Vae) -> None:
        from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

        self.vae = vae
        self.convs = sum(isinstance(m, WanCausalConv3d) for m in vae.decoder.modules())
        self.cache: list | None = None

    def step(self, latent_frame: torch.Tensor, first: bool) -> torch.Tensor:
        """(1, C, 1, h, w) denormalised latents of the clip's next latent frame (`first`
        starts a clip) -> (1, 3, t, H, W) pixel frames in [-1, 1]."""
        from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

        if first:
            self.cache = [None] * self.convs
        if self.cache is None:
            raise RuntimeError("a clip's first chunk must be decoded first")
        x = self.vae.post_quant_conv(latent_frame)   # 1x1x1: the same frame by frame as whole
        out = self.vae.decoder(x, feat_cache=self.cache, feat_idx=[0], first_chunk=first)
        if self.vae.config.patch_size is not None:
            out = unpatchify(out, patch_size=self.vae.config.patch_size)
        return out.clamp(-1.0, 1.0)

    def finish(self) -> None:
        self.cache = None  # the cache holds a few frames of activations: give them back

    def statistics(self) -> dict[str, int]:
        return {}


def decode_chunks(vae: Vae, latents: torch.Tensor) -> Iterator[torch.Tensor]:
    """(1, C, T, h, w) denormalised latents -> (1, 3, t, H, W) pixel chunks in [-1, 1]."""
    clip = ClipDecoder(vae)
    try:
        for index in range(latents.shape[2]):
            yield clip.step(latents[:, :, index:index + 1], first=index == 0)
    finally:
        clip.finish()


def frames_for(latent_frames: int, temporal_scale: int) -> int:
    """Pixel frames a clip of `latent_frames` decodes to: 1 + scale * (T - 1)."""
    return 1 + temporal_scale * (latent_frames - 1)


def chunk_frames(index: int, temporal_scale: int) -> range:
    """Positions (from 0) of the pixel frames latent frame `index` decodes to."""
    if index == 0:
        return range(0, 1)
    return range(1 + temporal_scale * (index - 1), 1 + temporal_scale * index)
