"""Per-position channel kernels for the Wan decoder's activations, each one read and one
write of the activation: RMS norm (diffusers' WanRMS_norm, optionally preceded by a
per-channel bias and followed by SiLU), a per-channel bias plus residual add, and the
2x nearest upsampling of channels-last frames (with the upsample3d frame interleave).

Both see a (N, C, *S) tensor as N batches of R = prod(S) rows (positions) of C
channels, element (n, r, c) at n*sn + r*sr + c*sc. In channels-last layouts sc = 1:
a row is one contiguous channel vector, which the norm reduces in registers; in
NC... layouts sr = 1 and the same kernels read strided rows (slower, still one pass).
The arithmetic is float32 from the input's dtype, rounded once to the output's.

Why: spelled out in PyTorch, norm -> SiLU made five passes over each activation (one
of them in float32), and cuDNN convolutions add their bias in a pass of their own
(`output.add_(bias)`, a broadcast add that is not vectorised for channels-last
outputs). The Wan decoder's forwards (wan.py) run their convolutions without bias and
hand the bias to the next of these kernels instead.

The upsampling copies each position's channel vector to its four output positions
(PyTorch's strided copy of the same reached 0.7 TB/s on an H200).

The kernels run on CUDA tensors whose spatial dimensions flatten into evenly spaced
rows; anything else (the CPU, odd strides, no Triton) takes the PyTorch reference,
which computes the same in float32. tests/test_wan_fast.py runs the kernels under
Triton's interpreter against that reference.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only PyTorch builds come without Triton
    triton = None

_broken: list[str] = []   # why the kernels cannot run here, once found out

MAX_CHANNELS = 2048        # one row's channels are held in registers
MAX_BATCHES = 65535        # the grid's second axis
TILE = 4096                # elements a program handles: rows x (channels rounded up to a power of two)

if triton is not None:
    @triton.jit
    def _rms_norm_rows(x_ptr, out_ptr, gamma_ptr, beta_ptr, pre_ptr, rows, channels,
                       x_sn, x_sr, x_sc, o_sn, o_sr, o_sc, scale, eps,
                       HAS_PRE: tl.constexpr, HAS_BETA: tl.constexpr, SILU: tl.constexpr,
                       BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
        batch = tl.program_id(1).to(tl.int64)
        r = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
        c = tl.arange(0, BLOCK_C)
        in_c = c < channels
        mask = (r < rows)[:, None] & in_c[None, :]
        x = tl.load(x_ptr + batch * x_sn + r[:, None] * x_sr + c[None, :] * x_sc, mask=mask,
                    other=0.0).to(tl.float32)
        if HAS_PRE:   # the bias of the convolution that produced x
            x += tl.load(pre_ptr + c, mask=in_c, other=0.0).to(tl.float32)[None, :]
        # F.normalize's x / max(|x|, eps), then diffusers' * scale * gamma (+ beta)
        factor = scale / tl.maximum(tl.sqrt(tl.sum(x * x, axis=1)), eps)
        gamma = tl.load(gamma_ptr + c, mask=in_c, other=0.0).to(tl.float32)
        y = x * factor[:, None] * gamma[None, :]
        if HAS_BETA:
            y += tl.load(beta_ptr + c, mask=in_c, other=0.0).to(tl.float32)[None, :]
        if SILU:
            y = y / (1.0 + tl.exp(-y))
        tl.store(out_ptr + batch * o_sn + r[:, None] * o_sr + c[None, :] * o_sc,
                 y.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _add_bias_rows(y_ptr, h_ptr, b1_ptr, b2_ptr, out_ptr, rows, channels,
                       y_sn, y_sr, y_sc, h_sn, h_sr, h_sc, o_sn, o_sr, o_sc,
                       HAS_H: tl.constexpr, HAS_B2: tl.constexpr,
                       BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
        batch = tl.program_id(1).to(tl.int64)
        r = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
        c = tl.arange(0, BLOCK_C)
        in_c = c < channels
        mask = (r < rows)[:, None] & in_c[None, :]
        y = tl.load(y_ptr + batch * y_sn + r[:, None] * y_sr + c[None, :] * y_sc, mask=mask,
                    other=0.0).to(tl.float32)
        y += tl.load(b1_ptr + c, mask=in_c, other=0.0).to(tl.float32)[None, :]
        if HAS_B2:
            y += tl.load(b2_ptr + c, mask=in_c, other=0.0).to(tl.float32)[None, :]
        if HAS_H:   # h may be out itself (an accumulation): each element is read before it is written
            y += tl.load(h_ptr + batch * h_sn + r[:, None] * h_sr + c[None, :] * h_sc, mask=mask,
                         other=0.0).to(tl.float32)
        tl.store(out_ptr + batch * o_sn + r[:, None] * o_sr + c[None, :] * o_sc,
                 y.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _upsample2x_rows(x_ptr, out_ptr, rows, width, channels, x_sn, x_sr, o_sn, o_sr,
                         PARTS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
        frame = tl.program_id(1).to(tl.int64)
        r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        c = tl.arange(0, BLOCK_C)
        mask = (r < rows)[:, None] & (c < channels)[None, :]
        y = r // width
        corner = (4 * y * width + 2 * (r - y * width)).to(tl.int64)   # output row 2y, column 2x
        source = x_ptr + frame * x_sn + r.to(tl.int64)[:, None] * x_sr + c[None, :]
        for part in tl.static_range(PARTS):   # part i of input frame n is output frame n * PARTS + i
            v = tl.load(source + part * channels, mask=mask)
            target = out_ptr + (frame * PARTS + part) * o_sn + c[None, :]
            for dy in tl.static_range(2):
                for dx in tl.static_range(2):
                    tl.store(target + (corner + dy * 2 * width + dx)[:, None] * o_sr, v, mask=mask)


def row_strides(t: torch.Tensor) -> tuple[int, int, int] | None:
    """(sn, sr, sc): the strides of (N, C, *S) `t` as N batches of prod(S) evenly spaced
    rows of C channels, or None where its spatial dimensions do not flatten so."""
    if t.dim() < 2:
        return None
    spatial = [(size, stride) for size, stride in zip(t.shape[2:], t.stride()[2:], strict=True) if size != 1]
    sr = spatial[-1][1] if spatial else 1
    span = sr
    for size, stride in reversed(spatial):
        if stride != span:
            return None
        span *= size
    return t.stride(0), sr, t.stride(1)


def _strides(t: torch.Tensor) -> tuple[int, int, int]:
    strides = row_strides(t)
    if strides is None:
        raise ValueError(f"strides {t.stride()} do not flatten into rows")
    return strides


def _kernel_runs(*tensors: torch.Tensor) -> bool:
    """Whether the Triton kernels take these tensors (the tests widen this to the CPU
    under Triton's interpreter)."""
    return triton is not None and not _broken and all(t.is_cuda for t in tensors)


def _fits(*tensors: torch.Tensor) -> bool:
    first = tensors[0]
    return (first.dtype in (torch.float32, torch.float16, torch.bfloat16) and 0 < first.shape[1] <= MAX_CHANNELS
            and first.shape[0] <= MAX_BATCHES and first.numel() > 0
            and all(t.shape == first.shape and row_strides(t) is not None for t in tensors))


def _blocks(channels: int) -> tuple[int, int]:
    block_c = triton.next_power_of_2(channels)
    return max(1, TILE // block_c), block_c


def _give_up(err: Exception) -> None:
    _broken.append(f"{type(err).__name__}: {err}")
    log.warning("Wan channel kernels unavailable, using PyTorch's: %s", _broken[0].splitlines()[0])


def _per_channel(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A (C,)-shaped parameter broadcastable over (N, C, *S) `like`, in float32."""
    return v.reshape(-1).float().view(-1, *[1] * (like.dim() - 2))


def rms_norm_reference(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor | None, scale: float,
                       eps: float = 1e-12, pre_bias: torch.Tensor | None = None, silu: bool = False) -> torch.Tensor:
    """The kernel's arithmetic in PyTorch, channel dimension 1: diffusers' F.normalize, scale,
    gamma and bias (in that order, so float32 inputs give diffusers' float32 result),
    in float32 throughout and rounded once to x's dtype."""
    xf = x.float()
    if pre_bias is not None:
        xf = xf + _per_channel(pre_bias, x)
    y = xf / torch.linalg.vector_norm(xf, dim=1, keepdim=True).clamp_min(eps) * scale * _per_channel(gamma, x)
    if beta is not None:
        y = y + _per_channel(beta, x)
    if silu:
        y = F.silu(y)
    return y.to(x.dtype)


def launch_rms_norm(x: torch.Tensor, out: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor | None,
                    scale: float, eps: float, pre_bias: torch.Tensor | None, silu: bool) -> None:
    """The Triton kernel on `x` into `out`, both (N, C, *S) of one shape with row_strides."""
    rows = x[0, 0].numel()
    block_r, block_c = _blocks(x.shape[1])
    gamma = gamma.reshape(-1)
    _rms_norm_rows[(triton.cdiv(rows, block_r), x.shape[0])](
        x, out, gamma, gamma if beta is None else beta.reshape(-1), gamma if pre_bias is None else pre_bias,
        rows, x.shape[1], *_strides(x), *_strides(out), float(scale), float(eps),
        HAS_PRE=pre_bias is not None, HAS_BETA=beta is not None, SILU=silu,
        BLOCK_R=block_r, BLOCK_C=block_c, num_warps=4)


def rms_norm(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor | None, scale: float, *,
             eps: float = 1e-12, pre_bias: torch.Tensor | None = None, silu: bool = False,
             out: torch.Tensor | None = None) -> torch.Tensor:
    """silu?(normalize(x + pre_bias, dim=1) * scale * gamma + beta) for (N, C, *S) `x`, written
    to `out` (any strides, x's shape and dtype) or to a new tensor in x's layout."""
    if out is None:
        out = torch.empty_like(x)
    if _kernel_runs(x, out) and _fits(x, out) and out.dtype == x.dtype:
        try:
            with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
                launch_rms_norm(x, out, gamma, beta, scale, eps, pre_bias, silu)
            return out
        except Exception as err:  # Triton's compile errors have no common base class
            _give_up(err)
    return out.copy_(rms_norm_reference(x, gamma, beta, scale, eps, pre_bias, silu))


def launch_upsample2x(x: torch.Tensor, out: torch.Tensor, parts: int) -> None:
    """The Triton kernel: dense channels-last (b, parts*c, t, h, w) `x` -> dense channels_last
    (b*t*parts, c, 2h, 2w) `out`, part i of frame n becoming frame n*parts + i."""
    b, wide, t, h, w = x.shape
    channels = wide // parts
    block_r, block_c = _blocks(channels)
    _upsample2x_rows[(triton.cdiv(h * w, block_r), b * t)](
        x, out, h * w, w, channels, h * w * wide, wide, 4 * h * w * channels, channels,
        PARTS=parts, BLOCK_R=block_r, BLOCK_C=block_c, num_warps=4)


def upsample2x(x: torch.Tensor, parts: int) -> torch.Tensor | None:
    """launch_upsample2x into a new tensor, or None where the kernel does not take x."""
    b, wide, t, h, w = x.shape
    if not (_kernel_runs(x) and x.is_contiguous(memory_format=torch.channels_last_3d) and x.stride(1) == 1
            and wide % parts == 0 and 0 < wide // parts <= MAX_CHANNELS and b * t <= MAX_BATCHES and x.numel() > 0):
        return None
    out = torch.empty((b * t * parts, wide // parts, 2 * h, 2 * w), dtype=x.dtype, device=x.device,
                      memory_format=torch.channels_last)
    try:
        with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
            launch_upsample2x(x, out, parts)
    except Exception as err:  # Triton's compile errors have no common base class
        _give_up(err)
        return None
    return out


def launch_add_bias(y: torch.Tensor, biases: Sequence[torch.Tensor], residual: torch.Tensor | None,
                    out: torch.Tensor) -> None:
    """The Triton kernel: out = y + biases[0] (+ biases[1]) (+ residual), one pass."""
    rows = y[0, 0].numel()
    block_r, block_c = _blocks(y.shape[1])
    first = biases[0].reshape(-1)
    _add_bias_rows[(triton.cdiv(rows, block_r), y.shape[0])](
        y, y if residual is None else residual, first, biases[1].reshape(-1) if len(biases) > 1 else first, out,
        rows, y.shape[1], *_strides(y), *_strides(y if residual is None else residual), *_strides(out),
        HAS_H=residual is not None, HAS_B2=len(biases) > 1, BLOCK_R=block_r, BLOCK_C=block_c, num_warps=4)


def add_bias(y: torch.Tensor, biases: Sequence[torch.Tensor | None], residual: torch.Tensor | None = None, *,
             out: torch.Tensor) -> torch.Tensor:
    """out = y + each per-channel bias (+ residual) for (N, C, *S) `y`, in one pass: the bias
    of the convolution that made y (and of the one that made the residual) and a residual
    add. `out` (y's shape and dtype) may be y itself or the residual itself (an in-place
    accumulation), or a view into a larger tensor (a band of a frame). Returns out."""
    present = [b for b in biases if b is not None]
    operands = (y, out) if residual is None else (y, residual, out)
    if (present and len(present) <= 2 and out.dtype == y.dtype and _kernel_runs(*operands)
            and _fits(*operands)):
        try:
            with torch.cuda.device(y.device) if y.is_cuda else contextlib.nullcontext():
                launch_add_bias(y, present, residual, out)
            return out
        except Exception as err:  # Triton's compile errors have no common base class
            _give_up(err)
    # the order of diffusers' steps: the convolution's bias, then the residual
    total = y if out is y else y.clone()
    for bias in present:
        total.add_(bias.reshape(-1).view(-1, *[1] * (y.dim() - 2)))
    if residual is not None:
        total.add_(residual)
    return out if total is out else out.copy_(total)


def add_bias_(y: torch.Tensor, biases: Sequence[torch.Tensor | None], residual: torch.Tensor | None = None
              ) -> torch.Tensor:
    """y += each per-channel bias (+ residual), in place: add_bias into y. Returns y."""
    return add_bias(y, biases, residual, out=y)
