"""Fixtures: tiny real diffusers VAEs saved with save_pretrained, latents on disk, and
job files that point at them. Everything the tests render goes through the same
from_pretrained and file reads a user's job does."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def make_kl_vae(folder: Path, *, blocks: int = 2, latent_channels: int = 4, seed: int = 0) -> Path:
    """An AutoencoderKL of a few thousand weights; scale = 2 ** (blocks - 1)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=(8,) * blocks, layers_per_block=1, norm_num_groups=4,
        sample_size=32, scaling_factor=0.5,
    )
    vae.save_pretrained(folder, safe_serialization=True)
    return folder


def make_tiny_vae(folder: Path, *, seed: int = 0) -> Path:
    """An AutoencoderTiny (TAESD layout) with 8 channels per block; scale 8."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    vae = AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8),
                          decoder_block_out_channels=(8, 8, 8, 8),
                          num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1),
                          latent_channels=4)
    vae.save_pretrained(folder, safe_serialization=True)
    return folder


def _byte_chars() -> list[str]:
    """GPT-2's byte-to-character table, as CLIP's tokenizer spells bytes."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def tiny_clip_tokenizer(folder: Path) -> Any:
    """A CLIP tokenizer whose vocabulary is single characters (no merges): made here,
    since no tokenizer can be downloaded."""
    import json

    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = _byte_chars()
    vocab = {c: i for i, c in enumerate(chars)} | {c + "</w>": 256 + i for i, c in enumerate(chars)}
    vocab |= {"<|startoftext|>": 512, "<|endoftext|>": 513}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16)


def _clip_config(projection: bool = False) -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(bos_token_id=512, eos_token_id=513, pad_token_id=513, vocab_size=514, hidden_size=32,
                          intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                          max_position_embeddings=16, projection_dim=32 if projection else 512)


def _tiny_pipeline_vae() -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
                         layers_per_block=1, scaling_factor=0.5)   # 2x: a 32x48 frame is 16x24 latents


def make_sd_pipeline(folder: Path, seed: int = 0) -> Path:
    """A StableDiffusionPipeline of a few thousand weights, saved with save_pretrained."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                norm_num_groups=4, attention_head_dim=2)
    pipe = StableDiffusionPipeline(vae=_tiny_pipeline_vae(), text_encoder=CLIPTextModel(_clip_config()),
                                   tokenizer=tiny_clip_tokenizer(folder.parent / f"{folder.name}-tokenizer"),
                                   unet=unet, scheduler=EulerDiscreteScheduler(steps_offset=1), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def make_sdxl_pipeline(folder: Path, seed: int = 0) -> Path:
    """A StableDiffusionXLPipeline (two text encoders, size conditioning) of a few
    thousand weights, after the configs diffusers' own tests use."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
                                use_linear_projection=True, addition_embed_type="text_time",
                                addition_time_embed_dim=8, transformer_layers_per_block=(1, 1),
                                projection_class_embeddings_input_dim=80, cross_attention_dim=64,
                                norm_num_groups=4)
    tokenizer = tiny_clip_tokenizer(folder.parent / f"{folder.name}-tokenizer")
    pipe = StableDiffusionXLPipeline(vae=_tiny_pipeline_vae(), text_encoder=CLIPTextModel(_clip_config()),
                                     text_encoder_2=CLIPTextModelWithProjection(_clip_config(projection=True)),
                                     tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet,
                                     scheduler=EulerDiscreteScheduler(steps_offset=1))
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def make_sd3_pipeline(folder: Path, seed: int = 0) -> Path:
    """A StableDiffusion3Pipeline (16 latent channels, a shifted VAE), saved without its
    T5 encoder (text_encoder_3=None), as SD3 may be run."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=1, in_channels=16, out_channels=16, num_layers=1,
                                        attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
                                        joint_attention_dim=64, pooled_projection_dim=64)
    vae = AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=16, norm_num_groups=4,
                        layers_per_block=1, scaling_factor=1.5, shift_factor=0.1, use_quant_conv=False,
                        use_post_quant_conv=False)
    tokenizer = tiny_clip_tokenizer(folder.parent / f"{folder.name}-tokenizer")
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae,
        text_encoder=CLIPTextModelWithProjection(_clip_config(projection=True)), tokenizer=tokenizer,
        text_encoder_2=CLIPTextModelWithProjection(_clip_config(projection=True)), tokenizer_2=tokenizer,
        text_encoder_3=None, tokenizer_3=None)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


T5_VOCAB = {"<pad>": 0, "</s>": 1, "<unk>": 2} | {chr(c): 3 + i for i, c in enumerate(range(32, 127))}


def tiny_t5_tokenizer() -> Any:
    """A T5-style tokenizer over printable characters, made here (none can be downloaded)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel(vocab=T5_VOCAB, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=512)


def make_flux_pipeline(folder: Path, seed: int = 0) -> Path:
    """A FluxPipeline (CLIP and T5 encoders, latents packed in 2x2 patches, a shifted VAE)
    of a few thousand weights."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, axes_dims_rope=[4, 4, 8])
    vae = AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
                        layers_per_block=1, scaling_factor=1.5, shift_factor=0.1, use_quant_conv=False,
                        use_post_quant_conv=False)
    t5 = T5EncoderModel(T5Config(vocab_size=len(T5_VOCAB), d_model=32, d_kv=8, d_ff=37, num_layers=1, num_heads=4,
                                 relative_attention_num_buckets=8))
    FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, transformer=transformer,
                 text_encoder=CLIPTextModel(_clip_config()),
                 tokenizer=tiny_clip_tokenizer(folder.parent / f"{folder.name}-tokenizer"),
                 text_encoder_2=t5, tokenizer_2=tiny_t5_tokenizer()).save_pretrained(folder, safe_serialization=True)
    return folder


def make_wan_pipeline(folder: Path, seed: int = 0) -> Path:
    """A WanPipeline (text-to-video: UMT5 encoder, Wan transformer, Wan VAE) of a few
    thousand weights, with a character-level tokenizer made here."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer = tiny_t5_tokenizer()
    torch.manual_seed(seed)
    encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(T5_VOCAB), d_model=16, d_kv=4, d_ff=32, num_layers=1,
                                          num_heads=4, relative_attention_num_buckets=8))
    transformer = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                                        in_channels=4, out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32,
                                        num_layers=1, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                        rope_max_seq_len=32)
    vae = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
                           temperal_downsample=[False, True, True], latents_mean=WAN_MEAN, latents_std=WAN_STD)
    WanPipeline(tokenizer=tokenizer, text_encoder=encoder, transformer=transformer, vae=vae,
                scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0)).save_pretrained(folder, safe_serialization=True)
    return folder


def write_latents(folder: Path, frames: range, shape: tuple[int, ...], *, seed: int = 0,
                  suffix: str = ".safetensors", smooth: bool = False) -> str:
    """One latent file per frame; returns the job's path pattern for them.

    `smooth` draws coarse noise and upsamples it, so that even a random VAE decodes
    it to a picture with large areas rather than pixel noise (as real frames have).
    """
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    for frame in frames:
        if smooth:
            coarse = torch.randn((1, shape[0], 6, 8), generator=generator)
            latents = torch.nn.functional.interpolate(coarse, size=shape[1:], mode="bicubic")[0]
        else:
            latents = torch.randn(shape, generator=generator)
        path = folder / f"frame_{frame:04d}{suffix}"
        if suffix == ".npy":
            np.save(path, latents.numpy())
        else:
            save_file({"latents": latents}, str(path))
    return f"{folder.name}/frame_{{frame:04d}}{suffix}"


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


def job_toml(job: dict[str, Any]) -> str:
    lines = [f"{k} = {toml_value(v)}" for k, v in job.items() if not isinstance(v, dict)]
    for table, fields in job.items():
        if isinstance(fields, dict):
            lines.append(f"\n[{table}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in fields.items()]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def kl_vae(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_kl_vae(tmp_path_factory.mktemp("models") / "kl_vae")


@pytest.fixture
def job_dir(tmp_path: Path, kl_vae: Path) -> Path:
    """A folder with latents for frames 1-6 at 32x24 (latents 4x12x16) beside the job."""
    write_latents(tmp_path / "latents", range(1, 7), (4, 12, 16))
    return tmp_path


def base_job(vae: Path, **overrides: Any) -> dict[str, Any]:
    job: dict[str, Any] = {
        "seed": 7,
        "shot": {"name": "test", "frame_start": 1, "frame_end": 6, "fps": 24,
                 "width": 32, "height": 24},
        "source": {"kind": "latents", "path": "latents/frame_{frame:04d}.safetensors"},
        "model": {"path": str(vae), "dtype": "float32"},
        "output": {"root": "out", "formats": ["png", "mp4"]},
        "watermark": {"enabled": False},
        "tuning": {"writer_threads": 2},
    }
    for table, fields in overrides.items():
        if table == "source" and fields.get("kind") == "noise":
            job[table] = fields  # noise takes no path
        elif isinstance(fields, dict) and isinstance(job.get(table), dict):
            job[table] = {**job[table], **fields}
        else:
            job[table] = fields
    return job


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


def render(*args: str, cwd: Path | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    """The real `render` CLI in a subprocess, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=cwd, text=True,
                          capture_output=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(
                              [str(Path(__file__).resolve().parent.parent),
                               *filter(None, [os.environ.get("PYTHONPATH")])])})


WAN_MEAN = [0.5, -0.25, 0.1, 0.0]
WAN_STD = [2.0, 1.5, 0.5, 1.0]


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


def clip_job(tmp_path: Path, vae: Path, frames: int = 9, name: str = "job.toml", **overrides: dict) -> Path:
    """A 64x48 shot of `frames` frames; its clip of 1 + (frames - 1) // 4 latent frames in clip.safetensors."""
    latent_frames = 1 + (frames - 1) // 4
    clip = torch.randn(4, latent_frames, 6, 8, generator=torch.Generator().manual_seed(3))
    save_file({"latents": clip}, str(tmp_path / "clip.safetensors"))
    tables = {"shot": {"frame_end": frames, "width": 64, "height": 48},
              "source": {"kind": "clip", "path": "clip.safetensors"},
              "output": {"root": str(tmp_path / "out"), "formats": ["png", "mp4"]}}
    job = base_job(vae, **{**tables, **overrides})
    path = tmp_path / name
    path.write_text(job_toml(job))
    return path


@pytest.fixture(scope="session")
def redis_server() -> Iterator[int]:
    """A real redis-server on a free loopback port, for the whole session."""
    import shutil
    import socket

    if shutil.which("redis-server") is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed; .ci/run installs it with apt-get")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
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
