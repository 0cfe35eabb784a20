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

The layers keep the forwards `load_vae` installs (`pipeline.kernels`: channels-last,
fused norms and bias passes), which call the convolutions' functions directly: each
3x3 convolution is given a `row_halo` that those functions (kernels.kl_decoder.convolve
and the lean upsampling, kernels.wan._convolve) call for the rows they would have
padded with zeros; a Conv2d called as a module (conv_in, conv_out in diffusers' own
Decoder.forward) gets a forward that does the same. The model is then this decode's
alone: `patch_decoder` is called on a model loaded for it.
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
    """A Conv2d called as a module (diffusers' own forwards call conv_in, conv_out so)."""
    rows, columns = int(self.padding[0]), int(self.padding[1])
    x = with_halo(x, rows, split)   # the halo stands in for the top and bottom padding
    return F.conv2d(x, self.weight, self.bias, self.stride, (0, columns), self.dilation, self.groups)


def group_norm_forward(self: torch.nn.GroupNorm, split: RowSplit, x: torch.Tensor, silu: bool = False
                       ) -> torch.Tensor:
    """GroupNorm (then SiLU, with `silu`: kernels.group_norm's forward) with the whole
    frame's statistics: each rank's per-group count, mean and variance, merged."""
    mean, var = group_statistics(x, self.num_groups)                  # (B, G) of this band
    count = torch.full_like(mean, x[0].numel() / self.num_groups)
    mine = torch.stack([count, mean, var])
    every = [torch.empty_like(mine) for _ in range(split.world)]
    dist.all_gather(every, mine, group=split.group)
    parts = torch.stack(every)                                        # (N, 3, B, G)
    mean, var = merge_statistics(parts[:, 0, 0, 0], parts[:, 1], parts[:, 2])
    return normalise(x, self, mean, var, silu=silu)


def kl_attention_forward(self: Any, split: RowSplit, inner: Any, hidden_states: torch.Tensor, *args: Any,
                         **kwargs: Any) -> torch.Tensor:
    """The band's rows attend to the whole frame: the attention's processor given the band
    as the queries' input and the whole normalised frame as the context (keys, values);
    its group norm (the patched one) normalises the band with the frame's statistics."""
    hidden_states = hidden_states.contiguous()   # diffusers' processor views (B, C, H, W) as (B, C, H*W)
    normed = hidden_states if self.group_norm is None else self.group_norm(hidden_states)
    whole, _ = all_rows(normed, split)
    context = whole.permute(0, 2, 3, 1).reshape(whole.shape[0], -1, whole.shape[1])   # (B, H*W, C)
    return inner(hidden_states, encoder_hidden_states=context, **kwargs)


def wan_attention_forward(self: Any, split: RowSplit, inner: Any, x: torch.Tensor) -> torch.Tensor:
    """Each latent frame gathered and attended whole (its own forward), the band's rows kept."""
    whole, start = all_rows(x, split)
    return inner(whole)[..., start:start + x.shape[-2], :]


def _check(conv: Any, row_padding: int) -> None:
    """Refuse a convolution whose rows a halo cannot supply: strided, dilated, not zero
    padded, or not padded by half its odd kernel height (the decoders' 3x3s are)."""
    kernel = conv.kernel_size[-2]
    if (tuple(conv.stride[-2:]) != (1, 1) or tuple(conv.dilation[-2:]) != (1, 1) or conv.padding_mode != "zeros"
            or kernel % 2 == 0 or row_padding != kernel // 2):
        raise ValueError(f"a {type(conv).__name__} with kernel {conv.kernel_size}, stride {conv.stride} and row "
                         f"padding {row_padding} cannot be split into bands of rows")


def _is(module: Any, kind: type) -> bool:
    return isinstance(module, kind)


def _give_halo(conv: Any, halo: Any) -> None:
    """The hook the kernels' convolution functions call for the rows beyond the band."""
    conv.row_halo = halo


def patch_decoder(vae: Any, split: RowSplit) -> int:
    """Make `vae`'s decoder decode a band of rows of `split` (in place); returns how many
    layers changed. The model must have been loaded by `load_vae` (its forwards are
    the ones this knows). Raises ValueError for a VAE or a layer this does not know."""
    name = type(vae).__name__
    if name not in SUPPORTED:
        raise ValueError(f"a {name} cannot be decoded across processes (supported: {', '.join(SUPPORTED)})")
    from diffusers.models.attention_processor import Attention

    wan_classes: tuple[type, ...] = ()
    if name == "AutoencoderKLWan":
        from diffusers.models.autoencoders import autoencoder_kl_wan as wan
        wan_classes = (wan.WanCausalConv3d, wan.WanAttentionBlock)

    def halo(x: torch.Tensor, rows: int) -> torch.Tensor:
        return with_halo(x, rows, split)

    changed = 0

    def install(module: Any, forward: Any, *, wrap: bool = False) -> None:
        nonlocal changed
        inner = module.forward   # the forward installed before (kernels'), or the class's
        if wrap:
            module.forward = types.MethodType(lambda self, *a, **k: forward(self, split, inner, *a, **k), module)
        else:
            module.forward = types.MethodType(lambda self, *a, **k: forward(self, split, *a, **k), module)
        changed += 1

    modules: list[Any] = list(vae.decoder.modules())
    for module in modules:
        if wan_classes and _is(module, wan_classes[0]):
            _check(module, module._padding[2])
            if "forward" not in vars(module):   # its forward must be kernels.wan's, which calls the hook
                raise ValueError("a Wan VAE's causal convolutions need the forwards load_vae installs")
            _give_halo(module, halo)
            changed += 1
        elif _is(module, torch.nn.Conv2d) and module.kernel_size[0] > 1:
            _check(module, int(module.padding[0]))
            _give_halo(module, halo)   # for the kernels' forwards, which call the convolution's function
            install(module, conv2d_forward)
        elif isinstance(module, torch.nn.GroupNorm):
            install(module, group_norm_forward)
        elif isinstance(module, Attention):
            install(module, kl_attention_forward, wrap=True)
        elif wan_classes and _is(module, wan_classes[1]):
            install(module, wan_attention_forward, wrap=True)
        elif isinstance(module, torch.nn.Conv3d) and max(module.kernel_size[-2:]) > 1:
            raise ValueError(f"a {type(module).__name__} with kernel {module.kernel_size} cannot be split into "
                             "bands of rows")
    return changed
