"""Leaner forwards for diffusers' Wan VAE decoder: channels-last activations end to end,
and each memory-bound step one pass over the activation.

Most of a Wan decode's time outside the convolutions is memory traffic, and in the
NCDHW layout diffusers uses, cuDNN adds more: it converts each convolution's input to
NDHWC and its output back (benchmarks/results/decode_profile_wan.txt). Here:

- layout: `use_channels_last` makes the decoder's convolution weights channels-last
  (channels_last_3d; the resample blocks' 2-D convolutions channels_last), and every
  forward below allocates its activations in its convolution's layout, so cuDNN reads
  and writes NDHWC directly. (B, C, T, H, W) <-> (B*T, C, H, W) are views in that
  layout (B and T are adjacent in memory), so nothing converts until the caller reads
  the decoded frames, which are then (H, W, 3)-contiguous per frame.
- causal convolution: one buffer per call holds the zero frames, the cached frames and
  the new ones; the spatial border is the convolution's own padding (cuDNN reads it as
  zeros). In the residual blocks and before conv_out the new frames are written into
  that buffer by the RMS norm + SiLU kernel itself (rms_norm.py), and the cache keeps a
  copy of the buffer's last CACHE_T real frames, as diffusers' cache does.
- bias: the convolutions run without bias (cuDNN's path adds it in a broadcast pass of
  its own, not vectorised for channels-last outputs); in the residual blocks conv1's is
  added by the norm2 kernel as it reads, conv2's and the shortcut's by the residual
  add's kernel, elsewhere by the bias kernel alone.
- upsampling: the upsample3d blocks' frame interleave and the 2x nearest upsampling
  are one strided copy into the 2-D convolution's input.
- attention (mid block): the 1x1 convolutions are matrix products over the positions'
  channel vectors, which channels-last makes rows already.

The cache entries, their order, their frames and diffusers' "Rep" marker are diffusers'
own, so the chunked (pipeline.decode.video.chunks) and tiled
(pipeline.decode.video.tiled) decodes, which drive the decoder's parts, see no
difference. Installed per module instance (the forward attribute), so diffusers'
classes stay untouched for every other model in the process; the weights are the same
objects. tests/test_wan_fast.py checks the decode against diffusers' own forwards and
that every convolution sees channels-last tensors.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from pipeline.kernels.rms_norm import add_bias_, rms_norm, upsample2x

CACHE_T = 2   # diffusers' CACHE_T: frames each causal convolution keeps for the next chunk

Cache = list   # per causal convolution: None, diffusers' "Rep" marker, or a tensor


def layout_of(weight: torch.Tensor) -> torch.memory_format:
    """The activation layout a convolution's weight stands for: channels-last when the
    weight is (its input channels innermost), else NC..."""
    if weight.stride(1) == 1 and weight.shape[1] > 1:
        return torch.channels_last_3d if weight.dim() == 5 else torch.channels_last
    return torch.contiguous_format


def canonical(x: torch.Tensor) -> torch.Tensor:
    """x as a view with PyTorch's own channels-last strides, if it is channels-last. A size-1
    dimension's stride is arbitrary and convolutions can leave odd ones; PyTorch reads
    the layout from the strides, takes such a tensor for NC... and, before a 1x1
    convolution (whose weight is both layouts at once, so no guide), converts it."""
    if x.dim() not in (4, 5) or x.stride(1) != 1 or x.shape[1] == 1:
        return x
    if not x.is_contiguous(memory_format=torch.channels_last_3d if x.dim() == 5 else torch.channels_last):
        return x
    strides, span = [0] * x.dim(), x.shape[1]
    strides[1] = 1
    for d in [*range(x.dim() - 1, 1, -1), 0]:
        strides[d] = span
        span *= x.shape[d]
    return x.as_strided(x.shape, strides)


def _weight(conv: Any) -> torch.Tensor:
    """The weight a convolution runs with: its own, or for one `widen_convolutions` marked,
    its own and zero kernels up to conv.wide_out_channels (made again whenever the weight
    changes: cast, moved or loaded)."""
    wide = getattr(conv, "wide_out_channels", 0)
    weight = conv.weight
    if not wide:
        return weight
    key = (weight.data_ptr(), weight._version, weight.dtype, weight.device)
    made = conv.__dict__.get("_wide_weight")
    if made is None or made[0] != key:
        padded = torch.empty((wide, *weight.shape[1:]), dtype=weight.dtype, device=weight.device,
                             memory_format=layout_of(weight))
        padded[weight.shape[0]:].zero_()
        padded[:weight.shape[0]].copy_(weight)
        made = conv.__dict__["_wide_weight"] = (key, padded)
    return made[1]


def _convolve(conv: Any, x: torch.Tensor, padding: tuple[int, ...], bias: bool) -> torch.Tensor:
    """conv's convolution of x with `padding`. A widened convolution's extra channels are
    left behind in the view it returns. The bias (unless left to a later step) is added by
    the vectorised kernel, not cuDNN's add_."""
    weight = _weight(conv)
    halo = getattr(conv, "row_halo", None)   # a decode in bands of rows: see pipeline.kernels.kl_decoder.convolve
    if halo is not None and padding[-2]:
        x = halo(x, padding[-2])
        padding = (*padding[:-2], 0, padding[-1])
    run = F.conv3d if weight.dim() == 5 else F.conv2d
    y = run(x, weight, None, conv.stride, padding, conv.dilation, conv.groups)
    if weight.shape[0] != conv.out_channels:
        y = y[:, :conv.out_channels]
    return add_bias_(y, [conv.bias]) if bias else y


def _conv3d(conv: Any, x: torch.Tensor, bias: bool = True) -> torch.Tensor:
    """conv's convolution of already time-padded `x`; the spatial border is its padding."""
    pad_w, _, pad_h = conv._padding[:3]   # diffusers' (w, w, h, h, 2*t, 0)
    return _convolve(conv, x, (0, pad_h, pad_w), bias)


def _causal_buffer(conv: Any, x: torch.Tensor, cache_x: torch.Tensor | None
                   ) -> tuple[torch.Tensor, int]:
    """The causal convolution's input buffer in its layout, the time padding filled: zero
    frames, then the cached ones (the last pad_t of them, as F.pad's negative padding
    crops); x's frames go after them, into buffer[:, :, pad_t:]. Also returns the
    index of the first frame that is not zero padding."""
    pad = conv._padding[4]
    cached = 0 if cache_x is None else min(cache_x.shape[2], pad)
    zeros = pad - cached
    b, c, t, h, w = x.shape
    buffer = torch.empty((b, c, pad + t, h, w), dtype=x.dtype, device=x.device, memory_format=layout_of(conv.weight))
    if zeros:
        buffer[:, :, :zeros].zero_()
    if cache_x is not None and cached:
        buffer[:, :, zeros:pad].copy_(cache_x[:, :, -cached:])
    return buffer, zeros


def causal_conv_forward(self, x: torch.Tensor, cache_x: torch.Tensor | None = None) -> torch.Tensor:
    """WanCausalConv3d.forward: one copy of x into the padded buffer (none without time padding)."""
    pad = self._padding[4]
    if pad == 0:   # diffusers ignores the cache here too
        return _conv3d(self, x)
    buffer, _ = _causal_buffer(self, x, cache_x)
    buffer[:, :, pad:].copy_(x)
    return _conv3d(self, buffer)


def _cached_conv(conv: Any, x: torch.Tensor, feat_cache: Cache | None, feat_idx: list[int], norm: Any = None,
                 pre_bias: torch.Tensor | None = None, bias: bool = True) -> torch.Tensor:
    """One cached causal convolution as diffusers' residual blocks and decoder run it:
    conv(silu(norm(x + pre_bias))) with `norm`, else conv(x), the cache entry at
    feat_idx replaced by the convolution input's last CACHE_T frames (with one new
    frame, the cached frame before it too: the buffer holds it, as the time padding of
    every cached convolution of the decoder is 2 frames) and feat_idx moved on."""
    cache_x = None if feat_cache is None else feat_cache[feat_idx[0]]
    buffer, first_real = _causal_buffer(conv, x, cache_x)
    pad = conv._padding[4]
    if norm is None:
        buffer[:, :, pad:].copy_(x)
    else:
        rms_norm(x, norm.gamma, norm.bias if isinstance(norm.bias, torch.Tensor) else None, norm.scale,
                 pre_bias=pre_bias, silu=True, out=buffer[:, :, pad:])
    if feat_cache is not None:
        keep = buffer[:, :, max(first_real, buffer.shape[2] - CACHE_T):]
        feat_cache[feat_idx[0]] = keep.clone(memory_format=layout_of(conv.weight))
        feat_idx[0] += 1
    return _conv3d(conv, buffer, bias)


def rms_norm_forward(self, x: torch.Tensor) -> torch.Tensor:
    """WanRMS_norm.forward: one kernel on CUDA (rms_norm.py)."""
    beta = self.bias if isinstance(self.bias, torch.Tensor) else None
    if self.channel_first:
        return rms_norm(x, self.gamma, beta, self.scale)
    out = torch.empty_like(x)
    rms_norm(x.movedim(-1, 1), self.gamma, beta, self.scale, out=out.movedim(-1, 1))
    return out


def residual_block_forward(self, x: torch.Tensor, feat_cache: Cache | None = None,
                           feat_idx: list[int] = [0]) -> torch.Tensor:   # noqa: B006 (diffusers' signature)
    """WanResidualBlock.forward: norm1 + SiLU written into conv1's buffer, conv1's bias
    added by the norm2 + SiLU kernel, conv2's and the shortcut's by the residual add."""
    if self.training:   # dropout: diffusers' own steps
        return type(self).forward(self, x, feat_cache, feat_idx)
    x = canonical(x)
    biases = [self.conv2.bias]
    if isinstance(self.conv_shortcut, torch.nn.Conv3d):   # 1x1x1: no time padding, no cache
        h = _conv3d(self.conv_shortcut, x, bias=False)
        biases.append(self.conv_shortcut.bias)
    else:
        h = x
    y = _cached_conv(self.conv1, x, feat_cache, feat_idx, norm=self.norm1, bias=False)
    y = _cached_conv(self.conv2, y, feat_cache, feat_idx, norm=self.norm2, pre_bias=self.conv1.bias, bias=False)
    return canonical(add_bias_(y, biases, residual=h))


def attention_forward(self, x: torch.Tensor) -> torch.Tensor:
    """WanAttentionBlock.forward (one head over each frame's positions) on channels-last
    x: the positions' channel vectors are rows already, so the 1x1 convolutions are
    matrix products over those rows (bias included), no layout to infer."""
    b, c, t, h, w = x.shape
    norm = self.norm
    normed = rms_norm(x, norm.gamma, norm.bias if isinstance(norm.bias, torch.Tensor) else None, norm.scale)
    rows = normed.permute(0, 2, 3, 4, 1).reshape(b * t, 1, h * w, c)   # a view when x is channels-last
    qkv = F.linear(rows, self.to_qkv.weight.reshape(3 * c, c), self.to_qkv.bias)
    q, k, v = qkv.chunk(3, dim=-1)
    attended = F.scaled_dot_product_attention(q, k, v)
    out = F.linear(attended, self.proj.weight.reshape(c, c), self.proj.bias)
    return out.view(b, t, h, w, c).permute(0, 4, 1, 2, 3) + x


def upsample_frames(x: torch.Tensor, pairs: bool, layout: torch.memory_format) -> torch.Tensor:
    """(b, c', t, h, w) -> (b*t', c, 2h, 2w) in `layout`: every frame upsampled 2x, nearest.
    With `pairs`, x is an upsample3d time_conv's output, each position holding two
    frames' channels (c' = 2c), and frame i of pair j becomes frame 2j + i (diffusers'
    reshape, stack and reshape); else c = c', t' = t. One pass: the kernel on CUDA
    (rms_norm.py), else one strided copy."""
    k = 2 if pairs else 1
    if layout == torch.channels_last and (up := upsample2x(x, k)) is not None:
        return up
    b, channels, t, h, w = x.shape
    c = channels // k
    up = torch.empty((b * t * k, c, 2 * h, 2 * w), dtype=x.dtype, device=x.device, memory_format=layout)
    # both views index (b, frame, i, y, dy, x, dx, channel): up[(b*t + frame)*k + i, channel, 2y + dy, 2x + dx]
    # and x[b, i*c + channel, frame, y, x], dy and dx repeating it
    sb, sc, st, sh, sw = x.stride()
    source = x.as_strided((b, t, k, h, 2, w, 2, c), (sb, st, c * sc, sh, 0, sw, 0, sc), x.storage_offset())
    ub, uc, uh, uw = up.stride()
    up.as_strided((b, t, k, h, 2, w, 2, c), (t * k * ub, k * ub, ub, 2 * uh, uh, 2 * uw, uw, uc)).copy_(source)
    return up


def resample_forward(self, x: torch.Tensor, feat_cache: Cache | None = None,
                     feat_idx: list[int] = [0]) -> torch.Tensor:   # noqa: B006 (diffusers' signature)
    """WanResample.forward for the decoder's upsample2d and upsample3d modes: diffusers'
    cache steps, then interleave + upsample in one copy and the 2-D convolution, its
    bias added by the bias kernel."""
    b = x.shape[0]
    pairs = False
    if self.mode == "upsample3d" and feat_cache is not None:
        idx = feat_idx[0]
        cached = feat_cache[idx]
        if cached is None:   # the clip's first chunk: no time upsampling yet
            feat_cache[idx] = "Rep"
        else:
            rep = isinstance(cached, str)
            keep = x[:, :, -CACHE_T:].clone()
            if keep.shape[2] < CACHE_T:
                before = torch.zeros_like(keep) if rep else cached[:, :, -1:].to(keep.device)
                keep = torch.cat([before, keep], dim=2)
            x = self.time_conv(x, None if rep else cached)
            feat_cache[idx] = keep
            pairs = True
        feat_idx[0] += 1
    conv = self.resample[1]
    y = _convolve(conv, upsample_frames(x, pairs, layout_of(conv.weight)), conv.padding, bias=True)
    return y.view(b, y.shape[0] // b, *y.shape[1:]).permute(0, 2, 1, 3, 4)


def decoder_forward(self, x: torch.Tensor, feat_cache: Cache | None = None, feat_idx: list[int] = [0],   # noqa: B006
                    first_chunk: bool = False) -> torch.Tensor:
    """WanDecoder3d.forward; norm_out + SiLU are written straight into conv_out's buffer."""
    x = _cached_conv(self.conv_in, x, feat_cache, feat_idx)
    x = self.mid_block(x, feat_cache=feat_cache, feat_idx=feat_idx)
    for up_block in self.up_blocks:
        x = up_block(x, feat_cache=feat_cache, feat_idx=feat_idx, first_chunk=first_chunk)
    return _cached_conv(self.conv_out, x, feat_cache, feat_idx, norm=self.norm_out)


def upsample_forward(self, x: torch.Tensor) -> torch.Tensor:
    """WanUpsample.forward in the input's dtype (nearest: value selection, bit-identical)."""
    if self.mode not in ("nearest", "nearest-exact"):   # interpolating modes keep float32
        return type(self).forward(self, x)
    return F.interpolate(x, self.size, self.scale_factor, self.mode, self.align_corners,
                         recompute_scale_factor=self.recompute_scale_factor)


def use_channels_last(vae: torch.nn.Module) -> int:
    """The Wan decoder's convolution weights to channels-last in place (3-D ones
    channels_last_3d, 2-D ones channels_last); returns how many. The forwards then keep
    every activation in that layout."""
    changed = 0
    for module in vae.get_submodule("decoder").modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Conv3d)):
            layout = torch.channels_last_3d if isinstance(module, torch.nn.Conv3d) else torch.channels_last
            module.weight.data = module.weight.data.contiguous(memory_format=layout)
            changed += 1
    return changed


def widen_convolutions(vae: torch.nn.Module, multiple: int = 64) -> int:
    """Mark the Wan decoder's convolutions with a number of output channels (of 64 or
    more) that is not a multiple of `multiple` to run with zero kernels up to the next
    multiple; returns how many. On an H200 cuDNN runs Wan 2.1's 96-channel
    full-resolution convolutions with an sm80 kernel at ~300 TFLOP/s, its 192- and
    384-channel ones with sm90 kernels at about twice that: if 128 channels get those,
    a third more arithmetic takes less time. The extra channels are written and never
    read (a third more output bytes)."""
    kinds = (torch.nn.Conv2d, torch.nn.Conv3d)
    convolutions = (m for m in vae.get_submodule("decoder").modules() if isinstance(m, kinds))
    widened: list[Any] = [m for m in convolutions if m.out_channels >= multiple and m.out_channels % multiple]
    for module in widened:
        module.wide_out_channels = -(-module.out_channels // multiple) * multiple
    return len(widened)


def _silu(module: Any) -> bool:
    return isinstance(module.nonlinearity, torch.nn.SiLU)


def _nearest_2x(resample: Any) -> bool:
    """An upsample mode whose upsampling is nearest 2x (nearest-exact is the same at 2x)."""
    if resample.mode not in ("upsample2d", "upsample3d"):
        return False
    up, conv = resample.resample
    return (up.mode in ("nearest", "nearest-exact") and up.size is None
            and tuple(float(s) for s in up.scale_factor) == (2.0, 2.0) and isinstance(conv, torch.nn.Conv2d))


def use_lean_wan_forwards(vae: torch.nn.Module, channels_last: bool | None = None, widen: bool = False) -> int:
    """Give a Wan VAE's causal convolutions, RMS norms, residual and attention blocks,
    upsampling resample blocks and decoder the forwards above; with `channels_last` (by
    default when the decoder is on CUDA) channels-last decoder weights, and with `widen`
    widened 96-channel convolutions (`widen_convolutions`; benchmarks/wan_levers.py,
    variant h, measures it). Returns how many modules got a forward (0 for any other
    model)."""
    if type(vae).__name__ != "AutoencoderKLWan":
        return 0
    from diffusers.models.autoencoders import autoencoder_kl_wan as wan

    if channels_last is None:
        channels_last = next(vae.get_submodule("decoder").parameters()).is_cuda
    if channels_last:
        use_channels_last(vae)
    if widen:
        widen_convolutions(vae)
    lean: dict[type, tuple[Callable[..., torch.Tensor], Callable[[Any], bool]]] = {
        wan.WanCausalConv3d: (causal_conv_forward, lambda m: True),
        wan.WanRMS_norm: (rms_norm_forward, lambda m: True),
        wan.WanUpsample: (upsample_forward, lambda m: True),
        wan.WanResidualBlock: (residual_block_forward, _silu),
        wan.WanAttentionBlock: (attention_forward, lambda m: True),
        wan.WanResample: (resample_forward, _nearest_2x),
        wan.WanDecoder3d: (decoder_forward, _silu),
    }
    changed = 0
    for module in vae.modules():
        entry = lean.get(type(module))
        if entry is not None and entry[1](module):
            module.forward = types.MethodType(entry[0], module)
            changed += 1
    return changed
