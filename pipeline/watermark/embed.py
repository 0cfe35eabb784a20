"""Adding the mark to a frame, on whatever device the frame lives (the GPU's
low-priority stream in a run): a few elementwise kernels and two small poolings.

Perceptual masking: the pattern is scaled by the frame's local activity (mean absolute
high-pass of luma over 8x8 blocks), so busy areas, where noise hides, get the full
strength and flat areas (skies, gradients) as little as MASK_FLOOR of it. The same
offset goes to R, G and B: a change of luminance only."""

from __future__ import annotations

import torch
import torch.nn.functional as F

ACTIVITY_FULL = 1.0   # grey levels of local activity at which the full strength applies
MASK_FLOOR = 0.5      # share of the strength that flat areas keep
BLOCK = 8


def masking(luma: torch.Tensor) -> torch.Tensor:
    """HxW luma in grey levels -> HxW scale in [MASK_FLOOR, 1]."""
    image = luma[None, None]
    detail = (image - F.avg_pool2d(image, 3, 1, 1, count_include_pad=False)).abs_()
    activity = F.avg_pool2d(detail, BLOCK, BLOCK, ceil_mode=True)
    scale = (activity / ACTIVITY_FULL).clamp_(MASK_FLOOR, 1.0)
    height, width = luma.shape
    return F.interpolate(scale, scale_factor=BLOCK, mode="nearest")[0, 0, :height, :width]


def embed(pixels: torch.Tensor, offsets: torch.Tensor) -> None:
    """Add `offsets` (HxW float, grey levels of 255, on pixels' device), masked, to HxWx3
    `pixels` in place: uint8, uint16 (steps scaled by 257) or float in [0, 1]."""
    unit = {torch.uint8: 1.0, torch.uint16: 257.0}.get(pixels.dtype, 1 / 255)
    # uint16 through int32: CUDA's uint16 kernels cover copies between integer types only
    rgb = (pixels.to(torch.int32) if pixels.dtype == torch.uint16 else pixels).float()
    luma = (rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114) / unit
    mark = (offsets.float() * masking(luma) * unit)[..., None]
    if pixels.dtype == torch.uint8:
        pixels.copy_((rgb + mark).round_().clamp_(0, 255))
    elif pixels.dtype == torch.uint16:
        pixels.copy_((rgb + mark).round_().clamp_(0, 65535).to(torch.int32))
    else:   # display-referred values stay in 0..1; those a [colour] transform put outside
        # it (scene-linear highlights, wide-gamut negatives) keep their value, marked
        pixels.copy_((rgb + mark).clamp_(torch.clamp(rgb, max=0), torch.clamp(rgb, min=1)))
