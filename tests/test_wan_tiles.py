"""A video VAE's chunked decode tiled in space (pipeline.decode.video.tiled), on a tiny
AutoencoderKLWan on the CPU: one whole-frame tile is the untiled decode exactly;
overlapping tiles come close to it; batching and out-of-memory splits change nothing;
the CLI renders a clip job with decode = "tiles" and shows the plan."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import clip_job, render

from pipeline.decode.budget import clip_tile_plan, tile_plan
from pipeline.decode.tiles import make_grid
from pipeline.decode.video import tiled as wan_tiles
from pipeline.decode.video.chunks import ClipDecoder
from pipeline.decode.video.tiled import TiledClipDecoder
from pipeline.models.vae import VaeInfo, inspect_vae

CHUNKS = 4


@pytest.fixture(scope="module")
def vae(wan_vae: Path) -> torch.nn.Module:
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan.from_pretrained(wan_vae, low_cpu_mem_usage=False).eval()


def clip(height: int, width: int) -> torch.Tensor:
    return torch.randn(1, 4, CHUNKS, height, width, generator=torch.Generator().manual_seed(1))


def decode(decoder: ClipDecoder | TiledClipDecoder, latents: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return [decoder.step(latents[:, :, i:i + 1], first=i == 0) for i in range(latents.shape[2])]


def psnr(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    mse = sum(((x.float() - y.float()) ** 2).mean().item() for x, y in zip(a, b, strict=True)) / len(a)
    return 10 * math.log10(4 / mse)   # values in [-1, 1]: peak-to-peak 2


def test_one_tile_over_the_whole_frame_is_the_untiled_decode(vae: torch.nn.Module) -> None:
    latents = clip(6, 10)
    whole = decode(ClipDecoder(vae), latents)
    tiled = decode(TiledClipDecoder(vae, make_grid(6, 10, 16, 0), 1), latents)
    assert [t.shape[2] for t in tiled] == [1, 4, 4, 4]
    for got, want in zip(tiled, whole, strict=True):
        assert torch.equal(got, want.float())


def test_overlapping_tiles_come_close_and_batching_changes_nothing(vae: torch.nn.Module) -> None:
    """24x40 cells in 16-cell tiles: overlap 8 measured 45.1 dB against untiled decode
    and overlap 2 35.3 dB on this VAE (random weights): the convolutions' reach at the
    tile borders is what the overlap must cover."""
    latents = clip(24, 40)
    whole = decode(ClipDecoder(vae), latents)
    one_by_one = decode(TiledClipDecoder(vae, make_grid(24, 40, 16, 8), 1), latents)
    batched = decode(TiledClipDecoder(vae, make_grid(24, 40, 16, 8), 3), latents)
    narrow = decode(TiledClipDecoder(vae, make_grid(24, 40, 16, 2), 2), latents)
    for a, b in zip(one_by_one, batched, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert psnr(one_by_one, whole) > 42
    assert 30 < psnr(narrow, whole) < psnr(one_by_one, whole)


def test_out_of_memory_rolls_the_cache_back_and_splits_the_batch(vae: torch.nn.Module,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The injected failure comes after the tail ran, so the batch's cache has moved on a
    chunk: unless it is rolled back the retried tiles would decode against the wrong past."""
    latents = clip(12, 20)
    grid = make_grid(12, 20, 8, 4)
    assert len(grid.tiles) == 8
    want = decode(TiledClipDecoder(vae, grid, 8), latents)
    real_tail, sizes = wan_tiles.tail, []

    def tight(decoder: torch.nn.Module, x: torch.Tensor, cache: list, first: bool) -> torch.Tensor:
        out = real_tail(decoder, x, cache, first)
        sizes.append(len(x))
        if len(x) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
        return out

    monkeypatch.setattr(wan_tiles, "tail", tight)
    decoder = TiledClipDecoder(vae, grid, 8)
    got = decode(decoder, latents)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    stats = decoder.statistics()
    assert stats["oom_splits"] == 3 and stats["batch_size"] == 2   # 8 -> 4 + 4 -> 2 + 2 + 4 -> 2 + 2 + 2 + 2
    assert sizes[:7] == [8, 4, 2, 2, 4, 2, 2] and set(sizes[7:]) == {2}   # the split stays for the clip


def test_a_tile_that_does_not_fit_fails_the_clip(vae: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    def never(decoder: torch.nn.Module, x: torch.Tensor, cache: list, first: bool) -> torch.Tensor:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")

    monkeypatch.setattr(wan_tiles, "tail", never)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        decode(TiledClipDecoder(vae, make_grid(12, 20, 8, 4), 4), clip(12, 20))


def test_the_budget_holds_every_tile_cache_and_one_batch(wan_vae: Path) -> None:
    info = inspect_vae(wan_vae)
    roomy = tile_plan(info, (4, 90, 160), torch.bfloat16, 64, 8, 8.0, 0)
    tight = tile_plan(info, (4, 90, 160), torch.bfloat16, 64, 8, 0.001, 0)
    assert roomy.clip and len(roomy.grid.tiles) == 6
    assert roomy.batch == 6 and tight.batch == 1   # one tile is the floor
    assert roomy.modelled_peak <= roomy.budget_bytes
    middle = tile_plan(info, (4, 90, 160), torch.bfloat16, 64, 8,
                       (roomy.whole_bytes + 2.5 * roomy.tile_bytes) / 2**30, 0)
    assert middle.batch == 2 and middle.modelled_peak <= middle.budget_bytes
    assert "causal cache" in roomy.describe(9) and "over the budget" not in roomy.describe(9)
    assert "over the budget" in tight.describe(9)


def test_clip_tiles_shrink_to_fit_the_budget_or_need_the_least() -> None:
    """Wan 2.1's sizes (96 channels at full resolution, 127 M weights), 1280x720: tiles of
    up to 128 cells would be 2 of 90x84 cells, modelled at 9.6 GiB in batches of one;
    an 8 GiB budget gets the largest smaller tiles that fit (4 of 49x84 cells). 4K cannot fit 8 GiB (the
    caches alone are ~36 GiB): the plan with the least need is taken."""
    wan21 = VaeInfo(path=Path("wan"), class_name="AutoencoderKLWan", latent_channels=16, scale=8,
                    scaling_factor=1.0, shift_factor=0.0, force_upcast=False, sample_size=256,
                    full_res_channels=96, temporal_scale=4, parameters=126_892_531)
    big = clip_tile_plan(wan21, make_grid(90, 160, 128, 8), 2, 8.0)
    assert big.grid.tile_shape == (90, 84) and big.batch == 1 and 9.5 < big.modelled_peak / 2**30 < 10.5
    assert tile_plan(wan21, (16, 90, 160), torch.bfloat16, 128, 8, 16.0, 0).grid.tile_shape == (90, 84)
    fitted = tile_plan(wan21, (16, 90, 160), torch.bfloat16, 128, 8, 8.0, 0)
    assert fitted.modelled_peak <= 8 * 2**30 and fitted.batch == 1
    assert fitted.grid.tile_shape == (49, 84) and "over the budget" not in fitted.describe(81)
    four_k = tile_plan(wan21, (16, 270, 480), torch.bfloat16, 128, 8, 8.0, 0)
    needs = [clip_tile_plan(wan21, make_grid(270, 480, size, 8), 2, 8.0).modelled_peak
             for size in range(128, 8, -8)]
    assert four_k.modelled_peak == min(needs) > 8 * 2**30
    assert "over the budget" in four_k.describe(81)


def test_a_clip_job_renders_tiled_close_to_whole(tmp_path: Path, wan_vae: Path) -> None:
    from pipeline.files.png import read_png

    shot = {"frame_end": 9, "width": 128, "height": 96}
    renders = {}
    for name, tuning in (("whole", {}), ("tiles", {"decode": "tiles", "tile_size": 8, "tile_overlap": 4,
                                                    "vram_budget_gib": 0.01})):
        root = tmp_path / name
        job = clip_job(tmp_path, wan_vae, name=f"{name}.toml", shot=shot, source={"kind": "noise"},
                       output={"root": str(root), "formats": ["png"]}, tuning=tuning)
        if name == "tiles":
            dry = render("run", str(job), "--dry-run")
            assert dry.returncode == 0, dry.stderr
            assert "6 tile(s) of 8x8 latent cells" in dry.stdout and "batches of up to 1" in dry.stdout
            assert not root.exists()
        result = render("run", str(job))
        assert result.returncode == 0, result.stderr
        if name == "tiles":
            assert "batch(es) of tiles" in result.stdout
        renders[name] = [read_png(root / "test" / f"test.{f:04d}.png").astype(float) for f in range(1, 10)]
    mse = np.mean([np.mean((a - b) ** 2) for a, b in zip(renders["whole"], renders["tiles"], strict=True)])
    assert 10 * math.log10(255**2 / mse) > 35
