"""What the GPU benchmarks share: the real-size model configs, built with random
weights (no weights can be downloaded here; the compute is the same), and the writer
settings their jobs run with."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import diffusers


def default_writers() -> int:
    """PNG writer threads: all cores but 4, which keep the thread that queues the GPU's
    kernels fed (16 writers on 16 cores starved it: benchmarks/RESULTS.md, issue 3)."""
    return max(2, (os.cpu_count() or 4) - 4)


def tuning_table(writers: int) -> str:
    """The [tuning] table of a benchmark job: a ring and channels deep enough for the writers."""
    return f"[tuning]\nchannel_depth = 3\npinned_buffers = {max(8, writers + 4)}\nwriter_threads = {writers}\n"


def noise_job(path: Path, *, seed: int, name: str, model: Path, root: Path, frames: int, width: int,
              height: int, formats: list[str], writers: int, dtype: str = "bfloat16", tuning: str = "") -> Path:
    """A benchmark job decoding frames from the noise source (latents drawn from the job
    seed, nothing read), watermarked; `tuning` adds lines to its [tuning] table."""
    path.write_text(f"""seed = {seed}
preset = "default"
[shot]
name = "{name}"
frame_start = 1
frame_end = {frames}
fps = 24
width = {width}
height = {height}
[source]
kind = "noise"
[model]
path = "{model}"
dtype = "{dtype}"
[output]
root = "{root}"
formats = {json.dumps(formats)}
[watermark]
enabled = true
payload = "{name}"
{tuning_table(writers)}{tuning}""")
    return path


def sd_class_vae() -> diffusers.AutoencoderKL:
    """Stable Diffusion's VAE architecture: block_out_channels 128/256/512/512."""
    return diffusers.AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
        norm_num_groups=32, sample_size=512, scaling_factor=0.18215)


def char_clip_tokenizer(folder: Path, max_length: int = 77) -> Any:
    """A CLIP tokenizer over single characters (no merges): the real one cannot be
    downloaded, and the text encoders' cost does not depend on the vocabulary."""
    from transformers import CLIPTokenizer

    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    vocab = {c: b for b, c in chars.items()} | {c + "</w>": 256 + b for b, c in chars.items()}
    vocab |= {"<|startoftext|>": 49406, "<|endoftext|>": 49407}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_length)


def sdxl_class_pipeline(work: Path) -> diffusers.StableDiffusionXLPipeline:
    """Stable Diffusion XL base's architecture (UNet 2.6 B parameters, CLIP-L and
    OpenCLIP-bigG text encoders, its VAE), random weights, built on the current device."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    unet = diffusers.UNet2DConditionModel(
        sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816)
    clip_l = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                          num_hidden_layers=12, projection_dim=768, hidden_act="quick_gelu"))
    clip_g = CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=1280, intermediate_size=5120,
                                                        num_attention_heads=20, num_hidden_layers=32,
                                                        projection_dim=1280, hidden_act="gelu"))
    vae = sd_class_vae()
    vae.register_to_config(scaling_factor=0.13025, force_upcast=False)
    tokenizer = char_clip_tokenizer(work / "tokenizer")
    return diffusers.StableDiffusionXLPipeline(
        vae=vae, text_encoder=clip_l, text_encoder_2=clip_g, tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet,
        scheduler=diffusers.EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                                   steps_offset=1, timestep_spacing="leading"))
