"""Chunked decode of a video VAE (diffusers' AutoencoderKLWan): one latent frame at a
time, the causal convolution cache carried from chunk to chunk, each chunk's pixel
frames handed on as soon as they exist (the first latent frame makes 1 frame, each
later one `scale_factor_temporal` frames), so they can be copied and written while the
next chunk decodes. The steps are diffusers' own `AutoencoderKLWan._decode`, opened
up; the cache is this object's, not the model's, so two clips decoding with one
loaded model (a farm worker with two tasks in flight) keep apart.
The clip's last latent frame can run frame by frame after the decoder's last temporal
upsampling (`step_frames`): nothing follows it, so its frames would otherwise reach the
writers all at once, after the GPU's last work, and the clip would end with all of them
encoding together; one at a time, the first are written while the last decodes.
tests/test_wan_chunks.py checks the result equals diffusers' whole-clip decode, so a
diffusers release that changes the decoder's calling convention fails there.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

VIDEO_VAES = ("AutoencoderKLWan",)
Cache = list   # per causal convolution: None, diffusers' "Rep" marker, or a tensor


def cached_causal(conv: torch.nn.Module, x: torch.Tensor, cache: Cache, index: list[int]) -> torch.Tensor:
    """One cached causal convolution, as WanDecoder3d.forward runs conv_in and conv_out."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import CACHE_T

    i = index[0]
    keep = x[:, :, -CACHE_T:].clone()
    if keep.shape[2] < 2 and cache[i] is not None:   # one new frame: keep the last cached one too
        keep = torch.cat([cache[i][:, :, -1:].to(keep.device), keep], dim=2)
    out = conv(x, cache[i])
    cache[i] = keep
    index[0] += 1
    return out


def frame_wise_from(decoder: torch.nn.Module) -> int:
    """The first up block after the decoder's last change of frame count (a temporal
    upsampling): from there on each frame is computed on its own, its causal
    convolutions reading the frames before it from the cache."""
    start = 0
    for i, block in enumerate(decoder.up_blocks):
        if any(hasattr(m, "time_conv") or getattr(m, "factor_t", 1) > 1 for m in block.modules()):
            start = i + 1
    return start


class ClipDecoder:
    def __init__(self, vae: torch.nn.Module) -> None:
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

    def step_frames(self, latent_frame: torch.Tensor) -> Iterator[torch.Tensor]:
        """`step` for a latent frame after the first, yielding its (1, 3, 1, H, W) pixel
        frames one by one: the up blocks from `frame_wise_from` on and the output
        convolutions run per frame, so on a GPU each frame's work is queued (and can be
        marked done) before the next one's. The same arithmetic as `step`."""
        from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

        if self.cache is None:
            raise RuntimeError("a clip's first chunk must be decoded first")
        decoder, cache, index = self.vae.decoder, self.cache, [0]
        split = frame_wise_from(decoder)
        x = cached_causal(decoder.conv_in, self.vae.post_quant_conv(latent_frame), cache, index)
        x = decoder.mid_block(x, feat_cache=cache, feat_idx=index)
        for block in decoder.up_blocks[:split]:
            x = block(x, feat_cache=cache, feat_idx=index, first_chunk=False)
        start = index[0]
        for t in range(x.shape[2]):
            index = [start]   # every frame meets the same convolutions, each its own cache slot
            y = x[:, :, t:t + 1]
            for block in decoder.up_blocks[split:]:
                y = block(y, feat_cache=cache, feat_idx=index, first_chunk=False)
            y = cached_causal(decoder.conv_out, decoder.nonlinearity(decoder.norm_out(y)), cache, index)
            if self.vae.config.patch_size is not None:
                y = unpatchify(y, patch_size=self.vae.config.patch_size)
            yield y.clamp(-1.0, 1.0)

    def finish(self) -> None:
        self.cache = None  # the cache holds a few frames of activations: give them back


def decode_chunks(vae: torch.nn.Module, latents: torch.Tensor) -> Iterator[torch.Tensor]:
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
