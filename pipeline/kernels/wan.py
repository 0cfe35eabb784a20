"""Leaner forwards for the memory-bound parts of diffusers' Wan VAE decoder.

Most of a Wan decode's time is memory traffic, not convolution (the profile in
benchmarks/RESULTS.md, 'Micro-task decode'): each causal convolution copied its input twice (`torch.cat` with the cache, then `F.pad` for the spatial border); each
RMS norm made seven passes, three of them over a float32 copy; each upsample converted
to float32 and back. The same arithmetic with fewer passes:

- convolution: the spatial border is the convolution's own padding (cuDNN reads it as
  zeros, no copy); the causal time padding is one `cat` of zeros and/or the cache;
- RMS norm: the channel norm accumulated in float32 straight from the input
  (`vector_norm(dtype=float32)`, one read), then two multiplies;
- nearest upsampling in the input's dtype (value selection: bit-identical).

Installed per module instance (the forward attribute), so diffusers' classes stay
untouched for every other model in the process; the weights are the same objects.
tests/test_wan_fast.py checks the decode against diffusers' own forwards.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F


def causal_conv_forward(self, x: torch.Tensor, cache_x: torch.Tensor | None = None) -> torch.Tensor:
    pad_w, _, pad_h, _, pad_t, _ = self._padding   # diffusers': (w, w, h, h, 2*t, 0)
    if pad_t > 0:
        parts = [x]
        if cache_x is not None:
            parts.insert(0, cache_x.to(x.device))
            pad_t -= cache_x.shape[2]
        if pad_t > 0:
            parts.insert(0, x.new_zeros((x.shape[0], x.shape[1], pad_t, *x.shape[3:])))
        x = torch.cat(parts, dim=2) if len(parts) > 1 else x
        if pad_t < 0:   # more cached frames than the kernel needs: F.pad's negative pad crops
            x = x[:, :, -pad_t:]
    return F.conv3d(x, self.weight, self.bias, self.stride, (0, pad_h, pad_w), self.dilation, self.groups)


def rms_norm_forward(self, x: torch.Tensor) -> torch.Tensor:
    dim = 1 if self.channel_first else -1
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=torch.float32)
    # F.normalize's guard: x / max(|x|, 1e-12)
    factor = (self.scale / norm.clamp_min(1e-12)).to(x.dtype)
    out = (x * self.gamma).mul_(factor)
    if isinstance(self.bias, torch.Tensor):
        out = out.add_(self.bias)
    return out


def upsample_forward(self, x: torch.Tensor) -> torch.Tensor:
    if self.mode not in ("nearest", "nearest-exact"):   # interpolating modes keep float32
        return type(self).forward(self, x)
    return F.interpolate(x, self.size, self.scale_factor, self.mode, self.align_corners,
                         recompute_scale_factor=self.recompute_scale_factor)


def use_lean_wan_forwards(vae: torch.nn.Module) -> int:
    """Give every causal convolution, RMS norm and upsample of a Wan VAE the leaner
    forward; returns how many modules changed (0 for any other model)."""
    if type(vae).__name__ != "AutoencoderKLWan":
        return 0
    from diffusers.models.autoencoders import autoencoder_kl_wan as wan

    lean = ((wan.WanCausalConv3d, causal_conv_forward), (wan.WanRMS_norm, rms_norm_forward),
            (wan.WanUpsample, upsample_forward))
    changed = 0
    for module in vae.modules():
        for cls, forward in lean:
            if type(module) is cls:
                module.forward = types.MethodType(forward, module)
                changed += 1
    return changed
