"""A video VAE's job end to end on the CPU: a tiny AutoencoderKLWan saved with
save_pretrained, the shot's clip of normalised latents in one file, rendered by the
CLI chunk by chunk, against diffusers' whole-clip decode of the same latents; and the
clip jobs the planner refuses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import WAN_MEAN, WAN_STD, clip_job, make_kl_vae, render
from safetensors.torch import save_file


def test_a_clip_renders_as_diffusers_decodes_it(tmp_path: Path, wan_vae: Path) -> None:
    from diffusers import AutoencoderKLWan

    from pipeline.files.png import read_png
    from pipeline.files.video import read_video_info

    job = clip_job(tmp_path, wan_vae)
    dry = render("run", str(job), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "a clip of 3 latent frame(s)" in dry.stdout
    result = render("run", str(job), "-q")
    assert result.returncode == 0, result.stderr
    vae = AutoencoderKLWan.from_pretrained(wan_vae, low_cpu_mem_usage=False).eval()
    clip = torch.randn(4, 3, 6, 8, generator=torch.Generator().manual_seed(3))
    denormalised = clip * torch.tensor(WAN_STD).reshape(-1, 1, 1, 1) + torch.tensor(WAN_MEAN).reshape(-1, 1, 1, 1)
    with torch.no_grad():
        want = vae.decode(denormalised[None]).sample[0]                      # (3, 9, 48, 64)
    want = ((want * 0.5 + 0.5).clamp(0, 1) * 255).round().permute(1, 2, 3, 0).numpy()
    for i in range(9):
        got = read_png(tmp_path / "out" / "test" / f"test.{i + 1:04d}.png").astype(float)
        assert np.abs(got - want[i]).max() <= 1, f"frame {i + 1}"
    assert read_video_info(tmp_path / "out" / "test.mp4") == (9, 64, 48)
    assert render("verify", str(tmp_path / "out")).returncode == 0
    # resume: nothing left to do; a clip with one frame missing renders all of it again
    (tmp_path / "out" / "test" / "test.0006.png").unlink()
    again = render("run", str(job), "--resume", "-q")
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "out" / "test" / "test.0006.png").exists()
    assert render("verify", str(tmp_path / "out")).returncode == 0


def test_a_noise_clip_renders(tmp_path: Path, wan_vae: Path) -> None:
    job = clip_job(tmp_path, wan_vae, frames=5, source={"kind": "noise"},
                   output={"root": str(tmp_path / "out"), "formats": ["png"]})
    result = render("run", str(job), "-q")
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "out").rglob("*.png"))) == 5


@pytest.mark.parametrize(("overrides", "needles"), [
    ({"shot": {"frame_end": 8, "width": 64, "height": 48}}, ["shot.frame_end", "1 + 4k frames", "5 or 9"]),
    ({"source": {"kind": "latents", "path": "clip{frame}.safetensors"}}, ["source.kind", "whole clips"]),
    ({"tuning": {"tiling": True}}, ["tuning.tiling", "does not apply", "decode = \"tiles\""]),
])
def test_clip_jobs_refused(tmp_path: Path, wan_vae: Path, overrides: dict, needles: list[str]) -> None:
    job = clip_job(tmp_path, wan_vae, **overrides)
    result = render("run", str(job))
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    for needle in needles:
        assert needle in line, line
    assert not (tmp_path / "out").exists()


def test_a_clip_of_the_wrong_shape_or_an_image_vae_is_refused(tmp_path: Path, wan_vae: Path) -> None:
    job = clip_job(tmp_path, wan_vae)
    save_file({"latents": torch.zeros(4, 2, 6, 8)}, str(tmp_path / "clip.safetensors"))
    result = render("run", str(job))
    assert result.returncode == 2 and "(4, 3, 6, 8)" in result.stderr, result.stderr
    image_vae = make_kl_vae(tmp_path / "kl", blocks=4)
    job = clip_job(tmp_path, image_vae, name="kl.toml")
    result = render("run", str(job))
    assert result.returncode == 2 and "needs a video VAE" in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()


def test_the_farm_renders_a_clip_as_one_task(tmp_path: Path, wan_vae: Path) -> None:
    """--chunk 2 would cut the clip (a worker given part of a clip refuses it); then the
    farm's video task encodes the MP4 from the published frames."""
    import json

    job = clip_job(tmp_path, wan_vae)
    queue = f"sqlite:///{tmp_path / 'farm.db'}"
    submitted = render("submit", str(job), "--queue", queue, "--chunk", "2")
    assert submitted.returncode == 0, submitted.stderr
    worker = render("worker", "--queue", queue, "--device", "cpu", "--output-root", str(tmp_path),
                    "--model-root", str(wan_vae.parent), "--input-root", str(tmp_path), "--exit-when-idle")
    assert worker.returncode == 0, worker.stderr
    state = json.loads(render("status", "--queue", queue, "--json").stdout)["jobs"][0]
    assert (state["done"], state["failed"], state["state"]) == (9, 0, "done")
    from pipeline.files.video import read_video_info

    assert render("verify", str(tmp_path / "out")).returncode == 0
    assert read_video_info(tmp_path / "out" / "test.mp4") == (9, 64, 48)
