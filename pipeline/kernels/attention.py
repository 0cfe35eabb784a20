"""Whole-frame attention for a VAE's mid block, where one head is wider than PyTorch's
fused kernels take.

An SD-class VAE attends once over every latent cell of the frame, with one head of
512 channels (Wan's: 384): 129,600 cells at 3840x2160. PyTorch's flash and cuDNN
kernels stop at 256 channels a head, so scaled_dot_product_attention falls back to
its memory-efficient kernel, a third of the whole decode (benchmarks/RESULTS.md,
'Micro-task decode'). Here, on CUDA:

- `wide_attention`: one fused Triton kernel (online softmax, the logits never written);
- where Triton cannot compile, the same product as two batched matmuls per chunk of
  query rows with float32 logits and a fused softmax (`softmax`): the same
  mathematics, with the logits in memory, `chunk_bytes` of them at a time.

The processor also takes channels-last activations: the cells of a channels-last
(B, C, H, W) tensor are already (B, H*W, C) rows, so nothing is transposed.
A context (`encoder_hidden_states`, taken as it is) gives the keys and values: a frame
decoded in bands across processes attends each band's rows to the whole frame.
Everything it does not cover (masks, a normalised context, spatial norms, heads of at
most 256 channels, the CPU) goes to diffusers' own AttnProcessor2_0.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from pipeline.kernels.softmax import scaled_softmax

try:
    from pipeline.kernels import wide_attention
except ImportError:  # CPU-only PyTorch builds come without Triton
    wide_attention = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

FLASH_HEAD_LIMIT = 256          # the widest head PyTorch's fused attention kernels take
_broken: list[str] = []         # why the fused kernel cannot run here, once found out


def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """softmax(q kᵀ / sqrt(d)) v for (B, H, N, D) CUDA tensors: the fused kernel where it
    runs, else query chunks through cuBLAS."""
    if wide_attention is not None and not _broken and query.shape[-1] in wide_attention.SUPPORTED_HEAD_DIMS:
        try:
            return wide_attention.attention(query, key, value)
        except Exception as err:  # Triton's compile errors have no common base class
            _broken.append(f"{type(err).__name__}: {err}")
            log.warning("fused wide attention unavailable, using chunked matmuls: %s",
                        _broken[0].splitlines()[0])
    return chunked_attention(query, key, value)


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
    """diffusers' processor, with the attention itself done here where that pays."""

    devices: tuple[str, ...] = ("cuda",)   # where it pays; tests widen it to check the CPU path

    def __call__(self, attn: Attention, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 *args: Any, **kwargs: Any) -> torch.Tensor:
        head_dim = attn.to_q.out_features // attn.heads
        if (hidden_states.device.type not in self.devices or head_dim <= FLASH_HEAD_LIMIT or hidden_states.ndim != 4
                or (encoder_hidden_states is not None and (attn.norm_cross or encoder_hidden_states.ndim != 3))
                or attention_mask is not None
                or attn.spatial_norm is not None or attn.norm_q is not None or attn.norm_k is not None):
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb,
                                    *args, **kwargs)
        # AttnProcessor2_0's steps for this case, on (B, H*W, C) rows taken without a copy
        # from a channels-last tensor (with one from an NCHW one)
        residual = hidden_states
        batch, channels, height, width = hidden_states.shape
        x = hidden_states if attn.group_norm is None else attn.group_norm(hidden_states)
        x = x.permute(0, 2, 3, 1).reshape(batch, height * width, channels)
        # a context (B, N, C) gives the keys and values: the rows of a frame split in bands
        # across processes attend to the whole frame (pipeline.decode.patches)
        context = x if encoder_hidden_states is None else encoder_hidden_states
        q, k, v = (proj(rows).view(batch, -1, attn.heads, head_dim).transpose(1, 2)
                   for proj, rows in ((attn.to_q, x), (attn.to_k, context), (attn.to_v, context)))
        fused = attention if hidden_states.is_cuda else chunked_attention
        x = fused(q, k, v).transpose(1, 2).reshape(batch, -1, attn.heads * head_dim)
        x = attn.to_out[1](attn.to_out[0](x.to(q.dtype)))
        x = x.reshape(batch, height, width, channels).permute(0, 3, 1, 2)   # channels-last (B, C, H, W)
        if attn.residual_connection:
            x = x + residual
        return x if attn.rescale_output_factor == 1 else x / attn.rescale_output_factor


def use_whole_frame_attention(vae: Any) -> None:
    """Install the processor on every attention layer of a diffusers model that has any."""
    if hasattr(vae, "set_attn_processor") and getattr(vae, "attn_processors", None):
        vae.set_attn_processor(WholeFrameAttnProcessor())
