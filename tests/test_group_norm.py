"""GroupNorm by two reductions and one batch-norm pass (pipeline.kernels.group_norm) equals
PyTorch's GroupNorm; a synced tiled decode leaves the installed forward in place."""

from __future__ import annotations

import torch

from pipeline.decode.shared_norm import FrameNormStats
from pipeline.kernels.group_norm import group_statistics, use_fast_group_norm


def test_fast_group_norm_equals_torch_group_norm() -> None:
    gen = torch.Generator().manual_seed(0)
    layer = torch.nn.GroupNorm(4, 16, eps=1e-6)
    with torch.no_grad():
        layer.weight.copy_(torch.rand(16, generator=gen) + 0.5)
        layer.bias.copy_(torch.randn(16, generator=gen))
    x = torch.randn(3, 16, 9, 11, generator=gen) * 3 + 2   # a mean away from zero
    want = layer(x)
    assert use_fast_group_norm(torch.nn.Sequential(layer)) == 1
    got = layer(x)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    mean, var = group_statistics(x, 4)
    grouped = x.reshape(3, 4, -1).double()
    assert torch.allclose(mean.double(), grouped.mean(-1), atol=1e-5)
    assert torch.allclose(var.double(), grouped.var(-1, unbiased=False), rtol=1e-4)


def test_synced_decode_restores_the_installed_forward() -> None:
    model = torch.nn.Sequential(torch.nn.GroupNorm(2, 4))
    use_fast_group_norm(model)
    installed = vars(model[0])["forward"]
    norm = FrameNormStats(model)
    with norm.recording():
        model(torch.randn(1, 4, 3, 3))
    assert vars(model[0])["forward"] is installed
    plain = torch.nn.Sequential(torch.nn.GroupNorm(2, 4))
    with FrameNormStats(plain).recording():
        plain(torch.randn(1, 4, 3, 3))
    assert "forward" not in vars(plain[0])   # the class's forward again
