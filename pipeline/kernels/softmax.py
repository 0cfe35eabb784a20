"""softmax(scale * logits) from float32 logits straight to a 16-bit result, one kernel.

The whole-frame attention (`attention`) keeps its logits in float32. In eager
PyTorch the scale, the softmax and the cast to bfloat16 are three kernels with a
float32 tensor between each (at 3840x2160, ~370 GB of traffic). This Triton kernel
reads each row twice (an online max and sum, then the result) and writes the 16-bit
result once: under half the traffic. Triton comes with PyTorch's CUDA builds; where
it is missing or cannot compile (no C compiler for its launcher), the eager three kernels run instead, and
once a compile has failed it is not tried again in this process.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only PyTorch builds come without Triton
    triton = None

_broken: list[str] = []   # why the kernel cannot run here, once found out

if triton is not None:
    @triton.jit
    def _scaled_softmax_rows(src_ptr, dst_ptr, n_cols, src_stride, dst_stride, scale,
                             BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        src = src_ptr + row * src_stride
        dst = dst_ptr + row * dst_stride
        offsets = tl.arange(0, BLOCK)
        running_max = tl.full([BLOCK], float("-inf"), tl.float32)
        running_sum = tl.zeros([BLOCK], tl.float32)
        for start in range(0, n_cols, BLOCK):
            cols = start + offsets
            x = tl.load(src + cols, mask=cols < n_cols, other=float("-inf")).to(tl.float32) * scale
            new_max = tl.maximum(running_max, x)
            # a lane that has seen only -inf keeps a sum of 0 (exp(-inf - -inf) is nan)
            shift = tl.where(new_max == float("-inf"), 0.0, new_max)
            running_sum = running_sum * tl.exp(running_max - shift) + tl.exp(x - shift)
            running_max = new_max
        row_max = tl.max(running_max, 0)
        inverse = 1.0 / tl.sum(running_sum * tl.exp(running_max - row_max), 0)
        for start in range(0, n_cols, BLOCK):
            cols = start + offsets
            x = tl.load(src + cols, mask=cols < n_cols, other=float("-inf")).to(tl.float32) * scale
            y = tl.exp(x - row_max) * inverse
            tl.store(dst + cols, y.to(dst_ptr.dtype.element_ty), mask=cols < n_cols)


def eager_scaled_softmax(logits: torch.Tensor, scale: float, dtype: torch.dtype) -> torch.Tensor:
    return torch.softmax(logits.mul_(scale), dim=-1).to(dtype)


def scaled_softmax(logits: torch.Tensor, scale: float, dtype: torch.dtype) -> torch.Tensor:
    """softmax(scale * logits) over the last axis, as `dtype`; `logits` may be overwritten."""
    if triton is None or _broken or not logits.is_cuda or logits.dtype != torch.float32 or logits.numel() == 0:
        return eager_scaled_softmax(logits, scale, dtype)
    rows = logits.reshape(-1, logits.shape[-1])
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    out = torch.empty(rows.shape, dtype=dtype, device=logits.device)
    try:
        with torch.cuda.device(logits.device):
            _scaled_softmax_rows[(rows.shape[0],)](rows, out, rows.shape[1], rows.stride(0), out.stride(0),
                                                   float(scale), BLOCK=2048, num_warps=8)
    except Exception as err:  # Triton's compile errors have no common base class
        _broken.append(f"{type(err).__name__}: {err}")
        log.warning("fused softmax unavailable, using PyTorch's kernels: %s", _broken[0].splitlines()[0])
        return eager_scaled_softmax(logits, scale, dtype)
    return out.reshape(logits.shape)
