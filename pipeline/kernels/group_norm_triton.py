"""GroupNorm (+ SiLU) as two Triton passes over NCHW or channels_last activations.

`group_statistics` reads the activation once and returns each (sample, group)'s mean
and variance; `group_norm_apply` reads it once more and writes the normalised (and
optionally SiLU'd) result once, in the input's dtype and memory format. They are
separate because a tiled decode normalises tiles with statistics recorded from
another tensor.

Layouts. Planar (NCHW or NCTHW, contiguous): a group is one contiguous run of C/G
planes. The statistics walk chunks of that run; the apply pass walks chunks of one
channel plane, so the channel (its group, weight and bias) is a per-program scalar.
channels_last (NHWC, NTHWC): a group is C/G adjacent channels inside every pixel's
channel vector, so both kernels walk tiles of whole pixels, (rows, C) contiguous in
memory, with per-channel vectors. Loads and stores are 16-byte vectors where the sizes
allow it (planes, or C, a multiple of 8 16-bit values: all of a VAE's layers). Any
other strides take the PyTorch reference below: the input is never converted. The
kernels run on CUDA tensors, or on CPU tensors under Triton's interpreter (the tests);
`pipeline.kernels.group_norm` decides which a model's layers use.

Statistics. A 4K layer has B*G = 32 groups of up to 16 M values: one program per group
would leave most of a GPU idle. So each program of the first kernel takes one chunk
(~256 K values) and stores its mean and M2 = sum((x - mean)²), per channel for
channels_last; a second, tiny kernel (one program per group) merges a group's partials
with Chan's formula, M2 = sum(M2_k) + sum(n_k (mean_k - mean)²). Within a chunk the
program sums d = x - s and d² in float32, s being the mean of the chunk's first tile:
M2_k = sum(d²) - sum(d)²/n then cancels only as much as the chunk's mean differs from
s, a fraction of a standard deviation, where the textbook E[x²] - E[x]² cancels as
(mean / std)². A per-element Welford update would be as robust but costs a division per
element, more arithmetic than an H100 can spend per 2-byte value at memory speed.
Measured on random data: variance within ~1e-7 relatively of float64.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only PyTorch builds come without Triton
    triton = None

_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@dataclass(frozen=True)
class KernelConfig:
    """Launch sizes. The defaults are for activations of hundreds of MB to GBs."""
    tile: int = 4096             # elements one program loads per loop step (16 per thread at 8 warps)
    num_warps: int = 8
    stats_chunk: int = 1 << 18   # elements one statistics program reduces (partials: 8 bytes per channel)
    apply_chunk: int = 1 << 16   # elements one apply program normalises
    min_programs: int = 1024     # chunks shrink (down to a tile) until a launch has this many programs


DEFAULT_CONFIG = KernelConfig()


# --------------------------------------------------------------------------- reference

def reference_group_statistics(x: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, G) float32 mean and biased variance, two-pass in float32 (float64 for float64 input)."""
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    var, mean = torch.var_mean(x.reshape(x.shape[0], groups, -1).to(compute), dim=-1, correction=0)
    return mean.float(), var.float()


def reference_group_norm_apply(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor,
                               weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float,
                               silu: bool, out: torch.Tensor | None = None) -> torch.Tensor:
    """`group_norm_apply` in elementwise PyTorch ops (several passes, float32 temporaries)."""
    batch, channels = x.shape[:2]
    per_group = channels // mean.shape[1]
    per_channel = (batch, channels) + (1,) * (x.dim() - 2)
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    mean = mean.to(compute).repeat_interleave(per_group, dim=1).reshape(per_channel)
    scale = torch.rsqrt(var.to(compute) + eps).repeat_interleave(per_group, dim=1).reshape(per_channel)
    y = (x.to(compute) - mean) * scale   # elementwise ops keep x's memory format
    if weight is not None:
        y = y * weight.to(compute).reshape(per_channel[1:])
    if bias is not None:
        y = y + bias.to(compute).reshape(per_channel[1:])
    if silu:
        y = F.silu(y)
    if out is None:
        return y.to(x.dtype)
    return out.copy_(y)


# --------------------------------------------------------------------------- kernels

if triton is not None:
    @triton.jit
    def _planar_moments(x_ptr, part_ptr, L, K, P, CHUNK: tl.constexpr, TILE: tl.constexpr):
        """Program (b*G + g) * K + chunk: mean and M2 of one chunk of group (b, g), whose L
        values are contiguous, into partials[:, b*G + g, chunk]."""
        index = tl.program_id(0)
        group = index // K
        chunk = index % K
        start = chunk * CHUNK
        base = x_ptr + group.to(tl.int64) * L + start
        count = L - start   # past CHUNK for all but the last chunk: the loop's trip count is constant, masked
        lanes = tl.arange(0, TILE)
        mask = lanes < count
        x = tl.load(base + lanes, mask=mask, other=0.0).to(tl.float32)
        shift = tl.sum(x, 0) / tl.minimum(count, TILE).to(tl.float32)   # the first tile's mean
        d = tl.where(mask, x - shift, 0.0)
        sum1 = d
        sum2 = d * d
        for i in range(TILE, CHUNK, TILE):
            mask = i + lanes < count
            d = tl.where(mask, tl.load(base + i + lanes, mask=mask).to(tl.float32) - shift, 0.0)
            sum1 += d
            sum2 += d * d
        n = tl.minimum(count, CHUNK).to(tl.float32)
        total1 = tl.sum(sum1, 0)
        slot = part_ptr + index
        tl.store(slot, shift + total1 / n)
        tl.store(slot + P, tl.maximum(tl.sum(sum2, 0) - total1 * total1 / n, 0.0))

    @triton.jit
    def _channels_last_moments(x_ptr, part_ptr, S, K, P, C: tl.constexpr, C_PAD: tl.constexpr,
                               CHUNK: tl.constexpr, ROWS: tl.constexpr):
        """Program b * K + chunk: per-channel mean and M2 of CHUNK pixels of sample b, into
        partials[:, b, chunk, :]."""
        index = tl.program_id(0)
        sample = (index // K).to(tl.int64)
        chunk = index % K
        channels = tl.arange(0, C_PAD)
        valid = channels < C
        start = chunk * CHUNK
        count = S - start
        base = x_ptr + (sample * S + start) * C   # int64: S * C passes 2^31 at 4K with 512 channels
        rows = tl.arange(0, ROWS)
        mask = (rows < count)[:, None] & valid[None, :]
        x = tl.load(base + rows[:, None] * C + channels[None, :], mask=mask, other=0.0).to(tl.float32)
        shift = tl.sum(x, 0) / tl.minimum(count, ROWS).to(tl.float32)   # the first tile's channel means
        d = tl.where(mask, x - shift[None, :], 0.0)
        sum1 = d
        sum2 = d * d
        for i in range(ROWS, CHUNK, ROWS):
            mask = ((i + rows) < count)[:, None] & valid[None, :]
            x = tl.load(base + (i + rows)[:, None] * C + channels[None, :], mask=mask).to(tl.float32)
            d = tl.where(mask, x - shift[None, :], 0.0)
            sum1 += d
            sum2 += d * d
        n = tl.minimum(count, CHUNK).to(tl.float32)
        total1 = tl.sum(sum1, 0)
        slot = part_ptr + index.to(tl.int64) * C + channels
        tl.store(slot, shift + total1 / n, mask=valid)
        tl.store(slot + P, tl.maximum(tl.sum(sum2, 0) - total1 * total1 / n, 0.0), mask=valid)

    @triton.jit
    def _merge_moments(part_ptr, mean_ptr, var_ptr, K, G, P, part_b, part_k, part_u, length, count,
                       UNITS: tl.constexpr, UNITS_PAD: tl.constexpr, CHUNK: tl.constexpr,
                       K_PAD: tl.constexpr, ROWS: tl.constexpr):
        """Program b*G + g: merges the (mean, M2) partials of group g of sample b (chunks
        0..K-1 of `length` positions, times UNITS channels or 1 whole group) with Chan's
        formula: M2 = sum(M2_k) + sum(n_k * (mean_k - mean)²)."""
        index = tl.program_id(0)
        sample = index // G
        group = index % G
        rows = tl.arange(0, ROWS)[:, None]
        cols = tl.arange(0, UNITS_PAD)[None, :]
        means = part_ptr + sample * part_b + rows * part_k + (group * UNITS + cols) * part_u
        sizes = length - rows * CHUNK   # chunk k + i holds min(sizes - i * CHUNK, CHUNK) positions
        weighted = tl.zeros([ROWS, UNITS_PAD], tl.float32)
        for i in range(0, K_PAD, ROWS):   # a constant trip count: K rounded up to a power of two
            mask = (rows < K - i) & (cols < UNITS)
            n = tl.minimum(sizes - i * CHUNK, CHUNK).to(tl.float32)
            weighted += tl.where(mask, n * tl.load(means + i * part_k, mask=mask, other=0.0), 0.0)
        mean = tl.sum(weighted) / count
        m2 = tl.zeros([ROWS, UNITS_PAD], tl.float32)
        for i in range(0, K_PAD, ROWS):
            mask = (rows < K - i) & (cols < UNITS)
            n = tl.minimum(sizes - i * CHUNK, CHUNK).to(tl.float32)
            spread = tl.load(means + i * part_k, mask=mask, other=0.0) - mean
            m2 += tl.where(mask, tl.load(means + i * part_k + P, mask=mask, other=0.0) + n * spread * spread, 0.0)
        tl.store(mean_ptr + index, mean)
        tl.store(var_ptr + index, tl.sum(m2) / count)

    @triton.jit
    def _channel_coefficients(mean_ptr, var_ptr, weight_ptr, bias_ptr, sample, channel, valid, G, eps,
                              GROUP_C: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr):
        """y = (x - mean) * scale + shift for channel(s) `channel` of `sample`."""
        stat = sample * G + channel // GROUP_C
        mean = tl.load(mean_ptr + stat, mask=valid, other=0.0)
        scale = tl.rsqrt(tl.load(var_ptr + stat, mask=valid, other=1.0) + eps)
        if HAS_WEIGHT:
            scale = scale * tl.load(weight_ptr + channel, mask=valid, other=0.0).to(tl.float32)
        shift = 0.0
        if HAS_BIAS:
            shift = tl.load(bias_ptr + channel, mask=valid, other=0.0).to(tl.float32)
        return mean, scale, shift

    @triton.jit
    def _planar_apply(x_ptr, y_ptr, mean_ptr, var_ptr, weight_ptr, bias_ptr, S, K, C, G, eps,
                      GROUP_C: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
                      SILU: tl.constexpr, CHUNK: tl.constexpr, TILE: tl.constexpr):
        """Program (b*C + c) * K + chunk: normalises one chunk of plane (b, c)."""
        index = tl.program_id(0)
        plane = (index // K).to(tl.int64)
        chunk = index % K
        channel = plane % C
        mean, scale, shift = _channel_coefficients(mean_ptr, var_ptr, weight_ptr, bias_ptr, plane // C,
                                                   channel, channel < C, G, eps,
                                                   GROUP_C, HAS_WEIGHT, HAS_BIAS)
        start = chunk * CHUNK
        count = S - start
        offset = plane * S + start
        lanes = tl.arange(0, TILE)
        for i in range(0, CHUNK, TILE):
            mask = i + lanes < count
            y = (tl.load(x_ptr + offset + i + lanes, mask=mask).to(tl.float32) - mean) * scale + shift
            if SILU:
                y = y / (1.0 + tl.exp(-y))   # -0.0 where exp overflows: silu's limit
            tl.store(y_ptr + offset + i + lanes, y.to(y_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _channels_last_apply(x_ptr, y_ptr, mean_ptr, var_ptr, weight_ptr, bias_ptr, S, K, G, eps,
                             C: tl.constexpr, GROUP_C: tl.constexpr, C_PAD: tl.constexpr,
                             HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
                             CHUNK: tl.constexpr, ROWS: tl.constexpr):
        """Program b * K + chunk: normalises CHUNK pixels of sample b, all channels."""
        index = tl.program_id(0)
        sample = (index // K).to(tl.int64)
        chunk = index % K
        channels = tl.arange(0, C_PAD)
        valid = channels < C
        mean, scale, shift = _channel_coefficients(mean_ptr, var_ptr, weight_ptr, bias_ptr, sample,
                                                   channels, valid, G, eps, GROUP_C, HAS_WEIGHT, HAS_BIAS)
        start = chunk * CHUNK
        count = S - start
        offset = (sample * S + start) * C
        rows = tl.arange(0, ROWS)
        for i in range(0, CHUNK, ROWS):
            mask = ((i + rows) < count)[:, None] & valid[None, :]
            at = (i + rows)[:, None] * C + channels[None, :]
            x = tl.load(x_ptr + offset + at, mask=mask).to(tl.float32)
            y = (x - mean[None, :]) * scale[None, :] + shift[None, :]
            if SILU:
                y = y / (1.0 + tl.exp(-y))   # -0.0 where exp overflows: silu's limit
            tl.store(y_ptr + offset + at, y.to(y_ptr.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------- launchers

def _layout(x: torch.Tensor) -> str | None:
    """'planar' or 'channels_last' where the kernels can address `x` densely, else None."""
    if triton is None or x.dim() < 2 or x.dtype not in _KERNEL_DTYPES or x.numel() == 0:
        return None
    if x.is_contiguous():
        return "planar"
    if x.permute(0, *range(2, x.dim()), 1).is_contiguous():
        return "channels_last"
    return None


def _device(x: torch.Tensor) -> contextlib.AbstractContextManager:
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def _pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _chunk(length: int, lanes: int, step: int, target: int, config: KernelConfig) -> int:
    """Positions of `length` per program: a power of two, a multiple of `step`, at most
    `target` (or `length` rounded up), halved while `lanes` * chunks < min_programs."""
    chunk = max(step, min(target, _pow2(length)))
    while chunk > step and lanes * math.ceil(length / chunk) < config.min_programs:
        chunk //= 2
    return chunk


def _rows(channels: int, length: int, config: KernelConfig) -> tuple[int, int]:
    """(C padded to a power of two, pixels per channels_last tile)."""
    padded = _pow2(channels)
    return padded, max(1, min(config.tile // padded, _pow2(length)))


def _warps(elements: int, config: KernelConfig) -> int:
    return max(1, min(config.num_warps, elements // 256))


def _check_groups(x: torch.Tensor, groups: int) -> None:
    if x.dim() < 2 or groups <= 0 or x.shape[1] % groups:
        raise ValueError(f"{groups} groups do not divide the channels of a {tuple(x.shape)} tensor")


def group_statistics(x: torch.Tensor, groups: int, *,
                     config: KernelConfig = DEFAULT_CONFIG) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, G) float32 mean and biased variance of (B, C, *spatial) `x` per group of C/G
    channels, accumulated in float32 from float16/bfloat16/float32."""
    _check_groups(x, groups)
    layout = _layout(x)
    if layout is None:
        return reference_group_statistics(x, groups)
    batch, channels = x.shape[:2]
    spatial = x[0, 0].numel()
    group_c = channels // groups
    mean = torch.empty((batch, groups), dtype=torch.float32, device=x.device)
    var = torch.empty_like(mean)
    with _device(x):
        if layout == "planar":   # partials (2, B, G, chunks): one unit per group
            length = group_c * spatial
            tile = min(config.tile, _pow2(length))
            chunk = _chunk(length, batch * groups, tile, config.stats_chunk, config)
            chunks = math.ceil(length / chunk)
            partials = torch.empty((2, batch, groups, chunks), dtype=torch.float32, device=x.device)
            _planar_moments[(batch * groups * chunks,)](
                x, partials, length, chunks, partials[0].numel(),
                CHUNK=chunk, TILE=tile, num_warps=_warps(tile, config))
            units, part_strides = 1, (groups * chunks, 1, chunks)
        else:   # partials (2, B, chunks, C): one unit per channel
            length = spatial
            padded, rows = _rows(channels, spatial, config)
            chunk = _chunk(spatial, batch, rows, max(rows, config.stats_chunk // padded), config)
            chunks = math.ceil(spatial / chunk)
            partials = torch.empty((2, batch, chunks, channels), dtype=torch.float32, device=x.device)
            _channels_last_moments[(batch * chunks,)](
                x, partials, spatial, chunks, partials[0].numel(), C=channels, C_PAD=padded,
                CHUNK=chunk, ROWS=rows, num_warps=_warps(rows * padded, config))
            units, part_strides = group_c, (chunks * channels, channels, 1)
        units_pad = _pow2(units)
        _merge_moments[(batch * groups,)](
            partials, mean, var, chunks, groups, partials[0].numel(), *part_strides, length,
            float(group_c * spatial), UNITS=units, UNITS_PAD=units_pad, CHUNK=chunk, K_PAD=_pow2(chunks),
            ROWS=max(1, min(1024 // units_pad, _pow2(chunks))), num_warps=4)
    return mean, var


def group_norm_apply(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, weight: torch.Tensor | None,
                     bias: torch.Tensor | None, eps: float, silu: bool, out: torch.Tensor | None = None, *,
                     config: KernelConfig = DEFAULT_CONFIG) -> torch.Tensor:
    """(x - mean) * rsqrt(var + eps) * weight + bias per group, then SiLU if `silu`, in
    one read of `x` and one write of the result (float32 math). `mean`/`var` are (B, G)
    statistics, from `x` or recorded elsewhere. The result has x's dtype and memory
    format; `out` (same shape, and strides for the fast path) receives it, and may be `x`."""
    batch, channels = x.shape[:2]
    if mean.shape != var.shape or mean.dim() != 2 or mean.shape[0] != batch:
        raise ValueError(f"statistics of shape {tuple(mean.shape)}/{tuple(var.shape)} for a {tuple(x.shape)} tensor")
    _check_groups(x, mean.shape[1])
    layout = _layout(x)
    if out is None:
        out = torch.empty_like(x)   # preserve_format: a dense x's strides exactly
    if layout is None or out.shape != x.shape or out.stride() != x.stride() or out.dtype not in _KERNEL_DTYPES:
        return reference_group_norm_apply(x, mean, var, weight, bias, eps, silu, out)
    groups = mean.shape[1]
    mean = mean.to(device=x.device, dtype=torch.float32).contiguous()
    var = var.to(device=x.device, dtype=torch.float32).contiguous()
    spatial = x[0, 0].numel()
    flags = dict(GROUP_C=channels // groups, HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, SILU=silu)
    # a kernel needs some tensor for an absent weight or bias; `mean` is never read then
    weight_arg = mean if weight is None else weight.contiguous()
    bias_arg = mean if bias is None else bias.contiguous()
    with _device(x):
        if layout == "planar":
            tile = min(config.tile, _pow2(spatial))
            chunk = _chunk(spatial, batch * channels, tile, config.apply_chunk, config)
            chunks = math.ceil(spatial / chunk)
            _planar_apply[(batch * channels * chunks,)](
                x, out, mean, var, weight_arg, bias_arg, spatial, chunks, channels, groups, float(eps),
                CHUNK=chunk, TILE=tile, num_warps=_warps(tile, config), **flags)
        else:
            padded, rows = _rows(channels, spatial, config)
            chunk = _chunk(spatial, batch, rows, max(rows, config.apply_chunk // padded), config)
            chunks = math.ceil(spatial / chunk)
            _channels_last_apply[(batch * chunks,)](
                x, out, mean, var, weight_arg, bias_arg, spatial, chunks, groups, float(eps), C=channels,
                C_PAD=padded, CHUNK=chunk, ROWS=rows, num_warps=_warps(rows * padded, config), **flags)
    return out


def group_norm(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None = None,
               bias: torch.Tensor | None = None, eps: float = 1e-5, silu: bool = False,
               out: torch.Tensor | None = None, *, config: KernelConfig = DEFAULT_CONFIG) -> torch.Tensor:
    """F.group_norm (then F.silu if `silu`) of `x`: statistics, then one fused apply pass."""
    mean, var = group_statistics(x, num_groups, config=config)
    return group_norm_apply(x, mean, var, weight, bias, eps, silu, out, config=config)
