"""A whole AutoencoderKL frame decoded layer by layer, each layer's convolutions over bands
of rows: every GroupNorm normalises with the statistics of the whole frame, as diffusers'
untiled decode does, while no temporary is ever the size of the frame.

Tiles cannot have both: each tile's GroupNorm sees only the tile, and statistics taken
from a proxy of the frame are an estimate (benchmarks/RESULTS.md, 'Micro-task decode').
Here a layer runs in two sweeps over the frame's rows: the statistics of its whole
input, then GroupNorm and SiLU, and the convolution, band by band, each band with the
one row on either side that a 3x3 convolution reads. A resnet keeps three activations
of the frame at once (its input, its first convolution's output, its result); the 2x
upsampling between blocks is never stored at all: the next resnet makes the rows it
needs from the smaller input each time it reads them (twice: once for the statistics,
once for the convolutions), through one transposed convolution (`kernels.upsample`).

The blocks are run from their own weights, step by step as diffusers' Decoder runs
them; `fits` says whether a decoder has only the blocks this knows
(tests/test_layered.py checks the decode against diffusers' untiled decode).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import torch

from pipeline.kernels.group_norm import group_statistics, merge_statistics, normalise
from pipeline.kernels.kl_decoder import convolve, lean_resnet, lean_upsample
from pipeline.kernels.rms_norm import add_bias, add_bias_
from pipeline.kernels.upsample import UpsampleWeights, upsample2x_conv3x3

BAND_BYTES = 256 * 2**20   # one band of the widest tensor a step reads or writes


def fits(vae: Any) -> bool:
    """Whether `vae` is an AutoencoderKL whose decoder this decodes exactly."""
    decoder = getattr(vae, "decoder", None)
    if type(vae).__name__ != "AutoencoderKL" or decoder is None:
        return False
    blocks = list(decoder.up_blocks)
    return (all(lean_resnet(r) for b in blocks for r in b.resnets)
            and all(b.upsamplers is None or (len(b.upsamplers) == 1 and lean_upsample(b.upsamplers[0]))
                    for b in blocks)
            and isinstance(decoder.conv_norm_out, torch.nn.GroupNorm) and isinstance(decoder.conv_act, torch.nn.SiLU)
            and decoder.conv_out.padding_mode == "zeros")


def modelled_bytes(block_out_channels: tuple[int, ...], height: int, width: int, itemsize: int) -> float:
    """Peak memory of the up blocks' decode of a frame of `height` x `width` pixels: at
    each resolution, three activations of the resnets there (the first resnet after an
    upsampling: two, and the smaller input it makes its rows from), plus a few bands."""
    widths = block_out_channels[::-1]          # decoder order: the first up block's width first
    levels = len(widths)
    peak = 0.0
    for level, channels in enumerate(widths):
        side = 2 ** (levels - 1 - level)       # this block's pixels are (height / side) x (width / side)
        pixels = height * width / side**2
        first = (widths[level - 1] * pixels / 4 if level else channels * pixels) + 2 * channels * pixels
        peak = max(peak, first * itemsize, 3 * channels * pixels * itemsize)
    return peak + 4 * BAND_BYTES


class Rows(Protocol):
    """An activation of shape (1, C, H, W) that can hand out bands of its rows."""
    shape: torch.Size
    dtype: torch.dtype
    device: torch.device

    def rows(self, start: int, stop: int) -> torch.Tensor: ...
    def release(self) -> None: ...


class Stored:
    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor: torch.Tensor | None = tensor
        self.shape, self.dtype, self.device = tensor.shape, tensor.dtype, tensor.device

    def rows(self, start: int, stop: int) -> torch.Tensor:
        assert self.tensor is not None
        return self.tensor[:, :, start:stop]

    def release(self) -> None:
        self.tensor = None


class Upsampled:
    """upsample(x): nearest 2x then the upsampler's 3x3 convolution, made band by band."""

    def __init__(self, tensor: torch.Tensor, upsampler: Any) -> None:
        self.tensor: torch.Tensor | None = tensor
        self.conv = upsampler.conv
        self.weights: UpsampleWeights = getattr(upsampler, "upsample_weights", None) or UpsampleWeights()
        b, _, h, w = tensor.shape
        self.shape = torch.Size((b, self.conv.out_channels, 2 * h, 2 * w))
        self.dtype, self.device = tensor.dtype, tensor.device

    def rows(self, start: int, stop: int) -> torch.Tensor:
        assert self.tensor is not None
        # output row r reads upsampled rows r - 1 .. r + 1, which are input rows (r - 1) // 2 .. (r + 1) // 2
        first, last = max((start - 1) // 2, 0), min(stop // 2 + 1, self.tensor.shape[2])
        made = upsample2x_conv3x3(self.tensor[:, :, first:last], self.weights.of(self.conv.weight), None)
        return add_bias_(made[:, :, start - 2 * first:stop - 2 * first], [self.conv.bias])

    def release(self) -> None:
        self.tensor = None


def bands(source: Rows, *widths: int) -> Iterator[tuple[int, int]]:
    """Row ranges covering the frame, each within BAND_BYTES of the widest of `widths`
    channels (what a step reads or writes) at the source's width."""
    _, _, height, width = source.shape
    per_row = max(widths) * width * source.dtype.itemsize
    step = max(1, min(height, BAND_BYTES // per_row))
    for start in range(0, height, step):
        yield start, min(start + step, height)


def statistics(source: Rows, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, G) mean and variance of the whole activation, merged from its bands (Chan)."""
    if isinstance(source, Stored) and source.tensor is not None:
        return group_statistics(source.tensor, groups)
    counts, means, variances = [], [], []
    for start, stop in bands(source, source.shape[1]):
        band = source.rows(start, stop)
        mean, var = group_statistics(band, groups)
        counts.append(band[0, 0].numel())
        means.append(mean)
        variances.append(var)
    return merge_statistics(torch.tensor(counts, dtype=torch.float32, device=means[0].device),
                            torch.stack(means), torch.stack(variances))


def halo(source: Rows, start: int, stop: int) -> tuple[torch.Tensor, int]:
    """Rows start .. stop with the row on either side a 3x3 convolution reads (where the
    frame has one), and where row `start` is in them."""
    first, last = max(start - 1, 0), min(stop + 1, source.shape[2])
    return source.rows(first, last), start - first


def norm_conv(band: torch.Tensor, at: int, count: int, norm: torch.nn.GroupNorm,
              stats: tuple[torch.Tensor, torch.Tensor], conv: torch.nn.Conv2d, out: torch.Tensor,
              accumulate: bool = False) -> None:
    """out (+)= conv(silu(norm(x))) for `count` rows from row `at` of a band that holds their
    halo: the convolution runs without its bias, which one pass adds on the way into
    `out` (with out's own values where `accumulate`: a resnet's residual)."""
    rows = convolve(conv, normalise(band, norm, *stats, silu=True))[:, :, at:at + count]
    add_bias(rows, [conv.bias], out if accumulate else None, out=out)


def empty_like_rows(source: Rows, conv: torch.nn.Conv2d) -> torch.Tensor:
    """The frame-sized output of `conv`, in the memory format of its weights (channels-last
    where the decoder runs so)."""
    b, _, h, w = source.shape
    weight = conv.weight
    layout = torch.channels_last if weight.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    return torch.empty((b, conv.out_channels, h, w), dtype=weight.dtype, device=source.device, memory_format=layout)


def resnet(block: Any, source: Rows) -> torch.Tensor:
    """ResnetBlock2D (no time embedding): x + conv2(silu(norm2(conv1(silu(norm1(x)))))),
    the shortcut convolved where the widths differ."""
    out_channels = block.conv1.out_channels
    stats = statistics(source, block.norm1.num_groups)
    hidden = empty_like_rows(source, block.conv1)
    out = empty_like_rows(source, block.conv2)
    for start, stop in bands(source, source.shape[1], out_channels):
        band, at = halo(source, start, stop)
        norm_conv(band, at, stop - start, block.norm1, stats, block.conv1, hidden[:, :, start:stop])
        rows = band[:, :, at:at + stop - start]
        out[:, :, start:stop] = rows if block.conv_shortcut is None else block.conv_shortcut(rows)
    source.release()
    middle = Stored(hidden)
    stats = statistics(middle, block.norm2.num_groups)
    for start, stop in bands(middle, out_channels):
        band, at = halo(middle, start, stop)
        norm_conv(band, at, stop - start, block.norm2, stats, block.conv2, out[:, :, start:stop], accumulate=True)
    if block.output_scale_factor != 1:
        out /= block.output_scale_factor
    return out


class LayeredFrame:
    """The decode strategy (`decode.strategy`): (C, h, w) latents -> (3, H, W) image."""

    def __init__(self, vae: Any) -> None:
        self.vae = vae

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        vae, decoder = self.vae, self.vae.decoder
        z = latents[None]
        if vae.post_quant_conv is not None:
            z = vae.post_quant_conv(z)
        x = decoder.mid_block(decoder.conv_in(z), None)   # at latent resolution: small
        source: Rows = Stored(x.to(next(iter(decoder.up_blocks.parameters())).dtype))
        for block in decoder.up_blocks:
            for block_resnet in block.resnets:
                source = Stored(resnet(block_resnet, source))
            if block.upsamplers is not None:
                assert isinstance(source, Stored) and source.tensor is not None
                source = Upsampled(source.tensor, block.upsamplers[0])
        norm, conv = decoder.conv_norm_out, decoder.conv_out
        stats = statistics(source, norm.num_groups)
        image = empty_like_rows(source, conv)
        for start, stop in bands(source, source.shape[1]):
            band, at = halo(source, start, stop)
            norm_conv(band, at, stop - start, norm, stats, conv, image[:, :, start:stop])
        return image[0]

    def statistics(self) -> dict[str, int]:
        return {}
