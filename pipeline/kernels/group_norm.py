"""GroupNorm layers that can fuse the SiLU after them, with their statistics separable
from the normalisation (a tiled decode normalises tiles with a frame's statistics).

On CUDA, two Triton passes (`group_norm_triton`): one read for the statistics, spread
over many programs per group (PyTorch's kernel reduces each (sample, group) in one
thread block: at 3840x2160 most of the GPU waited, benchmarks/RESULTS.md, 'Micro-task
decode'), then one read and one write for the normalised (and SiLU'd) result, in the
input's memory format, NCHW or channels-last. On the CPU, PyTorch's own kernels.
Where Triton is missing or cannot compile, the CUDA path falls back to PyTorch's
reductions and one batch-norm pass, once and for the rest of the process.
"""

from __future__ import annotations

import logging
import types

import torch
import torch.nn.functional as F

try:
    from pipeline.kernels import group_norm_triton as triton_kernels
except ImportError:  # CPU-only PyTorch builds come without Triton
    triton_kernels = None  # type: ignore[assignment]

log = logging.getLogger(__name__)
_broken: list[str] = []   # why the Triton kernels cannot run here, once found out


def _use_triton(x: torch.Tensor) -> bool:
    return x.is_cuda and triton_kernels is not None and not _broken


def _give_up_on_triton(err: Exception) -> None:
    _broken.append(f"{type(err).__name__}: {err}")
    log.warning("Triton GroupNorm unavailable, using PyTorch's kernels: %s", _broken[0].splitlines()[0])


def group_statistics(x: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, G) float32 mean and (biased) variance of (B, C, ...) `x` per group of channels."""
    if _use_triton(x):
        try:
            return triton_kernels.group_statistics(x, groups)
        except Exception as err:  # Triton's compile errors have no common base class
            _give_up_on_triton(err)
    # E[x²] - E[x]² in float32: it loses digits only where a group's mean is thousands
    # of times its spread, which a decoder's activations are not
    grouped = x.reshape(x.shape[0], groups, -1)
    count = grouped.shape[-1]
    mean = grouped.sum(-1, dtype=torch.float32) / count
    square = torch.linalg.vector_norm(grouped, dim=-1, dtype=torch.float32).square() / count
    return mean, (square - mean.square()).clamp_min(0.0)


def merge_statistics(counts: torch.Tensor, means: torch.Tensor, variances: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and (biased) variance of the union of parts, from each part's element
    count (P,), mean and variance (P, ...): Chan's parallel merge, exact up to rounding
    (bands of one frame, or one frame's bands on several ranks)."""
    weights = (counts / counts.sum()).reshape(-1, *[1] * (means.dim() - 1)).to(means.dtype)
    mean = (weights * means).sum(0)
    var = (weights * (variances + (means - mean).square())).sum(0)
    return mean, var


def normalise(x: torch.Tensor, layer: torch.nn.GroupNorm, mean: torch.Tensor, var: torch.Tensor,
              silu: bool = False) -> torch.Tensor:
    """GroupNorm of (B, C, ...) `x` with given (B, G) float32 statistics (then SiLU, with
    `silu`), in one pass where the kernels run."""
    weight, bias = (layer.weight, layer.bias) if layer.affine else (None, None)
    if _use_triton(x):
        try:
            return triton_kernels.group_norm_apply(x, mean, var, weight, bias, layer.eps, silu)
        except Exception as err:  # Triton's compile errors have no common base class
            _give_up_on_triton(err)
    # the samples' channels folded into one batch-norm call in inference mode: it reads and
    # writes `x` once in its own dtype and computes in float32
    batch, channels = x.shape[:2]
    per_channel = channels // layer.num_groups
    folded_mean = mean.repeat_interleave(per_channel, dim=1).reshape(-1)
    folded_var = var.repeat_interleave(per_channel, dim=1).reshape(-1)
    folded_weight = None if weight is None else weight.float().repeat(batch)
    folded_bias = None if bias is None else bias.float().repeat(batch)
    y = F.batch_norm(x.reshape(1, batch * channels, *x.shape[2:]), folded_mean, folded_var, folded_weight,
                     folded_bias, training=False, eps=layer.eps).reshape(x.shape)
    return F.silu(y, inplace=True) if silu else y


def group_norm_forward(self: torch.nn.GroupNorm, x: torch.Tensor, silu: bool = False) -> torch.Tensor:
    """A GroupNorm layer's forward; with `silu`, SiLU applied in the same pass."""
    if _use_triton(x):
        return normalise(x, self, *group_statistics(x, self.num_groups), silu=silu)
    y = F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
    return F.silu(y, inplace=True) if silu else y


def use_fast_group_norm(model: torch.nn.Module) -> int:
    """Give every GroupNorm of `model` the forward above; returns how many."""
    layers = [m for m in model.modules() if isinstance(m, torch.nn.GroupNorm)]
    for layer in layers:
        layer.forward = types.MethodType(group_norm_forward, layer)
    return len(layers)
