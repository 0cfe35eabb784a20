"""The real-size model configs the GPU benchmarks share, built with random weights
(no weights can be downloaded here; the compute is the same)."""

from __future__ import annotations

import diffusers


def sd_class_vae() -> diffusers.AutoencoderKL:
    """Stable Diffusion's VAE architecture: block_out_channels 128/256/512/512."""
    return diffusers.AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
        norm_num_groups=32, sample_size=512, scaling_factor=0.18215)
