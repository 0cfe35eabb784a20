"""Whole-frame attention for a VAE's mid block, in query chunks through cuBLAS.

An SD-class VAE attends once over every latent cell of the frame, with one head of
512 channels: 129,600 cells at 3840x2160. PyTorch's flash and cuDNN kernels stop at
256 channels a head, so scaled_dot_product_attention falls back to its
memory-efficient kernel, which took a third of the whole decode
(benchmarks/RESULTS.md, 'Micro-task decode'). Here the same product is two batched matmuls per chunk of query
rows, with the logits in float32 (the matmul accumulates in float32 and, where
PyTorch offers it, writes float32) and a float32 softmax written straight to the
values' dtype (`softmax`: one Triton kernel on CUDA): the same mathematics,
the rounding of a matmul rather than of that kernel. Chunks bound the extra memory to
about `chunk_bytes` of logits, twice over while the softmax runs.

Used only where it pays: CUDA tensors, no mask, no cross-attention, heads wider than
256 channels; everything else goes to diffusers' own AttnProcessor2_0.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from pipeline.kernels.softmax import scaled_softmax

FLASH_HEAD_LIMIT = 256          # the widest head PyTorch's fused attention kernels take


def chunked_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      chunk_bytes: int = 2**30) -> torch.Tensor:
    """softmax(q kᵀ / sqrt(d)) v for (B, H, N, D) tensors, N query rows at a time."""
    b, h, n, d = query.shape
    q = query.reshape(b * h, n, d)
    kt = key.reshape(b * h, -1, d).transpose(1, 2)
    v = value.reshape(b * h, -1, d)
    out = torch.empty_like(q)
    rows = max(1, chunk_bytes // (4 * kt.shape[-1] * b * h))
    scale = d ** -0.5
    for start in range(0, n, rows):
        weights = scaled_softmax(_logits(q[:, start:start + rows], kt), scale, v.dtype)
        out[:, start:start + rows] = torch.bmm(weights, v)
    return out.reshape(b, h, n, d)


def _logits(q: torch.Tensor, kt: torch.Tensor) -> torch.Tensor:
    if q.dtype != torch.float32 and q.is_cuda:
        try:
            return torch.bmm(q, kt, out_dtype=torch.float32)  # bf16/fp16 in, float32 out
        except (TypeError, RuntimeError):
            pass  # a PyTorch without out_dtype: logits in the input dtype, softmax in float32
    return torch.bmm(q, kt).float()


class WholeFrameAttnProcessor(AttnProcessor2_0):
    """diffusers' processor, with the attention itself chunked where that pays."""

    devices: tuple[str, ...] = ("cuda",)   # where it pays; tests widen it to check the CPU path

    def __call__(self, attn: Attention, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 *args: Any, **kwargs: Any) -> torch.Tensor:
        head_dim = attn.to_q.out_features // attn.heads
        if (hidden_states.device.type not in self.devices or head_dim <= FLASH_HEAD_LIMIT or hidden_states.ndim != 4
                or encoder_hidden_states is not None or attention_mask is not None
                or attn.spatial_norm is not None or attn.norm_q is not None or attn.norm_k is not None):
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb,
                                    *args, **kwargs)
        # AttnProcessor2_0's steps for this case, with chunked_attention for the SDPA call
        residual = hidden_states
        batch, channels, height, width = hidden_states.shape
        x = hidden_states.view(batch, channels, height * width).transpose(1, 2)
        if attn.group_norm is not None:
            x = attn.group_norm(x.transpose(1, 2)).transpose(1, 2)
        q, k, v = (proj(x).view(batch, -1, attn.heads, head_dim).transpose(1, 2)
                   for proj in (attn.to_q, attn.to_k, attn.to_v))
        x = chunked_attention(q, k, v).transpose(1, 2).reshape(batch, -1, attn.heads * head_dim)
        x = attn.to_out[1](attn.to_out[0](x.to(q.dtype)))
        x = x.transpose(-1, -2).reshape(batch, channels, height, width)
        if attn.residual_connection:
            x = x + residual
        return x / attn.rescale_output_factor


def use_whole_frame_attention(vae: Any) -> None:
    """Install the processor on every attention layer of a diffusers model that has any."""
    if hasattr(vae, "set_attn_processor") and getattr(vae, "attn_processors", None):
        vae.set_attn_processor(WholeFrameAttnProcessor())
