"""A baked 3D LUT applied on the device: trilinear interpolation with grid_sample, the
frame's (r, g, b) in [0, 1] as the coordinates into a (3, N, N, N) lattice."""

from __future__ import annotations

import torch


def apply_lut(unit: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """(3, H, W) float32 in [0, 1] -> (3, H, W) float32, through `lut` (3, N, N, N) [c, b, g, r]."""
    _, height, width = unit.shape
    grid = unit.permute(1, 2, 0).reshape(1, 1, height, width, 3) * 2 - 1   # x = r, y = g, z = b
    out = torch.nn.functional.grid_sample(lut[None], grid, mode="bilinear", padding_mode="border",
                                          align_corners=True)
    return out.reshape(3, height, width)
