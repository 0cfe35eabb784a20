"""What a loaded VAE gets in place of diffusers' slowest steps, in one list. Each
computes what the step it replaces computes, and has a test against it:

- GroupNorm layers that can fuse the SiLU after them (`group_norm`: Triton on CUDA);
- an AutoencoderKL's decoder blocks leaner, and on CUDA in channels-last (`kl_decoder`);
- the Wan decoder's leaner forwards (`wan`);
- whole-frame attention for heads wider than PyTorch's fused kernels take (`attention`).
"""

from __future__ import annotations

from typing import Any

import torch

from pipeline.kernels.attention import use_whole_frame_attention
from pipeline.kernels.group_norm import use_fast_group_norm
from pipeline.kernels.kl_decoder import use_lean_kl_decoder
from pipeline.kernels.wan import use_lean_wan_forwards


def use_fast_paths(vae: Any, device: torch.device) -> None:
    use_fast_group_norm(vae)
    # cuDNN's fast convolutions read and write channels-last; the CPU's are as fast in NCHW
    use_lean_kl_decoder(vae, channels_last=device.type == "cuda")
    use_lean_wan_forwards(vae)
    use_whole_frame_attention(vae)
