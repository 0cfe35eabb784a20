"""Shared test factories: tiny real diffusers models saved with save_pretrained, latents
on disk, job files that point at them, and the real `render` CLI in a subprocess.
Fixtures built from them live in conftest.py."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file


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
    if isinstance(value, dict):   # an inline table (an array of them is `[[table]]`)
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    return repr(value)


def job_toml(job: dict[str, Any]) -> str:
    lines = [f"{k} = {toml_value(v)}" for k, v in job.items() if not isinstance(v, dict)]
    for table, fields in job.items():
        if isinstance(fields, dict):
            lines.append(f"\n[{table}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in fields.items()]
    return "\n".join(lines) + "\n"


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


def render(*args: str, cwd: Path | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    """The real `render` CLI in a subprocess, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=cwd, text=True,
                          capture_output=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(
                              [str(Path(__file__).resolve().parent.parent),
                               *filter(None, [os.environ.get("PYTHONPATH")])])})


def render_bounded(*args: str, memory_gib: int = 4, timeout: float = 60) -> subprocess.CompletedProcess:
    """`render` as a user runs it, held to `memory_gib` of address space and `timeout`
    seconds: a regression that reads a FIFO forever or /dev/zero into memory fails the
    test (a timeout, a MemoryError) instead of hanging it or starving the machine."""
    import resource

    limit = memory_gib << 30

    def bound() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], text=True, capture_output=True,
                          timeout=timeout, preexec_fn=bound,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(
                              [str(Path(__file__).resolve().parent.parent),
                               *filter(None, [os.environ.get("PYTHONPATH")])])})


@contextlib.contextmanager
def running_monitor(queue_url: str, *extra: str, token: str | None = None, host: str = "127.0.0.1"
                    ) -> Iterator[str]:
    """A real `render monitor` on a free port of `host` (loopback unless told); yields its
    base URL on 127.0.0.1."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    env.pop("FRAMEFARM_MONITOR_TOKEN", None)
    if token is not None:
        env["FRAMEFARM_MONITOR_TOKEN"] = token
    process = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "monitor", "--queue", queue_url,
                                "--bind", f"{host}:{port}", *extra],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, process.communicate()[1]
            try:
                urllib.request.urlopen(base + "/static/monitor.css", timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the monitor did not start listening"
                time.sleep(0.05)
        yield base
    finally:
        process.terminate()
        process.wait(10)


def http(method: str, url: str, body: bytes | str | dict | None = None, token: str | None = None
         ) -> tuple[int, Any]:
    """(status, parsed JSON answer) of one real HTTP request; error statuses are returned, not raised."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body.encode() if isinstance(body, str) else body
    request = urllib.request.Request(url, data=data, method=method)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


WAN_MEAN = [0.5, -0.25, 0.1, 0.0]


WAN_STD = [2.0, 1.5, 0.5, 1.0]


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



def free_port() -> int:
    """A loopback TCP port nothing listens on (at the moment of asking)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def redis_server_port() -> int:
    """A free port for a test's own redis-server; skips where none is installed (fails in
    CI, whose .ci/run installs it)."""
    if shutil.which("redis-server") is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed; .ci/run installs it with apt-get")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    return free_port()
