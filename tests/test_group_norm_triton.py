"""The Triton GroupNorm kernels (pipeline.kernels.group_norm_triton) against float64
F.group_norm (+ F.silu), on the CPU under Triton's interpreter (conftest.py turns it on
where there is no GPU), so the kernels' own code runs here; tests/test_gpu_kernels.py
runs them on the GPU."""

from __future__ import annotations

import math
import zlib

import pytest
import torch
import torch.nn.functional as F
from triton_interpreter import interpreting

pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(not interpreting(), reason="Triton's CPU interpreter is off (a GPU is here)")

from pipeline.kernels import group_norm_triton as gn  # noqa: E402  (after the skip: it imports Triton)

EPS = 1e-6
LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
# |error| <= rtol * |exact| + atol: the output's rounding plus float32 arithmetic (~1e-6 at
# |y| ~ 5). float16 rounds to nearest, within 2^-11 relatively (here 2^-10). Triton's
# interpreter converts float32 to bfloat16 by truncation (the GPU's cvt.rn rounds to
# nearest, 2^-9), within one ulp: 2^-7 relatively.
TOLERANCE = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (2.0 ** -7, 1e-5), torch.float16: (2.0 ** -10, 1e-5)}


def activation(shape: tuple[int, ...], dtype: torch.dtype, layout: torch.memory_format, seed: int) -> torch.Tensor:
    """Random values with per-channel offsets and spreads, so no group is centred or unit."""
    generator = torch.Generator().manual_seed(seed)
    per_channel = (1, shape[1]) + (1,) * (len(shape) - 2)
    offset = torch.empty(per_channel).uniform_(-3, 3, generator=generator)
    spread = torch.empty(per_channel).uniform_(0.5, 2, generator=generator)
    x = torch.randn(shape, generator=generator) * spread + offset
    return x.to(dtype).to(memory_format=layout)


def affine_parameters(channels: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed + 1)
    return torch.randn(channels, generator=generator), torch.randn(channels, generator=generator)


def exact(x: torch.Tensor, groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None, silu: bool,
          statistics: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 F.group_norm (+ F.silu) of `x`, or with float64 `statistics` (var, mean) given;
    and each element's |mean| * rsqrt(var + eps) * |weight|, which scales the rounding of
    the mean in any float32 computation of x - mean."""
    batch, channels = x.shape[:2]
    per_channel = lambda s: s.repeat_interleave(channels // groups, dim=1).reshape(  # noqa: E731
        (batch, channels) + (1,) * (x.dim() - 2))
    if statistics is None and x[0].numel() > groups:
        y = F.group_norm(x.double(), groups, None if weight is None else weight.double(),
                         None if bias is None else bias.double(), EPS)
        var, mean = torch.var_mean(x.double().reshape(batch, groups, -1), dim=-1, correction=0)
    else:   # given statistics, or groups of one value, which F.group_norm refuses (it maps them to 0)
        if statistics is None:
            statistics = torch.var_mean(x.double().reshape(batch, groups, -1), dim=-1, correction=0)
        var, mean = statistics
        y = (x.double() - per_channel(mean)) * per_channel(torch.rsqrt(var + EPS))
        y = y if weight is None else y * weight.double().reshape((channels,) + (1,) * (x.dim() - 2))
        y = y if bias is None else y + bias.double().reshape((channels,) + (1,) * (x.dim() - 2))
    slack = per_channel(mean.abs() * torch.rsqrt(var + EPS)).expand(x.shape)
    if weight is not None:
        slack = slack * weight.double().abs().reshape((channels,) + (1,) * (x.dim() - 2))
    return F.silu(y) if silu else y, slack


def assert_matches(y: torch.Tensor, expected: tuple[torch.Tensor, torch.Tensor], dtype: torch.dtype) -> None:
    """|y - exact| <= rtol |exact| + atol + 2^-21 slack: the slack term allows 8 float32 ulps
    of error in the mean, which matters only where a group's spread is tiny against its
    mean (groups of two values at 1x1, say)."""
    exact_y, slack = expected
    rtol, atol = TOLERANCE[dtype]
    assert not y.isnan().any()
    error = (y.double() - exact_y).abs()
    excess = error - (rtol * exact_y.abs() + atol + 2.0 ** -21 * slack)
    assert excess.max() <= 0, f"max error {error.max().item():.3g}, over the bound by {excess.max().item():.3g}"


# Every shape (C in 32/64/96/128 with G=32, B in 1/3, H x W 7x13 and 1x1) in both layouts,
# each C in both dtypes; affine and SiLU cycle so that each layout and dtype sees all
# four combinations twice.
SHAPES = [(b, c, h, w) for c in (32, 64, 96, 128) for b in (1, 3) for h, w in ((7, 13), (1, 1))]
COMBINATIONS = [(False, False), (True, False), (False, True), (True, True)]
CASES = [(shape, layout, (torch.bfloat16, torch.float32)[i % 2], *COMBINATIONS[(i // 2 + j) % 4])
         for j, layout in enumerate(LAYOUTS) for i, shape in enumerate(SHAPES)]


@pytest.mark.parametrize(("shape", "layout", "dtype", "affine", "silu"), CASES,
                         ids=[f"{'x'.join(map(str, s))}-{layout}-{str(d)[6:]}-{'affine' if a else 'plain'}-"
                              f"{'silu' if f else 'nosilu'}" for s, layout, d, a, f in CASES])
def test_group_norm_matches_torch(shape: tuple[int, ...], layout: str, dtype: torch.dtype, affine: bool,
                                  silu: bool) -> None:
    seed = zlib.crc32(repr((shape, layout, dtype, affine, silu)).encode())
    x = activation(shape, dtype, LAYOUTS[layout], seed)
    assert gn._layout(x) == ("planar" if x.is_contiguous() else "channels_last")
    weight, bias = affine_parameters(shape[1], seed) if affine else (None, None)
    out = torch.full_like(x, math.nan)   # keeps x's memory format: every element must be written
    y = gn.group_norm(x, 32, weight, bias, EPS, silu=silu, out=out)
    assert y is out and y.dtype == dtype and y.stride() == x.stride()
    assert_matches(y, exact(x, 32, weight, bias, silu), dtype)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_statistics_of_offset_data(layout: str) -> None:
    """Mean 1000 times the spread: E[x²] - E[x]² in float32 would keep no correct digit
    of the variance (ulp(1e6) / 1 = 0.06); the chunks' shifts and Chan's merge keep ~6."""
    g = torch.Generator().manual_seed(11)
    x = (1000 + torch.randn(2, 64, 19, 23, dtype=torch.float64, generator=g)).float().to(memory_format=LAYOUTS[layout])
    mean, var = gn.group_statistics(x, 32)
    exact_var, exact_mean = torch.var_mean(x.double().reshape(2, 32, -1), dim=-1, correction=0)
    assert mean.dtype == var.dtype == torch.float32 and mean.shape == (2, 32)
    # two float32 ulps (1e-7 was under one: an unseeded draw failed it in CI once)
    torch.testing.assert_close(mean.double(), exact_mean, rtol=2.4e-7, atol=0)
    torch.testing.assert_close(var.double(), exact_var, rtol=1e-5, atol=0)


SMALL_CHUNKS = gn.KernelConfig(tile=64, num_warps=1, stats_chunk=256, apply_chunk=128, min_programs=1)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_many_chunks_and_tiles(layout: str) -> None:
    """Chunks of a few tiles and a ragged last chunk: the paths a 4K frame takes."""
    x = activation((2, 32, 19, 23), torch.bfloat16, LAYOUTS[layout], 5)
    weight, bias = affine_parameters(32, 5)
    y = gn.group_norm_apply(x, *gn.group_statistics(x, 32, config=SMALL_CHUNKS), weight, bias, EPS, True,
                            torch.full_like(x, math.nan), config=SMALL_CHUNKS)
    assert_matches(y, exact(x, 32, weight, bias, True), torch.bfloat16)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last_3d])
def test_five_dimensional(layout: torch.memory_format) -> None:
    x = activation((2, 64, 3, 5, 7), torch.float32, layout, 6)
    assert gn._layout(x) == ("planar" if layout == torch.contiguous_format else "channels_last")
    weight, bias = affine_parameters(64, 6)
    y = gn.group_norm(x, 32, weight, bias, EPS, silu=True, out=torch.full_like(x, math.nan))
    assert y.is_contiguous(memory_format=layout)
    assert_matches(y, exact(x, 32, weight, bias, True), torch.float32)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_apply_with_recorded_statistics(layout: str) -> None:
    """A tile normalised with a frame's statistics: (tile - frame mean) / frame std."""
    frame = activation((2, 64, 9, 11), torch.float32, LAYOUTS[layout], 7)
    tile = activation((2, 64, 5, 6), torch.bfloat16, LAYOUTS[layout], 8)
    weight, bias = affine_parameters(64, 7)
    mean, var = gn.group_statistics(frame, 32)
    y = gn.group_norm_apply(tile, mean, var, weight, bias, EPS, True, torch.full_like(tile, math.nan))
    exact_var, exact_mean = torch.var_mean(frame.double().reshape(2, 32, -1), dim=-1, correction=0)
    assert_matches(y, exact(tile, 32, weight, bias, True, (exact_var, exact_mean)), torch.bfloat16)
    assert y.stride() == tile.stride()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_apply_with_own_statistics_is_group_norm(layout: str) -> None:
    x = activation((3, 96, 7, 13), torch.bfloat16, LAYOUTS[layout], 9)
    weight, bias = affine_parameters(96, 9)
    whole = gn.group_norm(x, 32, weight, bias, EPS, silu=True)
    parts = gn.group_norm_apply(x, *gn.group_statistics(x, 32), weight, bias, EPS, True)
    assert torch.equal(whole, parts) and parts.stride() == x.stride()


def test_in_place_and_float16() -> None:
    x = activation((1, 64, 7, 13), torch.float16, torch.channels_last, 10)
    expected = exact(x, 32, None, None, False)
    y = gn.group_norm(x, 32, eps=EPS, out=x)
    assert y is x
    assert_matches(y, expected, torch.float16)


@pytest.mark.parametrize("make", [lambda x: x[:, :, :, ::2], lambda x: x.transpose(2, 3),
                                  lambda x: x.double()], ids=["strided", "transposed", "float64"])
def test_other_tensors_take_the_reference(make) -> None:
    x = make(activation((2, 64, 7, 13), torch.float32, torch.contiguous_format, 11))
    assert gn._layout(x) is None
    weight, bias = affine_parameters(64, 11)
    y = gn.group_norm(x, 32, weight, bias, EPS, silu=True)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert_matches(y, exact(x, 32, weight, bias, True), torch.float32)


def test_bad_groups() -> None:
    with pytest.raises(ValueError):
        gn.group_statistics(torch.zeros(1, 48, 2, 2), 32)
    with pytest.raises(ValueError):
        gn.group_norm_apply(torch.zeros(2, 64, 2, 2), torch.zeros(1, 32), torch.zeros(1, 32), None, None, EPS, False)
