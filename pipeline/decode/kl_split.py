"""An AutoencoderKL decoder cut in two for the micro-task decode.

The head (post-quant conv, conv_in and the mid block, whose attention spans the whole
frame) runs on the whole frame at latent resolution, where it is small: 512 channels
at 270x480 cells is 133 MB a tensor for a 3840x2160 frame in bf16. Only the tail (the
up blocks and the output convs, where the resolution grows 64-fold) is tiled; with
`whole_up_blocks` the first up blocks' resnets join the head. Tiling
the whole decoder would give each tile its own attention over its own cells, which no
blending can undo: on a random SD-class VAE (CPU, float32, 384x512), 24-cell tiles
with overlap 8 and whole-frame GroupNorm statistics measured 32.9 dB against untiled
decode tiled whole and 38.5 dB cut here (40.6 dB with overlap 12). This follows diffusers' own
`Decoder.forward` step by step (tests/test_tiled_decode.py checks head then tail
equals `vae.decode` exactly), so it is offered only for the decoder it knows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from pipeline.models.vae import Vae


@dataclass(frozen=True)
class SplitDecoder:
    head: Callable[[torch.Tensor], torch.Tensor]   # (B, C, h, w) latents -> (B, F, h*f, w*f) features
    tail: Callable[[torch.Tensor], torch.Tensor]   # features -> (B, 3, h*s, w*s) images
    tail_modules: torch.nn.Module                  # where the tiled GroupNorm layers live
    feature_scale: int                             # f: feature cells per latent cell, per axis


def split_decoder(vae: Vae, whole_up_blocks: int = 0) -> SplitDecoder | None:
    """The cut for a diffusers AutoencoderKL; None for any other VAE (tiled whole).

    `whole_up_blocks` = k > 0 moves the resnets of the first k up blocks into the head
    (and the upsamplers between them): their features are at most 2**(k-1) times the
    latent size a side, and the tiles then start later, with a smaller receptive
    field to lose at their edges and fewer GroupNorm layers that see only a tile."""
    if type(vae).__name__ != "AutoencoderKL":
        return None
    decoder = vae.decoder
    if not all(hasattr(decoder, name) for name in ("conv_in", "mid_block", "up_blocks", "conv_norm_out")):
        return None
    k = max(0, min(whole_up_blocks, len(decoder.up_blocks)))
    upscale_dtype = next(iter(decoder.up_blocks.parameters())).dtype

    def run_block(block: Any, x: torch.Tensor, resnets: bool, upsample: bool) -> torch.Tensor:
        if resnets:
            for resnet in block.resnets:
                x = resnet(x, None)
        if upsample and block.upsamplers is not None:
            for upsampler in block.upsamplers:
                x = upsampler(x)
        return x

    def head(latents: torch.Tensor) -> torch.Tensor:
        if vae.post_quant_conv is not None:
            latents = vae.post_quant_conv(latents)
        x = decoder.mid_block(decoder.conv_in(latents), None)
        if k == 0:
            return x
        x = x.to(upscale_dtype)
        for i in range(k):
            x = run_block(decoder.up_blocks[i], x, resnets=True, upsample=i < k - 1)
        return x

    def tail(features: torch.Tensor) -> torch.Tensor:
        x = features.to(upscale_dtype)
        if k > 0:
            x = run_block(decoder.up_blocks[k - 1], x, resnets=False, upsample=True)
        for block in decoder.up_blocks[k:]:
            x = block(x, None)
        return decoder.conv_out(decoder.conv_act(decoder.conv_norm_out(x)))

    upsamples = sum(block.upsamplers is not None for block in decoder.up_blocks[:max(0, k - 1)])
    tail_modules = torch.nn.ModuleList([*decoder.up_blocks[k:], decoder.conv_norm_out])
    return SplitDecoder(head, tail, tail_modules, 2 ** upsamples)
