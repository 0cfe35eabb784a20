"""The patch-parallel decode (pipeline/decode/patches) on the CPU: two processes on the
gloo backend, each decoding a band of the frame's rows with halo exchange and GroupNorm
statistics reduced across them, give the one-process decode (tiny real diffusers VAEs
saved with save_pretrained; frame heights that do not split evenly). The same code runs
on NCCL between GPUs. Each test starts one helper process (rank 1); this process is rank 0.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import WAN_MEAN, WAN_STD, base_job, job_toml
from safetensors.torch import save_file

from pipeline.decode.patches.group import ClipGroup, FrameGroup
from pipeline.decode.video.chunks import ClipDecoder
from pipeline.models.vae import inspect_vae, load_vae

CPU = torch.device("cpu")


def one_process_vae(folder: Path) -> tuple:
    info = inspect_vae(folder)
    return info, load_vae(info, "float32", CPU, tiling=False)


def test_two_ranks_decode_kl_frames_as_one_process(kl_vae: Path) -> None:
    """13 latent rows: bands of 6 and 7; the mid block's attention and every GroupNorm
    span the frame."""
    info, vae = one_process_vae(kl_vae)
    generator = torch.Generator().manual_seed(1)
    frames = [torch.randn(4, 13, 11, generator=generator) * 2 for _ in range(2)]
    with torch.no_grad():
        want = [vae.decode(latents[None]).sample[0] for latents in frames]
    group = FrameGroup(info, "float32", [CPU, CPU])
    try:
        with torch.no_grad():
            got = [group(latents) for latents in frames]
        assert group.statistics() == {"decode_ranks": 2, "band_decodes": 2}
    finally:
        group.close()
    for a, b in zip(want, got, strict=True):
        assert a.shape == b.shape == (3, 26, 22)
        assert (a - b).abs().max() < 1e-4


def test_two_ranks_decode_a_wan_clip_as_one_process(wan_vae: Path) -> None:
    """A clip of 3 latent frames, 7 latent rows (bands of 3 and 4): the causal caches hold
    each band's past, the 3x3 convolutions read across the bands' edge, the mid block's
    attention spans the frame."""
    info, vae = one_process_vae(wan_vae)
    clip = torch.randn(1, 4, 3, 7, 9, generator=torch.Generator().manual_seed(2)) * 2
    with torch.no_grad():
        one = ClipDecoder(vae)
        want = torch.cat([one.step(clip[:, :, i:i + 1], first=i == 0) for i in range(3)], dim=2)
    group = ClipGroup(info, "float32", [CPU, CPU])
    try:
        with torch.no_grad():
            got = torch.cat([group.step(clip[:, :, i:i + 1], first=i == 0) for i in range(3)], dim=2)
            group.finish()
    finally:
        group.close()
    assert got.shape == want.shape == (1, 3, 9, 56, 72)
    assert (got - want).abs().max() < 1e-4


def test_render_run_decodes_a_clip_across_two_processes(tmp_path: Path, wan_vae: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """`render run` with decode_gpus = 2 (CPU ranks: the debug setting) writes the frames
    diffusers' one-process decode makes, and says so in its dry run."""
    from diffusers import AutoencoderKLWan

    from pipeline.files.png import read_png

    clip = torch.randn(4, 3, 7, 9, generator=torch.Generator().manual_seed(3))
    save_file({"latents": clip}, str(tmp_path / "clip.safetensors"))
    job = base_job(wan_vae, shot={"frame_end": 9, "width": 72, "height": 56},
                   source={"kind": "clip", "path": "clip.safetensors"},
                   output={"root": str(tmp_path / "out"), "formats": ["png"]},
                   tuning={"writer_threads": 2, "decode_gpus": 2})
    (tmp_path / "job.toml").write_text(job_toml(job))
    monkeypatch.setenv("FRAMEFARM_DECODE_RANKS_ON_CPU", "1")
    for extra in (["--dry-run"], ["-q"]):
        render_in_process(monkeypatch, str(tmp_path / "job.toml"), "--device", "cpu", *extra)
    vae = AutoencoderKLWan.from_pretrained(wan_vae, low_cpu_mem_usage=False).eval()
    denormalised = clip * torch.tensor(WAN_STD).reshape(-1, 1, 1, 1) + torch.tensor(WAN_MEAN).reshape(-1, 1, 1, 1)
    with torch.no_grad():
        want = vae.decode(denormalised[None]).sample[0]
    want = ((want * 0.5 + 0.5).clamp(0, 1) * 255).round().permute(1, 2, 3, 0).numpy()
    for i in range(9):
        got = read_png(tmp_path / "out" / "test" / f"test.{i + 1:04d}.png").astype(float)
        assert np.abs(got - want[i]).max() <= 1, f"frame {i + 1}"


def render_in_process(monkeypatch: pytest.MonkeyPatch, *args: str) -> None:
    from pipeline.cli import main

    monkeypatch.setattr(sys, "argv", ["render", "run", *args])
    try:
        main()
    except SystemExit as done:
        assert done.code in (0, None)


def test_render_run_decodes_frames_across_two_processes(job_dir: Path, kl_vae: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """An image VAE's frames through `render run` with decode_gpus = 2 (CPU ranks) are
    the frames decode_gpus = 1 writes."""
    from pipeline.files.png import read_png

    monkeypatch.setenv("FRAMEFARM_DECODE_RANKS_ON_CPU", "1")
    for gpus in (1, 2):
        job = base_job(kl_vae, output={"root": str(job_dir / f"out{gpus}"), "formats": ["png"]},
                       tuning={"writer_threads": 2, "decode_gpus": gpus})
        (job_dir / f"job{gpus}.toml").write_text(job_toml(job))
        render_in_process(monkeypatch, str(job_dir / f"job{gpus}.toml"), "--device", "cpu", "-q")
    for frame in range(1, 7):
        one, two = (read_png(job_dir / f"out{gpus}" / "test" / f"test.{frame:04d}.png").astype(int) for gpus in (1, 2))
        assert one.shape == two.shape == (24, 32, 3)
        assert np.abs(one - two).max() <= 1, f"frame {frame}"


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_two_gpus_decode_as_one_on_nccl(kl_vae: Path, wan_vae: Path) -> None:
    """The same on two GPUs through NCCL, with the CUDA kernels the forwards use there."""
    gpus = [torch.device("cuda", 0), torch.device("cuda", 1)]
    info = inspect_vae(kl_vae)
    vae = load_vae(info, "float32", gpus[0], tiling=False)
    latents = torch.randn(4, 13, 11, generator=torch.Generator().manual_seed(1)).to(gpus[0]) * 2
    with torch.no_grad():
        want = vae.decode(latents[None]).sample[0]
    group = FrameGroup(info, "float32", gpus)
    try:
        with torch.no_grad():
            got = group(latents)
    finally:
        group.close()
    close_enough(got, want)
    info = inspect_vae(wan_vae)
    vae = load_vae(info, "float32", gpus[0], tiling=False)
    clip = (torch.randn(1, 4, 3, 7, 9, generator=torch.Generator().manual_seed(2)) * 2).to(gpus[0])
    with torch.no_grad():
        one = ClipDecoder(vae)
        want = torch.cat([one.step(clip[:, :, i:i + 1], first=i == 0) for i in range(3)], dim=2)
    group = ClipGroup(info, "float32", gpus)
    try:
        with torch.no_grad():
            got = torch.cat([group.step(clip[:, :, i:i + 1], first=i == 0) for i in range(3)], dim=2)
            group.finish()
    finally:
        group.close()
    close_enough(got, want)


def close_enough(got: torch.Tensor, want: torch.Tensor) -> None:
    """cuDNN may pick other algorithms (TF32 included) for a band than for the frame."""
    assert got.shape == want.shape
    assert (got - want).abs().max() < 2e-2 and (got - want).abs().mean() < 1e-3
