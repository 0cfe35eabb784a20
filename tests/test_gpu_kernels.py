"""The kernels of pipeline/kernels/ on a GPU, against the PyTorch operations they replace,
on random inputs of awkward sizes (odd widths, one tile, many tiles). The same code is
checked on the CPU under Triton's interpreter (test_wide_attention.py,
test_group_norm_triton.py); this is the compiled kernel on real hardware."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytestmark = pytest.mark.gpu


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


@pytest.mark.parametrize(("batch", "tokens", "head_dim"), [(1, 1, 512), (2, 257, 512), (1, 4099, 512),
                                                          (1, 14_400, 384), (3, 1000, 384)])
def test_wide_attention_matches_float32_attention(batch: int, tokens: int, head_dim: int) -> None:
    from pipeline.kernels.wide_attention import attention

    gen = torch.Generator(device="cuda").manual_seed(tokens)
    q, k, v = (torch.randn(batch, 1, tokens, head_dim, device="cuda", generator=gen).bfloat16() for _ in range(3))
    q = q * 2   # a peaked softmax
    out = torch.full_like(q, float("nan"))
    attention(q, k, v, out=out)
    want = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    assert not out.isnan().any()
    assert rel_err(out, want) < 1e-2


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("shape", [(1, 128, 67, 45), (3, 256, 33, 129), (1, 512, 270, 480), (2, 64, 1, 1)])
def test_triton_group_norm_matches_torch(shape: tuple[int, ...], layout: torch.memory_format) -> None:
    from pipeline.kernels.group_norm import group_norm_forward

    torch.manual_seed(shape[1])
    layer = torch.nn.GroupNorm(32, shape[1], eps=1e-6).cuda()
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.normal_()
        x = (torch.randn(shape, device="cuda") * 3 + 1).bfloat16().to(memory_format=layout)
        want = F.silu(F.group_norm(x.float(), 32, layer.weight, layer.bias, layer.eps))
        got = group_norm_forward(layer.bfloat16(), x, silu=True)
    assert got.is_contiguous(memory_format=layout) and got.dtype == torch.bfloat16
    assert rel_err(got, want) < 5e-3


@pytest.mark.parametrize("shape", [(1, 512, 67, 121), (2, 256, 45, 33)])
def test_transposed_upsample_matches_interpolate_then_conv(shape: tuple[int, ...]) -> None:
    from pipeline.kernels.upsample import UpsampleWeights, upsample2x_conv3x3

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(shape[1], shape[1], 3, padding=1).cuda()
    x = torch.randn(shape, device="cuda").bfloat16().to(memory_format=torch.channels_last)
    with torch.no_grad():
        want = conv(F.interpolate(x.float(), scale_factor=2.0, mode="nearest"))
        conv = conv.bfloat16().to(memory_format=torch.channels_last)
        got = upsample2x_conv3x3(x, UpsampleWeights().of(conv.weight), conv.bias)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert rel_err(got, want) < 1e-2
