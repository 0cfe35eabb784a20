"""Chunked decode of a video VAE (diffusers' AutoencoderKLWan): one latent frame at a
time, the causal convolution cache carried from chunk to chunk, each chunk's pixel
frames handed on as soon as they exist (the first latent frame makes 1 frame, each
later one `scale_factor_temporal` frames), so they can be copied and written while the
next chunk decodes. The loop is diffusers' own `AutoencoderKLWan._decode`, opened up;
it uses the model's cache attributes (`clear_cache`, `_feat_map`, `_conv_idx`), so a
diffusers release that renames them fails the equality test in
tests/test_wan_chunks.py rather than decoding wrongly.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


def decode_chunks(vae: torch.nn.Module, latents: torch.Tensor) -> Iterator[torch.Tensor]:
    """(1, C, T, h, w) normalised latents -> (1, 3, t, H, W) pixel chunks in [-1, 1]."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

    vae.clear_cache()
    try:
        hidden = vae.post_quant_conv(latents)
        for index in range(latents.shape[2]):
            vae._conv_idx = [0]
            out = vae.decoder(hidden[:, :, index:index + 1], feat_cache=vae._feat_map,
                              feat_idx=vae._conv_idx, first_chunk=index == 0)
            if vae.config.patch_size is not None:
                out = unpatchify(out, patch_size=vae.config.patch_size)
            yield out.clamp(-1.0, 1.0)
    finally:
        vae.clear_cache()


def frames_for(latent_frames: int, temporal_scale: int) -> int:
    """Pixel frames a clip of `latent_frames` decodes to: 1 + scale * (T - 1)."""
    return 1 + temporal_scale * (latent_frames - 1)
