"""The decoded image as the bytes its file needs, made on the device so the copy to
the host moves nothing more; and a verdict on it, also made on the device (reading it
there would stall the stream), read by the host once the frame is copied."""

from __future__ import annotations

import torch

from pipeline.colour.lut import apply_lut


def quantise_hwc(image: torch.Tensor, dtype: torch.dtype = torch.uint8,
                 colour_lut: torch.Tensor | None = None) -> torch.Tensor:
    """(3, H, W) in [-1, 1], any float dtype -> (H, W, 3) of `dtype`: uint8 or uint16
    rounded to their full range, or float16 in [0, 1]; through the job's colour
    transform first when it has one (float16 then keeps what the transform gives,
    beyond [0, 1] too: wide-gamut and linear values are what EXR is for)."""
    unit = (image.float() * 0.5 + 0.5).clamp_(0, 1)
    if colour_lut is not None:
        unit = apply_lut(unit, colour_lut)
    if dtype.is_floating_point:
        quantised = unit.to(dtype)
    else:
        top = 255 if dtype == torch.uint8 else 65535
        quantised = unit.clamp_(0, 1).mul_(top).round_().to(dtype)
    return quantised.permute(1, 2, 0).contiguous()


OK, NOT_FINITE, CONSTANT = 0, 1, 2
VERDICTS = {NOT_FINITE: "decoded to NaN or infinite values", CONSTANT: "decoded to a picture of one colour"}


def verdict(image: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """A 0-d int8 tensor on the image's device: OK, NOT_FINITE (the image), or CONSTANT
    (the quantised pixels): what bad latents or a wrong scaling factor decode to, which
    would otherwise be published as a frame."""
    finite = torch.isfinite(image).all()
    # Not amax/amin: CPU torch has no max over uint16 (the png16 format's pixels).
    varied = (pixels != pixels.reshape(-1)[0]).any()
    return torch.where(finite, torch.where(varied, OK, CONSTANT), NOT_FINITE).to(torch.int8)
