"""A decoder's layers made to work on a band of a frame's rows as if they saw the whole
frame, by replacing the forward of each layer instance that reaches across rows:

    3x3 convolutions (Conv2d,       the row above and the row below the band come from the
      Wan's causal Conv3d)          neighbouring ranks (rows.with_halo): a halo exchange at
                                    every such layer, before it runs. A causal convolution
                                    exchanges its cached frames' rows with the new ones:
                                    every rank's cache holds its own band's past.
    GroupNorm (AutoencoderKL)       each rank's per-group count, mean and variance, gathered
                                    and merged (Chan): the whole frame's statistics, so
                                    the band is normalised as the one-process decode does
    mid-block attention             global over the frame. AutoencoderKL: the band's queries
                                    attend to the whole frame's keys and values (the
                                    normalised frame gathered, passed as the attention's
                                    context): each rank computes 1/N of the attention.
                                    Wan: the latent frame is gathered and attended whole
                                    (at latent resolution this is a few milliseconds) and
                                    the band's rows kept.

Everything else in these decoders is per position or per row and needs nothing: the 1x1
convolutions, nearest upsampling (a band's rows double with it), SiLU, and Wan's RMS
norm, which normalises each position over its channels (no statistics span positions,
so nothing is reduced across ranks for it).

The layers run diffusers' own forwards around these: the leaner forwards of
`pipeline.kernels` (which call the convolutions' functions directly, past any patched
forward) are removed from the model first, except the GroupNorm statistics and
normalisation kernels, which the GroupNorm forward here uses. The model is then this
decode's alone: `patch_decoder` is called on a model loaded for it.
"""

from __future__ import annotations

import types
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from pipeline.decode.patches.devices import SUPPORTED
from pipeline.decode.patches.rows import RowSplit, all_rows, with_halo
from pipeline.kernels.group_norm import group_statistics, merge_statistics, normalise




def conv2d_forward(self: torch.nn.Conv2d, split: RowSplit, x: torch.Tensor) -> torch.Tensor:
    x = with_halo(x, self.padding[0], split)   # the halo stands in for the top and bottom padding
    return F.conv2d(x, self.weight, self.bias, self.stride, (0, self.padding[1]), self.dilation, self.groups)


def causal_conv3d_forward(self: Any, split: RowSplit, x: torch.Tensor, cache_x: torch.Tensor | None = None
                          ) -> torch.Tensor:
    """diffusers' WanCausalConv3d.forward with the rows' padding taken from the neighbours."""
    padding = list(self._padding)   # (w, w, h, h, 2t, 0)
    if cache_x is not None and padding[4] > 0:
        x = torch.cat([cache_x.to(x.device), x], dim=2)
        padding[4] -= cache_x.shape[2]
    x = with_halo(x, padding[2], split)
    padding[2] = padding[3] = 0
    return torch.nn.Conv3d.forward(self, F.pad(x, padding))


def group_norm_forward(self: torch.nn.GroupNorm, split: RowSplit, x: torch.Tensor) -> torch.Tensor:
    mean, var = group_statistics(x, self.num_groups)                  # (B, G) of this band
    count = torch.full_like(mean, x[0].numel() / self.num_groups)
    mine = torch.stack([count, mean, var])
    every = [torch.empty_like(mine) for _ in range(split.world)]
    dist.all_gather(every, mine, group=split.group)
    parts = torch.stack(every)                                        # (N, 3, B, G)
    counts = parts[:, 0, 0, 0]
    mean, var = merge_statistics(counts, parts[:, 1], parts[:, 2])
    return normalise(x, self, mean, var)


def kl_attention_forward(self: Any, split: RowSplit, hidden_states: torch.Tensor, *args: Any, **kwargs: Any
                         ) -> torch.Tensor:
    """The band's rows attend to the whole frame: diffusers' processor given the band as
    the queries' input and the whole normalised frame as the context (keys, values);
    its group norm (the patched one) normalises the band with the frame's statistics."""
    band = hidden_states.contiguous()   # diffusers' processor views (B, C, H, W) as (B, C, H*W)
    normed = band if self.group_norm is None else self.group_norm(band)
    whole, _ = all_rows(normed, split)
    context = whole.flatten(2).transpose(1, 2)                        # (B, H*W, C)
    return type(self).forward(self, band, encoder_hidden_states=context, **kwargs)


def wan_attention_forward(self: Any, split: RowSplit, x: torch.Tensor) -> torch.Tensor:
    whole, start = all_rows(x, split)
    out = type(self).forward(self, whole)
    return out[..., start:start + x.shape[-2], :]


def _strip_fast_paths(vae: Any) -> None:
    """diffusers' class forwards back on every layer (`pipeline.kernels` sets instance ones)."""
    for module in vae.modules():
        vars(module).pop("forward", None)


def _check(conv: torch.nn.Module, row_padding: int) -> None:
    """Refuse a convolution whose rows a halo cannot supply: strided, dilated, not zero
    padded, or not padded by half its odd kernel height (the decoders' 3x3s are)."""
    kernel = conv.kernel_size[-2]
    if (tuple(conv.stride[-2:]) != (1, 1) or tuple(conv.dilation[-2:]) != (1, 1) or conv.padding_mode != "zeros"
            or kernel % 2 == 0 or row_padding != kernel // 2):
        raise ValueError(f"a {type(conv).__name__} with kernel {conv.kernel_size}, stride {conv.stride} and row "
                         f"padding {row_padding} cannot be split into bands of rows")


def patch_decoder(vae: Any, split: RowSplit) -> int:
    """Make `vae`'s decoder decode a band of rows of `split` (in place); returns how many
    layers changed. Raises ValueError for a VAE or a layer this does not know."""
    name = type(vae).__name__
    if name not in SUPPORTED:
        raise ValueError(f"a {name} cannot be decoded across processes (supported: {', '.join(SUPPORTED)})")
    _strip_fast_paths(vae)
    wan = None
    if name == "AutoencoderKLWan":
        from diffusers.models.autoencoders import autoencoder_kl_wan as wan
    from diffusers.models.attention_processor import Attention

    changed = 0

    def install(module: torch.nn.Module, forward: Any) -> None:
        nonlocal changed
        module.forward = types.MethodType(lambda self, *a, **k: forward(self, split, *a, **k), module)
        changed += 1

    for module in vae.decoder.modules():
        if wan is not None and isinstance(module, wan.WanCausalConv3d):
            _check(module, module._padding[2])
            install(module, causal_conv3d_forward)
        elif isinstance(module, torch.nn.Conv2d) and module.kernel_size[0] > 1:
            _check(module, int(module.padding[0]))
            install(module, conv2d_forward)
        elif isinstance(module, torch.nn.GroupNorm):
            install(module, group_norm_forward)
        elif isinstance(module, Attention):
            install(module, kl_attention_forward)
        elif wan is not None and isinstance(module, wan.WanAttentionBlock):
            install(module, wan_attention_forward)
        elif isinstance(module, torch.nn.Conv3d) and max(module.kernel_size[-2:]) > 1:
            raise ValueError(f"a {type(module).__name__} with kernel {module.kernel_size} cannot be split into "
                             "bands of rows")
    return changed
