"""The Wan decoder's lean forwards (pipeline.kernels.wan) and channel kernels
(pipeline.kernels.rms_norm) compute what diffusers' own forwards compute: the same
decode to float32 rounding, in either layout, with diffusers' cache entries; within
bfloat16 rounding in bfloat16; and channels-last activations never convert.

The Triton kernels run here under Triton's interpreter, which must be switched on
before Triton is first imported (it wraps Triton's own functions then), so the
`test_interpreted_*` tests run in a fresh Python started with TRITON_INTERPRET=1
(test_triton_kernels_in_a_fresh_interpreter); run directly they skip unless the
process was started so. Tests marked gpu run the compiled kernels on CUDA.
"""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from pipeline.decode.video.chunks import ClipDecoder, decode_chunks
from pipeline.kernels import rms_norm as channel_kernels
from pipeline.kernels.wan import upsample_frames, use_lean_wan_forwards, widen_convolutions


def tiny_wan(dtype: torch.dtype, **config: Any) -> torch.nn.Module:
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    vae = AutoencoderKLWan(**{"base_dim": 8, "z_dim": 4, "dim_mult": [1, 2, 2, 2], "num_res_blocks": 1,
                              "attn_scales": [], "temperal_downsample": [False, True, True],
                              "latents_mean": [0.0] * 4, "latents_std": [1.0] * 4, **config})
    with torch.no_grad():  # trained norms are not all ones: make the gammas count
        for name, parameter in vae.named_parameters():
            if name.endswith("gamma"):
                parameter.uniform_(0.5, 1.5)
    return vae.to(dtype).eval()


def lean(vae: torch.nn.Module, channels_last: bool, widen: bool = False) -> torch.nn.Module:
    """A copy with the lean forwards; `widen`: its 16-channel convolutions widened to 24
    (the tiny VAE has no 96-channel ones), so the widened views are exercised."""
    fast = copy.deepcopy(vae)
    assert use_lean_wan_forwards(fast, channels_last=channels_last) > 0
    if widen:
        assert widen_convolutions(fast, multiple=12) > 10
    return fast


def decode_both(vae: torch.nn.Module, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole-clip decode (diffusers' loop) and our chunked decode, as float32."""
    with torch.no_grad():
        whole = vae.decode(latents).sample.float()
        chunked = torch.cat(list(decode_chunks(vae, latents)), dim=2).float()
    return whole, chunked


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10 * math.log10(4.0 / ((a.float() - b.float()) ** 2).mean().item())   # pixels span [-1, 1]


def clip_latents(seed: int = 1) -> torch.Tensor:
    return torch.randn(1, 4, 5, 6, 8, generator=torch.Generator().manual_seed(seed))


def check_decodes_like_diffusers(channels_last: bool, widen: bool = False) -> None:
    """float32: diffusers' decode to rounding (measured 1.6e-6 to 1.9e-6 when written, in
    both layouts and through the kernels); bfloat16: as close to the float32 decode as
    diffusers' own bfloat16 decode (51.9 dB), or closer (53.0 to 53.4 dB measured: the
    fused steps round once where diffusers rounds after each step)."""
    latents = clip_latents()
    reference = tiny_wan(torch.float32)
    expected, _ = decode_both(reference, latents)
    assert expected.std().item() > 0.1   # not a decode of nothing
    for got in decode_both(lean(reference, channels_last, widen), latents):
        assert (got - expected).abs().max().item() <= 1e-5
    reference_bf16 = tiny_wan(torch.bfloat16)
    diffusers_psnr = psnr(decode_both(reference_bf16, latents.bfloat16())[0], expected)
    for got in decode_both(lean(reference_bf16, channels_last, widen), latents.bfloat16()):
        assert psnr(got, expected) >= diffusers_psnr - 1.0 >= 40.0


@pytest.mark.parametrize("channels_last, widen", [(False, False), (True, False), (True, True)])
def test_lean_forwards_decode_like_diffusers(channels_last: bool, widen: bool) -> None:
    check_decodes_like_diffusers(channels_last, widen)


def test_channels_last_decode_equals_the_ncdhw_decode() -> None:
    vae = tiny_wan(torch.float32)
    _, ncdhw = decode_both(lean(vae, channels_last=False), clip_latents())
    _, channels_last = decode_both(lean(vae, channels_last=True), clip_latents())
    assert (channels_last - ncdhw).abs().max().item() <= 1e-5


@pytest.mark.parametrize("channels_last", [False, True])
def test_the_cache_holds_what_diffusers_keeps(channels_last: bool) -> None:
    """Entry by entry after every chunk: the same markers ("Rep"), the same frames, the
    same values (float32 rounding of activations up to ~5)."""
    vae = tiny_wan(torch.float32)
    fast = lean(vae, channels_last)
    latents = clip_latents()
    ours, theirs = ClipDecoder(fast), ClipDecoder(vae)
    with torch.no_grad():
        for index in range(latents.shape[2]):
            for clip in (ours, theirs):
                clip.step(latents[:, :, index:index + 1], first=index == 0)
            assert ours.cache is not None and theirs.cache is not None
            assert len(ours.cache) == len(theirs.cache)
            for mine, want in zip(ours.cache, theirs.cache, strict=True):
                if not isinstance(want, torch.Tensor):
                    assert mine == want
                    continue
                torch.testing.assert_close(mine, want, rtol=1e-5, atol=1e-5)


class LayoutSpy(TorchDispatchMode):
    """Records every convolution whose input or output is not channels-last, and every
    other operation that makes a new (not a view) 4-D or 5-D activation (more than one
    channel) whose channels are not innermost."""

    def __init__(self) -> None:
        super().__init__()
        self.convolutions = 0
        self.violations: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten.convolution.default:
            self.convolutions += 1
            for role, tensor in (("input", args[0]), ("output", out)):
                layout = torch.channels_last_3d if tensor.dim() == 5 else torch.channels_last
                if tensor.stride(1) != 1 or not tensor.is_contiguous(memory_format=layout):
                    self.violations.append(f"convolution {role} {tuple(tensor.shape)} {tensor.stride()}")
        elif not func.is_view:
            for tensor in out if isinstance(out, (tuple, list)) else [out]:
                if (isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and tensor.dim() in (4, 5)
                        and tensor.shape[1] > 1 and tensor.stride(1) != 1):
                    self.violations.append(f"{func} {tuple(tensor.shape)} {tensor.stride()}")
        return out


def decoder_layouts(vae: torch.nn.Module, latents: torch.Tensor) -> LayoutSpy:
    """The decoder's steps as ClipDecoder runs them, the spy watching the decoder only
    (post_quant_conv before it works on the caller's NCDHW latents)."""
    clip = ClipDecoder(vae)
    spy = LayoutSpy()
    with torch.no_grad():
        for index in range(latents.shape[2]):
            if index == 0:
                clip.cache = [None] * clip.convs
            x = vae.post_quant_conv(latents[:, :, index:index + 1])
            with spy:
                out = vae.decoder(x, feat_cache=clip.cache, feat_idx=[0], first_chunk=index == 0)
            assert out.is_contiguous(memory_format=torch.channels_last_3d)
            for entry in clip.cache:
                assert not isinstance(entry, torch.Tensor) or entry.is_contiguous(memory_format=torch.channels_last_3d)
            frame = out[0, :, -1]   # the decode stage's (3, H, W) frame: (H, W, 3) contiguous as it is
            assert frame.permute(1, 2, 0).is_contiguous()
    return spy


@pytest.mark.parametrize("widen", [False, True])
def test_no_layout_conversion_in_the_channels_last_decoder(widen: bool) -> None:
    """Also the cache entries stay channels-last. In bfloat16: the CPU's float32 conv3d
    returns NCDHW whatever its input's layout (cuDNN's does not)."""
    latents = clip_latents().bfloat16()
    spy = decoder_layouts(lean(tiny_wan(torch.bfloat16), channels_last=True, widen=widen), latents)
    assert spy.convolutions > 50 and spy.violations == []
    # and the spy does see conversions: diffusers' forwards on channels-last weights make them
    from pipeline.kernels.wan import use_channels_last

    diffusers = tiny_wan(torch.bfloat16)
    use_channels_last(diffusers)
    spy = LayoutSpy()
    with torch.no_grad(), spy:
        diffusers.decode(latents)
    assert spy.violations


def test_upsample_frames_is_diffusers_interleave_then_upsample() -> None:
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanUpsample

    up = WanUpsample(scale_factor=(2.0, 2.0), mode="nearest-exact")
    b, c, t, h, w = 2, 6, 3, 5, 7
    for layout, layout_2d in ((torch.contiguous_format, torch.contiguous_format),
                              (torch.channels_last_3d, torch.channels_last)):
        pairs = torch.randn(b, 2 * c, t, h, w).contiguous(memory_format=layout)
        # diffusers' upsample3d: reshape, stack, reshape; then per-frame upsampling
        frames = torch.stack((pairs.reshape(b, 2, c, t, h, w)[:, 0], pairs.reshape(b, 2, c, t, h, w)[:, 1]), 3)
        frames = frames.reshape(b, c, 2 * t, h, w)
        want = up(frames.permute(0, 2, 1, 3, 4).reshape(b * 2 * t, c, h, w))
        got = upsample_frames(pairs, True, layout_2d)
        assert torch.equal(got, want) and got.is_contiguous(memory_format=layout_2d)
        plain = torch.randn(b, c, t, h, w).contiguous(memory_format=layout)
        assert torch.equal(upsample_frames(plain, False, layout_2d),
                           up(plain.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)))


def test_nearest_upsample_in_bfloat16_is_bit_identical() -> None:
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanUpsample

    from pipeline.kernels.wan import upsample_forward

    up = WanUpsample(scale_factor=(2.0, 2.0), mode="nearest-exact")
    x = torch.randn(3, 5, 7, 9).to(torch.bfloat16)
    assert torch.equal(upsample_forward(up, x), up(x))


def test_tiled_decode_with_the_lean_forwards() -> None:
    """pipeline.decode.video.tiled drives the decoder's parts itself: same result."""
    from pipeline.decode.tiles import make_grid
    from pipeline.decode.video.tiled import TiledClipDecoder

    vae = tiny_wan(torch.float32)
    latents = torch.randn(1, 4, 4, 12, 20, generator=torch.Generator().manual_seed(2))

    def decode(model: torch.nn.Module) -> list[torch.Tensor]:
        tiled = TiledClipDecoder(model, make_grid(12, 20, 8, 4), 3)
        with torch.no_grad():
            return [tiled.step(latents[:, :, i:i + 1], first=i == 0) for i in range(latents.shape[2])]

    for got, want in zip(decode(lean(vae, channels_last=True, widen=True)), decode(vae), strict=True):
        assert (got - want).abs().max().item() <= 1e-5


def test_a_wan22_style_decoder_decodes_like_diffusers() -> None:
    """Residual up blocks (DupUp3D shortcuts) and patchified output, as Wan 2.2's VAE has."""
    vae = tiny_wan(torch.float32, decoder_base_dim=16, is_residual=True, patch_size=2, in_channels=12,
                   out_channels=12, scale_factor_spatial=16)
    latents = torch.randn(1, 4, 4, 6, 8, generator=torch.Generator().manual_seed(3))
    expected, _ = decode_both(vae, latents)
    for got in decode_both(lean(vae, channels_last=True), latents):
        assert (got - expected).abs().max().item() <= 1e-5


def test_the_reference_norm_is_diffusers_in_float32() -> None:
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanRMS_norm

    for norm, x in ((WanRMS_norm(96, images=False), torch.randn(2, 96, 3, 5, 7)),
                    (WanRMS_norm(96), torch.randn(3, 96, 5, 7).contiguous(memory_format=torch.channels_last))):
        with torch.no_grad():
            norm.gamma.uniform_(0.5, 1.5)
            want = norm(x)
        assert torch.equal(channel_kernels.rms_norm_reference(x, norm.gamma, None, norm.scale), want)


def test_row_strides() -> None:
    cl3d = torch.channels_last_3d
    x = torch.empty(2, 96, 5, 6, 7, memory_format=cl3d)
    assert channel_kernels.row_strides(x) == (5 * 6 * 7 * 96, 96, 1)
    assert channel_kernels.row_strides(x[:, :, 2:]) == (5 * 6 * 7 * 96, 96, 1)   # a causal buffer's new frames
    assert channel_kernels.row_strides(torch.empty(2, 96, 5, 6, 7)) == (96 * 210, 1, 210)
    assert channel_kernels.row_strides(x[:, :, :, 1:]) is None   # cropped rows are not evenly spaced
    assert channel_kernels.row_strides(x[:, :, :1, :1, :1]) == (5 * 6 * 7 * 96, 1, 1)


def test_other_models_are_left_alone() -> None:
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(block_out_channels=[8], norm_num_groups=4, latent_channels=4)
    assert use_lean_wan_forwards(vae) == 0


# The Triton kernels, under the interpreter.


def kernels_interpreted() -> bool:
    if channel_kernels.triton is None:
        return False
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(channel_kernels._rms_norm_rows, InterpretedFunction)


interpreted = pytest.mark.skipif(not kernels_interpreted(), reason="Triton not imported with TRITON_INTERPRET=1: "
                                 "test_triton_kernels_in_a_fresh_interpreter runs these")


def test_triton_kernels_in_a_fresh_interpreter() -> None:
    if channel_kernels.triton is None:
        pytest.skip("Triton is not installed")
    if kernels_interpreted():
        pytest.skip("this process interprets the kernels: the test_interpreted_* tests run here")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "test_interpreted", __file__],
        cwd=Path(__file__).parent.parent, env={**os.environ, "TRITON_INTERPRET": "1"},
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and " skipped" not in result.stdout, result.stdout[-2000:]


TOLERANCE = {torch.float32: {"rtol": 1e-5, "atol": 1e-5}, torch.bfloat16: {"rtol": 2**-7, "atol": 1e-3}}
FLAGS = [(False, False, True), (True, False, True), (False, True, False), (True, True, True)]   # pre, beta, silu


@interpreted
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("frames", [(1, 3, 5), (2, 5, 7), (5, 3, 9)])
@pytest.mark.parametrize("channels", [8, 96, 192, 384])
def test_interpreted_rms_norm_kernel(channels: int, frames: tuple[int, int, int], dtype: torch.dtype) -> None:
    """Into a NaN-poisoned causal buffer's new frames (channels-last, two batches: the
    buffer's batch stride is not the input's), and NCDHW to NCDHW; every flag combination.
    The poisoned zero/cache frames must stay NaN, the written frames must hold none."""
    t, h, w = frames
    g = torch.Generator().manual_seed(channels * 100 + t)
    gamma = (torch.rand(channels, 1, 1, 1, generator=g) + 0.5).to(dtype)
    beta, pre = (torch.randn(channels, generator=g).to(dtype) for _ in range(2))
    for case, (has_pre, has_beta, silu) in enumerate(FLAGS):
        x = (torch.randn(2, channels, t, h, w, generator=g) * 3).to(dtype)
        if case % 2 == 0:
            x = x.contiguous(memory_format=torch.channels_last_3d)
            buffer = torch.full((2, channels, t + 2, h, w), math.nan, dtype=dtype)
            buffer = buffer.contiguous(memory_format=torch.channels_last_3d)
            out = buffer[:, :, 2:]
        else:
            buffer = out = torch.full_like(x, math.nan)
        norm_beta, norm_pre = beta if has_beta else None, pre if has_pre else None
        channel_kernels.launch_rms_norm(x, out, gamma, norm_beta, channels**0.5, 1e-12, norm_pre, silu)
        assert not out.isnan().any(), f"case {case}: elements left unwritten"
        if buffer is not out:
            assert buffer[:, :, :2].isnan().all(), f"case {case}: wrote outside its frames"
        want = channel_kernels.rms_norm_reference(x, gamma, norm_beta, channels**0.5, pre_bias=norm_pre, silu=silu)
        torch.testing.assert_close(out, want, **TOLERANCE[dtype], msg=lambda m, case=case: f"case {case}: {m}")


@interpreted
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("frames", [(1, 3, 5), (5, 3, 9)])
@pytest.mark.parametrize("channels", [8, 96, 384])
def test_interpreted_bias_and_residual_kernel(channels: int, frames: tuple[int, int, int], dtype: torch.dtype) -> None:
    t, h, w = frames
    g = torch.Generator().manual_seed(channels + t)
    b1, b2 = (torch.randn(channels, generator=g).to(dtype) for _ in range(2))
    for layout in (torch.channels_last_3d, torch.contiguous_format):
        for biases, with_residual in (([b1], False), ([b1, b2], True), ([b1], True)):
            # y: frames 1.. of a tensor whose frame 0 is poisoned, so a stray write shows
            whole = torch.randn(2, channels, t + 1, h, w, generator=g).to(dtype).contiguous(memory_format=layout)
            whole[:, :, 0] = math.nan
            y = whole[:, :, 1:]
            residual = torch.randn(y.shape, generator=g).to(dtype) if with_residual else None
            want = y.float() + sum(b.float().view(-1, 1, 1, 1) for b in biases)
            if residual is not None:
                want = want + residual.float()
            channel_kernels.launch_add_bias(y, biases, residual, y)
            assert whole[:, :, 0].isnan().all()
            torch.testing.assert_close(y, want.to(dtype), **TOLERANCE[dtype])


@interpreted
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels", [3, 128, 512])
def test_interpreted_bias_into_a_band_of_a_frame(channels: int, dtype: torch.dtype) -> None:
    """What the layered decode does with a convolution's rows: written into a band of a
    channels-last frame (the rest untouched), and accumulated onto the band in place."""
    g = torch.Generator().manual_seed(channels)
    bias = torch.randn(channels, generator=g).to(dtype)
    frame = torch.full((1, channels, 9, 7), math.nan, dtype=dtype).contiguous(memory_format=torch.channels_last)
    conv_rows = torch.randn(1, channels, 6, 7, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
    band, rows = frame[:, :, 2:6], conv_rows[:, :, 1:5]   # the convolution's halo rows dropped
    channel_kernels.launch_add_bias(rows, [bias], None, band)
    first = (rows.float() + bias.float().view(-1, 1, 1)).to(dtype)
    torch.testing.assert_close(band, first, **TOLERANCE[dtype])
    assert frame[:, :, :2].isnan().all() and frame[:, :, 6:].isnan().all()
    channel_kernels.launch_add_bias(rows, [bias], band, band)
    torch.testing.assert_close(band, (rows.float() + bias.float().view(-1, 1, 1) + first.float()).to(dtype),
                               **TOLERANCE[dtype])
    assert frame[:, :, :2].isnan().all() and frame[:, :, 6:].isnan().all()


@interpreted
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 8, 1, 3, 5), (2, 96, 2, 5, 7), (1, 384, 3, 2, 9)])
def test_interpreted_upsample_kernel(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    """Against the strided copy (itself checked against diffusers above), poisoned output."""
    g = torch.Generator().manual_seed(shape[1])
    for parts in (1, 2):
        x = torch.randn(shape[0], parts * shape[1], *shape[2:], generator=g).to(dtype)
        x = x.contiguous(memory_format=torch.channels_last_3d)
        b, _, t, h, w = x.shape
        out = torch.full((b * t * parts, shape[1], 2 * h, 2 * w), math.nan, dtype=dtype)
        out = out.contiguous(memory_format=torch.channels_last)
        channel_kernels.launch_upsample2x(x, out, parts)
        assert torch.equal(out, upsample_frames(x, parts == 2, torch.channels_last))


@interpreted
def test_interpreted_decode_through_the_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole channels-last decode, widened, with every norm, bias and upsampling step
    in the kernels (on the CPU tensors; NCDHW operands are in the kernel tests above)."""
    launches: list[int] = []

    def always(*tensors: torch.Tensor) -> bool:
        launches.append(1)
        return True

    monkeypatch.setattr(channel_kernels, "_kernel_runs", always)
    check_decodes_like_diffusers(channels_last=True, widen=True)
    assert launches and channel_kernels._broken == []


# On CUDA: the compiled kernels and the full-size decoder.


@pytest.mark.gpu
def test_kernels_on_cuda_match_the_reference() -> None:
    for channels, shape in ((96, (1, 4, 45, 80)), (384, (2, 2, 23, 40)), (8, (1, 1, 3, 5))):
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(shape[0], channels, *shape[1:], device="cuda").to(dtype)
            x = x.contiguous(memory_format=torch.channels_last_3d)
            gamma = torch.rand(channels, device="cuda").to(dtype) + 0.5
            pre = torch.randn(channels, device="cuda").to(dtype)
            got = channel_kernels.rms_norm(x, gamma, None, channels**0.5, pre_bias=pre, silu=True)
            want = channel_kernels.rms_norm_reference(x, gamma, None, channels**0.5, pre_bias=pre, silu=True)
            torch.testing.assert_close(got, want, **TOLERANCE[dtype])
            assert got.is_contiguous(memory_format=torch.channels_last_3d)
            y, h = torch.randn_like(x), torch.randn_like(x)
            want = (y.float() + pre.float().view(-1, 1, 1, 1) + h.float()).to(dtype)
            torch.testing.assert_close(channel_kernels.add_bias_(y, [pre], residual=h), want, **TOLERANCE[dtype])
    assert channel_kernels._broken == []


@pytest.mark.gpu
def test_the_fast_decoder_on_cuda_at_720p() -> None:
    """Wan 2.1's decoder (random weights) at 1280x720, 3 latent frames (9 pixel frames),
    as load_vae installs it on CUDA (channels-last, kernels), against diffusers' forwards.
    bfloat16: both decodes round differently from the float32 decode; the fast one must
    be as close to it as diffusers' (within 1 dB) and close to diffusers' bfloat16
    decode (>= 45 dB; rounding noise, not a different function), widened too. float32
    (TF32 off): different convolution algorithms, the same function (<= 1e-3). No
    activation converts layout on the way."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    vae = AutoencoderKLWan().to("cuda").eval().requires_grad_(False)
    latents = torch.randn(1, 16, 3, 90, 160, generator=torch.Generator().manual_seed(1)).cuda()

    def decode(model: torch.nn.Module, z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat(list(decode_chunks(model, z)), dim=2).float()

    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        expected = decode(vae, latents)
        fast32 = copy.deepcopy(vae)
        use_lean_wan_forwards(fast32)
        assert (decode(fast32, latents) - expected).abs().max().item() <= 1e-3
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    del fast32
    bf16 = copy.deepcopy(vae).to(torch.bfloat16)
    del vae
    diffusers_bf16 = decode(bf16, latents.bfloat16())
    fast = copy.deepcopy(bf16)
    assert use_lean_wan_forwards(fast) > 0 and fast.decoder.conv_in.weight.stride(1) == 1   # channels-last
    got = decode(fast, latents.bfloat16())
    assert channel_kernels._broken == []
    assert psnr(got, diffusers_bf16) >= 45.0
    assert psnr(got, expected) >= psnr(diffusers_bf16, expected) - 1.0
    assert decoder_layouts(fast, latents[:, :, :2].bfloat16()).violations == []
    assert widen_convolutions(fast) == 7   # up2's resample and up3's convolutions: 96 -> 128 channels
    assert psnr(decode(fast, latents.bfloat16()), diffusers_bf16) >= 45.0
