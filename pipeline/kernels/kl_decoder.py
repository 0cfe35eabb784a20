"""Leaner forwards for an AutoencoderKL decoder (the SD, SDXL, SD3 and Flux VAEs), run
in channels-last.

cuDNN's fast convolutions on Hopper read and write channels-last (NHWC) tensors; in
diffusers' NCHW every convolution paid a layout conversion on each side. With the
decoder's weights in channels-last, every activation stays channels-last from conv_in
to conv_out, and the work between convolutions takes as few passes as it can:

- ResnetBlock2D: GroupNorm and SiLU in one pass (`group_norm`); each convolution's bias
  added in one vectorised pass (`rms_norm.add_bias`), with the residual after conv2;
- Upsample2D: nearest 2x upsampling then a 3x3 convolution, computed as one transposed
  convolution of the low-resolution input (`upsample`): 4/9 of the multiply-adds, and
  the 4x larger upsampled tensor is never made.

Installed per module instance, only on the blocks whose configuration these forwards
cover (the decoder's: no time embedding, no resampling inside a resnet); any other
block keeps diffusers' forward. tests/test_kl_decoder.py checks the decode against
diffusers' own forwards.
"""

from __future__ import annotations

import types
from typing import Any

import torch
import torch.nn.functional as F

from pipeline.kernels.rms_norm import add_bias_
from pipeline.kernels.upsample import UpsampleWeights, upsample2x_conv3x3


def convolve(conv: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """conv(x) without its bias: the caller adds the bias in a pass it makes anyway
    (rms_norm.add_bias). PyTorch adds a cuDNN convolution's bias in a pass of its own,
    a broadcast add that is not vectorised for channels-last outputs.

    A convolution given a `row_halo` (a decode split into bands of rows across processes,
    pipeline.decode.patches) reads the rows above and below its band from it, in place of
    its zero padding at the top and bottom."""
    padding: Any = conv.padding
    halo = getattr(conv, "row_halo", None)
    if halo is not None and padding[0]:
        x = halo(x, padding[0])
        padding = (0, padding[1])
    return F.conv2d(x, conv.weight, None, conv.stride, padding, conv.dilation, conv.groups)


def resnet_forward(self: Any, input_tensor: torch.Tensor, temb: torch.Tensor | None = None,
                   *args: Any, **kwargs: Any) -> torch.Tensor:
    x = add_bias_(convolve(self.conv1, self.norm1(input_tensor, silu=True)), [self.conv1.bias])
    x = convolve(self.conv2, self.norm2(x, silu=True))   # dropout: identity in eval
    shortcut = input_tensor if self.conv_shortcut is None else self.conv_shortcut(input_tensor)
    if self.output_scale_factor == 1:
        return add_bias_(x, [self.conv2.bias], residual=shortcut)   # x is conv2's fresh output
    return (shortcut + add_bias_(x, [self.conv2.bias])) / self.output_scale_factor


def upsample_forward(self: Any, hidden_states: torch.Tensor, output_size: Any = None,
                     *args: Any, **kwargs: Any) -> torch.Tensor:
    if output_size is not None:   # a forced size is not a plain 2x: diffusers' way
        return type(self).forward(self, hidden_states, output_size, *args, **kwargs)
    conv = self.conv
    halo = getattr(conv, "row_halo", None)
    if halo is not None:   # one input row each side makes the two output rows each side the 3x3 reads
        up = upsample2x_conv3x3(halo(hidden_states, 1), self.upsample_weights.of(conv.weight), None)[..., 2:-2, :]
        return add_bias_(up, [conv.bias])
    return add_bias_(upsample2x_conv3x3(hidden_states, self.upsample_weights.of(conv.weight), None), [conv.bias])


def lean_resnet(module: Any) -> bool:
    """A resnet these forwards compute exactly as diffusers does."""
    return (type(module).__name__ == "ResnetBlock2D" and module.upsample is None and module.downsample is None
            and module.time_emb_proj is None and module.time_embedding_norm in ("default", "group")
            and isinstance(module.nonlinearity, torch.nn.SiLU)
            and module.conv1.padding_mode == module.conv2.padding_mode == "zeros"
            and all(isinstance(n, torch.nn.GroupNorm) for n in (module.norm1, module.norm2)))


def lean_upsample(module: Any) -> bool:
    conv = getattr(module, "conv", None)
    return (type(module).__name__ == "Upsample2D" and module.use_conv and not module.use_conv_transpose
            and module.interpolate and module.norm is None and module.name == "conv"
            and isinstance(conv, torch.nn.Conv2d) and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1)


def use_lean_kl_decoder(vae: Any, *, channels_last: bool) -> int:
    """Give an AutoencoderKL's decoder the forwards above (its GroupNorm layers must
    already take `silu`: kernels.group_norm.use_fast_group_norm); with `channels_last`,
    its weights in channels-last too. Returns how many modules changed (0 for any
    other model)."""
    if type(vae).__name__ != "AutoencoderKL":
        return 0
    changed = 0
    for module in vae.decoder.modules():
        if lean_resnet(module):
            module.forward = types.MethodType(resnet_forward, module)
            changed += 1
        elif lean_upsample(module):
            module.upsample_weights = UpsampleWeights()
            module.forward = types.MethodType(upsample_forward, module)
            changed += 1
    if channels_last:
        vae.decoder.to(memory_format=torch.channels_last)
        if vae.post_quant_conv is not None:
            vae.post_quant_conv.to(memory_format=torch.channels_last)
    return changed
