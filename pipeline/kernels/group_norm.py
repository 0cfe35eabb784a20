"""GroupNorm as two float32-accumulating reductions and one batch-norm pass.

PyTorch's GroupNorm kernel computes each (sample, group)'s moments in one thread
block: a 3840x2160 decode has 32 of them per layer, each over up to 16 M values, so
most of the GPU waits (benchmarks/RESULTS.md, 'Micro-task decode'). Here the sums of
x and x² are ordinary reductions, which PyTorch spreads over many blocks per output,
accumulated in float32 straight from the input's dtype; then `normalise` applies them
in one pass. Installed on CUDA models only (`install`, at load); the CPU kernel has
no such problem.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F


def group_statistics(x: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, G) float32 mean and (biased) variance of (B, C, ...) `x` per group of channels.
    The variance is E[x²] - E[x]² in float32: it loses digits only where a group's mean
    is thousands of times its spread, which a decoder's activations are not."""
    grouped = x.reshape(x.shape[0], groups, -1)
    count = grouped.shape[-1]
    mean = grouped.sum(-1, dtype=torch.float32) / count
    square = torch.linalg.vector_norm(grouped, dim=-1, dtype=torch.float32).square() / count
    return mean, (square - mean.square()).clamp_min(0.0)


def normalise(x: torch.Tensor, layer: torch.nn.GroupNorm, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """GroupNorm of (B, C, ...) `x` with given (B, G) float32 statistics, in one pass:
    the samples' channels folded into one batch-norm call in inference mode, which
    reads and writes `x` once in its own dtype and computes in float32 (spelled out in
    elementwise ops it took six passes over each full-size activation, in float32)."""
    batch, channels = x.shape[:2]
    per_channel = channels // layer.num_groups
    mean = mean.repeat_interleave(per_channel, dim=1).reshape(-1)
    var = var.repeat_interleave(per_channel, dim=1).reshape(-1)
    weight = bias = None
    if layer.affine:
        weight = layer.weight.float().repeat(batch)
        bias = layer.bias.float().repeat(batch)
    folded = x.reshape(1, batch * channels, *x.shape[2:])
    return F.batch_norm(folded, mean, var, weight, bias, training=False, eps=layer.eps).reshape(x.shape)


def group_norm_forward(self: torch.nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    return normalise(x, self, *group_statistics(x, self.num_groups))


def use_fast_group_norm(model: torch.nn.Module) -> int:
    """Give every GroupNorm of `model` the forward above; returns how many."""
    layers = [m for m in model.modules() if isinstance(m, torch.nn.GroupNorm)]
    for layer in layers:
        layer.forward = types.MethodType(group_norm_forward, layer)
    return len(layers)
