"""Fixtures: tiny real diffusers VAEs saved with save_pretrained, latents on disk, and
job files that point at them (the factories are in helpers.py). Everything the tests
render goes through the same from_pretrained and file reads a user's job does."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

if not torch.cuda.is_available():
    # Triton kernels defined from here on run in Triton's CPU interpreter, so the kernel
    # tests check their code here too; the pipeline launches them on CUDA tensors only.
    os.environ.setdefault("TRITON_INTERPRET", "1")
from helpers import (
    WAN_MEAN,
    WAN_STD,
    base_job,
    job_toml,
    make_kl_vae,
    redis_server_port,
    write_latents,
)

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def kl_vae(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_kl_vae(tmp_path_factory.mktemp("models") / "kl_vae")


@pytest.fixture
def job_dir(tmp_path: Path, kl_vae: Path) -> Path:
    """A folder with latents for frames 1-6 at 32x24 (latents 4x12x16) beside the job."""
    write_latents(tmp_path / "latents", range(1, 7), (4, 12, 16))
    return tmp_path


@pytest.fixture
def write_job(job_dir: Path, kl_vae: Path) -> Callable[..., Path]:
    """write_job(**overrides) -> path of a job file in job_dir; output root job_dir/out."""
    def write(name: str = "job.toml", **overrides: Any) -> Path:
        job = base_job(kl_vae, **overrides)
        if isinstance(job["output"], dict) and job["output"].get("root") == "out":
            job["output"]["root"] = str(job_dir / "out")
        path = job_dir / name
        path.write_text(job_toml(job))
        return path
    return write


@pytest.fixture(scope="session")
def wan_vae(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny AutoencoderKLWan (video VAE: 4 latent channels, 8x in space, 4x in time)."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("models") / "wan"
    AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
                     temperal_downsample=[False, True, True], latents_mean=WAN_MEAN,
                     latents_std=WAN_STD).save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="session")
def redis_server() -> Iterator[int]:
    """A real redis-server on a free loopback port, for the whole session."""

    port = redis_server_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    yield port
    process.terminate()
    process.wait(10)


@pytest.fixture
def redis_url_factory(request: pytest.FixtureRequest) -> Callable[[], str]:
    """redis_url_factory() -> a URL on a fresh, empty database of the session's server."""
    def make() -> str:
        import redis

        port = request.getfixturevalue("redis_server")
        redis.Redis(port=port, db=3).flushdb()
        return f"redis://127.0.0.1:{port}/3"
    return make


CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture
def browser() -> Iterator:
    """Debian's headless chromium through its own chromedriver (nothing downloaded); a
    skip with the reason where it is not installed, a failure in CI (which installs it)."""
    if CHROMIUM is None or CHROMEDRIVER is None:
        if os.environ.get("CI"):
            pytest.fail("chromium / chromedriver are not installed; .ci/run installs them with apt-get")
        pytest.skip("Debian's chromium and chromium-driver are not installed "
                    "(apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    yield driver
    driver.quit()
