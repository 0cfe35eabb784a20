"""The decoded image as the bytes its file needs, made on the device so the copy to
the host moves nothing more."""

from __future__ import annotations

import torch


def quantise_hwc(image: torch.Tensor, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """(3, H, W) in [-1, 1], any float dtype -> (H, W, 3) of `dtype`: uint8 or uint16
    rounded to their full range, or float16 in [0, 1]."""
    unit = (image.float() * 0.5 + 0.5).clamp_(0, 1)
    if dtype.is_floating_point:
        quantised = unit.to(dtype)
    else:
        top = 255 if dtype == torch.uint8 else 65535
        quantised = unit.mul_(top).round_().to(dtype)
    return quantised.permute(1, 2, 0).contiguous()
