"""The layered decode (pipeline.decode.layered): a whole AutoencoderKL frame, layer by
layer over bands of rows, equals diffusers' untiled decode, however the rows are banded."""

from __future__ import annotations

import copy

import diffusers
import pytest
import torch
from test_kl_decoder import small_kl_vae

from pipeline.decode import layered
from pipeline.decode.layered import LayeredFrame, fits, modelled_bytes
from pipeline.kernels.install import use_fast_paths


@pytest.mark.parametrize("band_bytes", [2**30, 20_000, 1])   # one band, a few rows each, one row each
def test_layered_decode_equals_untiled_decode(band_bytes: int, monkeypatch: pytest.MonkeyPatch) -> None:
    vae = small_kl_vae()
    latents = torch.randn(4, 11, 7, generator=torch.Generator().manual_seed(4))   # odd sizes
    with torch.no_grad():
        want = vae.decode(latents[None]).sample[0]
        fast = copy.deepcopy(vae)
        use_fast_paths(fast, torch.device("cpu"))
        monkeypatch.setattr(layered, "BAND_BYTES", band_bytes)
        got = LayeredFrame(fast)(latents)
    assert got.shape == want.shape and want.std() > 0.05
    # float32: the transposed convolution's summed taps and the band-merged statistics round differently
    assert (got - want).abs().max() < 1e-4, (got - want).abs().max()


def test_fits_only_decoders_it_knows() -> None:
    assert fits(small_kl_vae())
    assert not fits(diffusers.AutoencoderTiny())
    odd = small_kl_vae()
    odd.decoder.conv_act = torch.nn.ReLU()
    assert not fits(odd)


def test_memory_model_of_an_sd_class_4k_frame() -> None:
    """Three 128-channel full-resolution activations (2 GiB each in bf16) and the bands."""
    peak = modelled_bytes((128, 256, 512, 512), 2160, 3840, 2)
    assert 5.9 * 2**30 < peak < 7.5 * 2**30
