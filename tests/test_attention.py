"""Whole-frame attention in query chunks (pipeline.kernels.attention) against PyTorch's fused
attention and diffusers' own processor, on the CPU in float32."""

from __future__ import annotations

import diffusers
import pytest
import torch
import torch.nn.functional as F

from pipeline.kernels.attention import WholeFrameAttnProcessor, chunked_attention


@pytest.mark.parametrize("chunk_bytes", [64 * 4 * 300, 2**30])   # many chunks (one of 64 rows), and one
def test_chunked_attention_is_scaled_dot_product_attention(chunk_bytes: int) -> None:
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 1, 300, 320, generator=gen) for _ in range(3))
    got = chunked_attention(q * 3, k, v, chunk_bytes=chunk_bytes)  # * 3: a peaked softmax too
    assert torch.allclose(got, F.scaled_dot_product_attention(q * 3, k, v), atol=1e-5)


def test_the_processor_decodes_as_diffusers_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """A VAE whose mid-block head is wider than the fused kernels take (320 channels)."""
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 320),
                                  norm_num_groups=32, latent_channels=4).eval()
    latents = torch.randn(1, 4, 12, 20)
    calls: list[int] = []
    real = chunked_attention

    def counted(*args: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return real(*args)

    with torch.no_grad():
        want = vae.decode(latents).sample
        vae.set_attn_processor(WholeFrameAttnProcessor())
        monkeypatch.setattr("pipeline.kernels.attention.chunked_attention", counted)
        assert torch.equal(vae.decode(latents).sample, want), "on the CPU it leaves diffusers' path alone"
        monkeypatch.setattr(WholeFrameAttnProcessor, "devices", ("cpu", "cuda"))
        got = vae.decode(latents).sample
    assert calls, "the chunked path did not run"
    assert torch.allclose(got, want, atol=1e-4)
