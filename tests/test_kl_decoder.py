"""The lean AutoencoderKL decoder (pipeline.kernels.kl_decoder, with the fused GroupNorm
forward it relies on) decodes what diffusers' own forwards decode, in NCHW and in
channels-last, and keeps every convolution channels-last once asked to."""

from __future__ import annotations

import copy
import math

import diffusers
import pytest
import torch

from pipeline.kernels.group_norm import use_fast_group_norm
from pipeline.kernels.install import use_fast_paths
from pipeline.kernels.kl_decoder import use_lean_kl_decoder


def small_kl_vae(dtype: torch.dtype = torch.float32) -> diffusers.AutoencoderKL:
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 3,
                                  up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(32, 64, 64),
                                  layers_per_block=2, norm_num_groups=16, latent_channels=4)
    with torch.no_grad():  # trained norms are not identities: make their weights count
        for module in vae.modules():
            if isinstance(module, torch.nn.GroupNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.2)
    return vae.to(dtype).eval()


def lean(vae: diffusers.AutoencoderKL, *, channels_last: bool) -> diffusers.AutoencoderKL:
    model = copy.deepcopy(vae)
    use_fast_group_norm(model)
    changed = use_lean_kl_decoder(model, channels_last=channels_last)
    assert changed == 3 * 3 + 2 + 2   # 3 resnets per up block, 2 in the mid block, 2 upsamplers
    return model


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10 * math.log10(4.0 / ((a.float() - b.float()) ** 2).mean().item())   # pixels span [-1, 1]


@pytest.mark.parametrize("channels_last", [False, True])
def test_lean_decoder_decodes_like_diffusers(channels_last: bool) -> None:
    vae = small_kl_vae()
    latents = torch.randn(2, 4, 9, 13, generator=torch.Generator().manual_seed(1))   # odd sizes
    with torch.no_grad():
        want = vae.decode(latents).sample
        got = lean(vae, channels_last=channels_last).decode(latents).sample
    assert want.std() > 0.05   # not a decode of nothing
    # float32: only the upsampling's taps, summed before the convolution, round differently
    assert (got - want).abs().max() < 1e-4, (got - want).abs().max()


def test_bfloat16_stays_as_close_as_diffusers_own() -> None:
    latents = torch.randn(1, 4, 8, 10, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        exact = small_kl_vae().decode(latents).sample
        vae = small_kl_vae(torch.bfloat16)
        theirs = psnr(vae.decode(latents.bfloat16()).sample, exact)
        ours = psnr(lean(vae, channels_last=True).decode(latents.bfloat16()).sample, exact)
    assert ours >= theirs - 1.0 >= 30, (ours, theirs)


def test_every_convolution_stays_channels_last() -> None:
    model = lean(small_kl_vae(), channels_last=True)
    seen: list[str] = []

    def check(module: torch.nn.Module, args: tuple[torch.Tensor, ...], name: str) -> None:
        x = args[0]
        if x.shape[2] * x.shape[3] > 1 and not x.is_contiguous(memory_format=torch.channels_last):
            seen.append(name)

    for name, module in model.decoder.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            module.register_forward_pre_hook(lambda m, a, name=name: check(m, a, name))
    with torch.no_grad():
        out = model.decode(torch.randn(1, 4, 8, 10)).sample
    assert seen == [], f"NCHW input to {seen}"
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_other_models_and_blocks_are_left_alone() -> None:
    tiny = diffusers.AutoencoderTiny()
    assert use_lean_kl_decoder(tiny, channels_last=True) == 0
    vae = small_kl_vae()
    use_fast_paths(vae, torch.device("cpu"))
    encoder_resnet = vae.encoder.down_blocks[0].resnets[0]
    assert "forward" not in vars(encoder_resnet)   # only the decoder's blocks change
    assert all(p.is_contiguous() for p in vae.decoder.parameters())   # NCHW on the CPU


@pytest.mark.gpu
def test_lean_decoder_on_cuda_matches_diffusers_in_bfloat16() -> None:
    """The Triton GroupNorm, the transposed-convolution upsampling and channels-last cuDNN at a tile's
    size, against diffusers' own bfloat16 decode of the same weights."""
    vae = small_kl_vae(torch.bfloat16).cuda()
    latents = torch.randn(2, 4, 67, 45, generator=torch.Generator().manual_seed(3)).cuda().bfloat16()
    with torch.no_grad():
        exact = small_kl_vae().cuda().decode(latents.float()).sample
        theirs = vae.decode(latents).sample
        fast = copy.deepcopy(vae)
        use_fast_paths(fast, torch.device("cuda"))
        ours = fast.decode(latents).sample
    assert ours.is_contiguous(memory_format=torch.channels_last)
    assert psnr(ours, exact) >= psnr(theirs, exact) - 1.0
    assert psnr(ours, theirs) >= 40
