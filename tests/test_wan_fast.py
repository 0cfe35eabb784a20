"""The lean Wan forwards (pipeline.kernels.wan) compute what diffusers' own forwards
compute: the same decode to float32 rounding, and within bfloat16 rounding in bfloat16."""

from __future__ import annotations

import copy
import math

import torch

from pipeline.decode.video.chunks import decode_chunks
from pipeline.kernels.wan import use_lean_wan_forwards


def tiny_wan(dtype: torch.dtype) -> torch.nn.Module:
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
                           temperal_downsample=[False, True, True], latents_mean=[0.0] * 4,
                           latents_std=[1.0] * 4)
    with torch.no_grad():  # trained norms are not all ones: make the gammas count
        for name, parameter in vae.named_parameters():
            if name.endswith("gamma"):
                parameter.uniform_(0.5, 1.5)
    return vae.to(dtype).eval()


def decode_both(vae: torch.nn.Module, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole-clip decode (diffusers' loop) and our chunked decode, as float32."""
    with torch.no_grad():
        whole = vae.decode(latents).sample.float()
        chunked = torch.cat(list(decode_chunks(vae, latents)), dim=2).float()
    return whole, chunked


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10 * math.log10(4.0 / ((a - b) ** 2).mean().item())   # pixels span [-1, 1]


def test_lean_forwards_decode_like_diffusers() -> None:
    latents = torch.randn(1, 4, 5, 6, 8, generator=torch.Generator().manual_seed(1))
    reference = tiny_wan(torch.float32)
    lean = copy.deepcopy(reference)
    assert use_lean_wan_forwards(lean) > 0
    expected, _ = decode_both(reference, latents)
    assert expected.std().item() > 0.1   # not a decode of nothing
    for got in decode_both(lean, latents):   # float32: the same to rounding
        assert (got - expected).abs().max().item() <= 1e-5
    # bfloat16 rounds in other places than diffusers' forwards do: as close to the
    # float32 decode as diffusers' own bfloat16 decode is (51.9 dB both when written)
    reference_bf16 = tiny_wan(torch.bfloat16)
    lean_bf16 = copy.deepcopy(reference_bf16)
    use_lean_wan_forwards(lean_bf16)
    diffusers_psnr = psnr(decode_both(reference_bf16, latents.bfloat16())[0], expected)
    for got in decode_both(lean_bf16, latents.bfloat16()):
        assert psnr(got, expected) >= diffusers_psnr - 1.0 >= 40.0


def test_nearest_upsample_in_bfloat16_is_bit_identical() -> None:
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanUpsample

    from pipeline.kernels.wan import upsample_forward

    up = WanUpsample(scale_factor=(2.0, 2.0), mode="nearest-exact")
    x = torch.randn(3, 5, 7, 9).to(torch.bfloat16)
    assert torch.equal(upsample_forward(up, x), up(x))


def test_other_models_are_left_alone() -> None:
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(block_out_channels=[8], norm_num_groups=4, latent_channels=4)
    assert use_lean_wan_forwards(vae) == 0
