"""The VAE a job decodes with: a local diffusers folder, checked before it is loaded.

`inspect_vae` reads only config.json (cheap, for planning and for the errors a user
must see before anything runs); `load_vae` loads the weights, from safetensors only,
since a pickled checkpoint could run code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import torch

from pipeline.errors import JobError
from pipeline.models.dtypes import DTYPES

# A loaded diffusers VAE. Typed loosely on purpose: its blocks are attributes that
# torch's stubs can only call `Tensor | Module`.
Vae: TypeAlias = Any

SUPPORTED_CLASSES = ("AutoencoderKL", "AutoencoderTiny", "AutoencoderKLWan")
VIDEO_CLASSES = ("AutoencoderKLWan",)   # decode clips: (C, T, h, w) latents, chunk by chunk


@dataclass(frozen=True)
class VaeInfo:
    path: Path
    class_name: str
    latent_channels: int
    scale: int                 # output pixels per latent cell, per axis
    scaling_factor: float      # latents arrive multiplied by this (diffusers convention)
    shift_factor: float        # ... and shifted by this
    force_upcast: bool         # float16 overflows in this VAE: decode in float32
    sample_size: int           # diffusers' tile size in pixels when tiling
    full_res_channels: int     # widest decoder activation at full resolution (memory model)
    temporal_scale: int = 1    # pixel frames per latent frame after the first (video VAEs)
    block_out_channels: tuple[int, ...] = ()   # AutoencoderKL: its blocks' widths, encoder order
    parameters: int = 0        # weights in the safetensors files (the whole VAE is loaded)
    latents_mean: tuple[float, ...] | None = None   # per channel: latents arrive as (z - mean) / std
    latents_std: tuple[float, ...] | None = None

    @property
    def is_video(self) -> bool:
        return self.class_name in VIDEO_CLASSES


def inspect_vae(path: Path) -> VaeInfo:
    field = "model.path"
    if not path.exists():
        raise JobError(field, str(path), "no such folder; expected a local diffusers VAE folder "
                       "(config.json and diffusion_pytorch_model.safetensors)")
    if not path.is_dir():
        raise JobError(field, str(path), "is a file; expected a diffusers VAE folder")
    config_path = path / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise JobError(field, str(path), "has no config.json; expected a folder written by "
                       "save_pretrained()") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise JobError(field, str(path), f"config.json is not valid JSON ({err})") from None
    class_name = config.get("_class_name") if isinstance(config, dict) else None
    if class_name not in SUPPORTED_CLASSES:
        raise JobError(field, str(path), f"holds a {class_name or 'model of unknown class'}; "
                       f"supported VAEs: {', '.join(SUPPORTED_CLASSES)}")
    if not list(path.glob("*.safetensors")):
        raise JobError(field, str(path), "has no .safetensors weights (pickled .bin checkpoints "
                       "are refused: they can run code); re-save with safe_serialization=True")
    try:
        info = _info(path, class_name, config)
    except (KeyError, TypeError, ValueError) as err:
        raise JobError(field, str(path), f"config.json lacks a usable {err} for a {class_name}") from None
    return dataclasses.replace(info, parameters=parameter_count(path))


def parameter_count(path: Path) -> int:
    """Weights in a folder's safetensors files, from their headers alone (no tensor read)."""
    from safetensors import safe_open

    total = 0
    for file in path.glob("*.safetensors"):
        try:
            with safe_open(str(file), framework="pt") as handle:
                for name in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                    total += math.prod(handle.get_slice(name).get_shape())
        except Exception as err:
            raise JobError("model.path", str(file), f"not a readable safetensors file ({err})") from None
    return total


def _info(path: Path, class_name: str, config: dict) -> VaeInfo:
    if class_name == "AutoencoderKLWan":
        channels = int(config.get("z_dim", 16))
        mean, std = config.get("latents_mean"), config.get("latents_std")
        if mean is not None and (len(mean) != channels or len(std or []) != channels):
            raise ValueError("latents_mean/latents_std (one per latent channel)")
        base = int(config.get("decoder_base_dim") or config.get("base_dim", 96))
        return VaeInfo(
            path=path, class_name=class_name, latent_channels=channels,
            scale=int(config.get("scale_factor_spatial") or 8), scaling_factor=1.0, shift_factor=0.0,
            force_upcast=False, sample_size=256, full_res_channels=base,
            temporal_scale=int(config.get("scale_factor_temporal") or 4),
            latents_mean=tuple(map(float, mean)) if mean is not None else None,
            latents_std=tuple(map(float, std)) if std is not None else None,
        )
    if class_name == "AutoencoderKL":
        blocks = config.get("block_out_channels", [64])
        scale = 2 ** (len(blocks) - 1)
        sample_size = config.get("sample_size", 32)
        return VaeInfo(
            path=path, class_name=class_name,
            latent_channels=int(config.get("latent_channels", 4)), scale=scale,
            scaling_factor=float(config.get("scaling_factor", 0.18215)),
            shift_factor=float(config.get("shift_factor") or 0.0),
            force_upcast=bool(config.get("force_upcast", True)),
            sample_size=int(sample_size[0] if isinstance(sample_size, list) else sample_size),
            full_res_channels=int(max(blocks[:2])),  # the last upsampler's conv runs at full size
            block_out_channels=tuple(int(b) for b in blocks),
        )
    blocks = config.get("decoder_block_out_channels", [64, 64, 64, 64])
    scale = int(config.get("upsampling_scaling_factor", 2)) ** (len(blocks) - 1)
    return VaeInfo(
        path=path, class_name=class_name,
        latent_channels=int(config.get("latent_channels", 4)), scale=scale,
        scaling_factor=float(config.get("scaling_factor", 1.0)),
        shift_factor=float(config.get("shift_factor") or 0.0),
        force_upcast=bool(config.get("force_upcast", False)),
        sample_size=512,
        full_res_channels=int(max(blocks)),
    )


def effective_dtype(info: VaeInfo, dtype: str, device: torch.device) -> str:
    """float16 overflows in VAEs whose config says force_upcast (diffusers upcasts them too)."""
    if dtype == "float16" and info.force_upcast:
        return "float32"
    if device.type == "cpu" and dtype == "float16":
        return "float32"  # CPU kernels for half are slow or missing; bfloat16 works there
    return dtype


def import_model_classes(*class_names: str) -> None:
    """Import these diffusers classes and the kernels now (diffusers imports lazily)."""
    import diffusers

    import pipeline.kernels.install  # noqa: F401

    for name in class_names:
        getattr(diffusers, name)


def load_vae(info: VaeInfo, dtype: str, device: torch.device, tiling: bool) -> Vae:
    import diffusers  # deferred: importing diffusers costs seconds, not needed to plan

    from pipeline.kernels.install import use_fast_paths

    cls = getattr(diffusers, info.class_name)
    # low_cpu_mem_usage=False: the default wants `accelerate` and warns without it
    vae, loading = cls.from_pretrained(str(info.path), torch_dtype=DTYPES[dtype], use_safetensors=True,
                                       low_cpu_mem_usage=False, output_loading_info=True)
    # diffusers only warns when the weights do not fit the config, and fills the gaps randomly
    mismatch = [f"{what.replace('_', ' ')}: {', '.join(map(str, keys[:3]))}" + (" ..." if len(keys) > 3 else "")
                for what, keys in loading.items() if what != "error_msgs" and keys]
    if mismatch or loading.get("error_msgs"):
        raise JobError("model.path", str(info.path), "its weights do not match its config.json ("
                       + "; ".join(mismatch + list(loading.get("error_msgs") or [])) + "); re-save the model "
                       "with save_pretrained()")
    vae = vae.to(device).eval().requires_grad_(False)
    use_fast_paths(vae, device)
    if tiling:
        vae.enable_tiling()
    return vae


def model_hash(path: Path) -> str:
    """Content hash of the config and weights: a frame records exactly what made it."""
    digest = hashlib.sha256()
    for file in sorted([path / "config.json", *path.glob("*.safetensors")]):
        digest.update(file.name.encode())
        with file.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()[:16]
