"""Nearest 2x upsampling then a 3x3 convolution (diffusers' Upsample2D) as one transposed
convolution of the low-resolution input.

Output pixel (2i + py, 2j + px) of conv3x3(upsample(x)) sees upsampled rows 2i + py - 1 ..
2i + py + 1, which are low-resolution rows i - 1, i, i (py = 0) or i, i, i + 1 (py = 1), and
likewise for columns. So each output parity is a 2x2 convolution of x with taps summed
from the 3x3 kernel:
    py = 0: row i - 1 takes w[0], row i takes w[1] + w[2]
    py = 1: row i takes w[0] + w[1], row i + 1 takes w[2]
A transposed convolution with stride 2, padding 1 and a 4x4 kernel computes exactly
those four 2x2 convolutions and writes them interleaved: with output row o = 2i + k - 1,
its taps k = 0..3 are w[2], w[1] + w[2], w[0] + w[1], w[0]. That is 4 multiply-adds per
output and input channel instead of 9, the 4x larger upsampled tensor is never made, and
cuDNN writes the result in the input's memory format in one kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# TAPS[k, a]: whether row a of the 3x3 kernel feeds tap k of the transposed kernel
TAPS = torch.tensor([[0, 0, 1], [0, 1, 1], [1, 1, 0], [1, 0, 0]], dtype=torch.float64)


def transposed_weights(weight: torch.Tensor) -> torch.Tensor:
    """(Co, Ci, 3, 3) kernel -> the (Ci, Co, 4, 4) kernel of the transposed convolution.
    Taps are summed in float32 (float64 for float64 weights) and rounded once to the
    weight's dtype: each is the correctly rounded sum of up to four 3x3 taps, 2^-9
    relatively in bfloat16 (keeping float32 would need a float32 convolution, which costs
    far more than that one rounding)."""
    compute = torch.float64 if weight.dtype == torch.float64 else torch.float32
    taps = TAPS.to(weight.device, compute)
    return torch.einsum("ka,lb,oiab->iokl", taps, taps, weight.to(compute)).to(weight.dtype)


def upsample2x_conv3x3(x: torch.Tensor, weight4: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """conv2d(interpolate(x, scale_factor=2, mode="nearest"), w, bias, padding=1) for
    (B, Ci, H, W) `x`, with weight4 = transposed_weights(w): (B, Co, 2H, 2W)."""
    return F.conv_transpose2d(x, weight4, bias, stride=2, padding=1)


class UpsampleWeights:
    """A convolution's transposed kernel, made once and made again only when its weight
    changes (a model cast to another dtype or moved after the forwards were installed).
    Channels-last, the layout cuDNN's fast kernels read."""

    def __init__(self) -> None:
        self._key: tuple[int, torch.dtype, torch.device] | None = None
        self._weight4: torch.Tensor | None = None

    def of(self, weight: torch.Tensor) -> torch.Tensor:
        key = (weight.data_ptr(), weight.dtype, weight.device)
        if self._weight4 is None or key != self._key:
            with torch.no_grad():
                self._weight4 = transposed_weights(weight).contiguous(memory_format=torch.channels_last)
            self._key = key
        return self._weight4
