"""What a loaded VAE gets in place of diffusers' slowest steps, in one list: the
chunked whole-frame attention (attention.py), the Wan decoder's leaner forwards
(wan_fast.py) and, on CUDA, GroupNorm by spread-out reductions (group_norm.py). Each
computes what the step it replaces computes, and has a test against it."""

from __future__ import annotations

import torch

from pipeline.kernels.attention import use_whole_frame_attention
from pipeline.kernels.group_norm import use_fast_group_norm
from pipeline.kernels.wan import use_lean_wan_forwards


def use_fast_paths(vae: torch.nn.Module, device: torch.device) -> None:
    use_whole_frame_attention(vae)
    use_lean_wan_forwards(vae)
    if device.type == "cuda":   # the CPU GroupNorm kernel is not the one that starves
        use_fast_group_norm(vae)
