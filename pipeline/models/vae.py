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
    except (ValueError, RecursionError) as err:  # JSONDecodeError, UnicodeDecodeError, 4301+ digit integers
        raise JobError(field, str(path), f"config.json is not valid JSON ({err})") from None
    class_name = config.get("_class_name") if isinstance(config, dict) else None
    if class_name not in SUPPORTED_CLASSES:
        raise JobError(field, str(path), f"holds a {class_name or 'model of unknown class'}; "
                       f"supported VAEs: {', '.join(SUPPORTED_CLASSES)}")
    if not list(path.glob("*.safetensors")):
        raise JobError(field, str(path), "has no .safetensors weights (pickled .bin checkpoints "
                       "are refused: they can run code); re-save with safe_serialization=True")
    check_config(config_path, class_name, config)
    try:
        info = _info(path, class_name, config)
    except (KeyError, TypeError, ValueError) as err:
        raise JobError(field, str(path), f"config.json lacks a usable {err} for a {class_name}") from None
    return dataclasses.replace(info, parameters=parameter_count(path))


def _number(v: Any) -> bool:
    try:
        return type(v) in (int, float) and math.isfinite(v)
    except OverflowError:   # an integer beyond any float
        return False


def _whole(lo: int, hi: int) -> tuple[str, Any]:
    return f"an integer from {lo} to {hi}", lambda v: type(v) is int and lo <= v <= hi


def _wholes(lo: int, hi: int, most: int = 8) -> tuple[str, Any]:
    return (f"a list of 1 to {most} integers from {lo} to {hi}",
            lambda v: isinstance(v, list) and 1 <= len(v) <= most and all(type(x) is int and lo <= x <= hi for x in v))


def _or_null(check: tuple[str, Any]) -> tuple[str, Any]:
    return f"{check[0]} or null", lambda v: v is None or check[1](v)


_FINITE = ("a finite number", _number)
_FLAG = ("true or false", lambda v: isinstance(v, bool))
_NUMBERS = ("a list of at most 1024 finite numbers", lambda v: isinstance(v, list) and len(v) <= 1024
            and all(_number(x) for x in v))
_FLAGS = ("a list of at most 8 of true and false", lambda v: isinstance(v, list) and len(v) <= 8
          and all(isinstance(x, bool) for x in v))
_CHANNELS = _whole(1, 64)          # image channels in and out (Wan 2.2 patchifies: 12)
_LATENT_CHANNELS = _whole(1, 1024)
_WIDTHS = _wholes(1, 4096)         # channels of each block
_COMMON = {"in_channels": _CHANNELS, "out_channels": _CHANNELS, "latent_channels": _LATENT_CHANNELS,
           "scaling_factor": _FINITE, "shift_factor": _or_null(_FINITE), "force_upcast": _FLAG}
# What each config.json field diffusers builds the model from may hold: (what is allowed,
# a test). Dimensions are bounded well above any published VAE's (SD, SDXL, SD3, Flux: 512
# channels a block, 16 latent channels; Wan 2.2: 48): a config.json is data, and diffusers
# allocates whatever it says before any weight is read.
CONFIG_FIELDS: dict[str, dict[str, tuple[str, Any]]] = {
    "AutoencoderKL": {
        **_COMMON, "block_out_channels": _WIDTHS, "layers_per_block": _whole(0, 16),
        "norm_num_groups": _whole(1, 4096),
        "sample_size": ("an integer from 1 to 65536 or a list of them", lambda v: _whole(1, 65536)[1](v)
                        or _wholes(1, 65536, 2)[1](v)),
        "latents_mean": _or_null(_NUMBERS), "latents_std": _or_null(_NUMBERS), "use_quant_conv": _FLAG,
        "use_post_quant_conv": _FLAG, "mid_block_add_attention": _FLAG,
    },
    "AutoencoderTiny": {
        **_COMMON, "encoder_block_out_channels": _WIDTHS, "decoder_block_out_channels": _WIDTHS,
        "num_encoder_blocks": _wholes(0, 64), "num_decoder_blocks": _wholes(0, 64),
        "upsampling_scaling_factor": _whole(1, 4), "latent_magnitude": _FINITE, "latent_shift": _FINITE,
    },
    "AutoencoderKLWan": {
        "in_channels": _CHANNELS, "out_channels": _CHANNELS, "base_dim": _whole(1, 1024),
        "decoder_base_dim": _or_null(_whole(1, 1024)), "z_dim": _LATENT_CHANNELS, "dim_mult": _wholes(1, 16),
        "num_res_blocks": _whole(0, 16), "attn_scales": _NUMBERS, "temperal_downsample": _FLAGS,
        "dropout": ("a number from 0 to 1", lambda v: _number(v) and 0 <= v <= 1),
        "latents_mean": _or_null(_NUMBERS), "latents_std": _or_null(_NUMBERS), "is_residual": _FLAG,
        "patch_size": _or_null(_whole(1, 16)), "scale_factor_temporal": _or_null(_whole(1, 64)),
        "scale_factor_spatial": _or_null(_whole(1, 64)),
    },
}


def check_config(config_path: Path, class_name: str, config: dict) -> None:
    """Refuse a config.json field that diffusers could not build a model from, or would
    build one too large from, naming the field (absent fields take diffusers' defaults)."""
    for key, (allowed, ok) in CONFIG_FIELDS[class_name].items():
        if key in config and not ok(config[key]):
            raise JobError(f"{key} in {config_path}", config[key], f"expected {allowed}")
    groups, widths = config.get("norm_num_groups", 32), config.get("block_out_channels", [64])
    if class_name == "AutoencoderKL" and any(width % groups for width in widths):
        raise JobError(f"norm_num_groups in {config_path}", groups,
                       f"expected a divisor of every block's channels (block_out_channels = {widths})")


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
    check_size(cls, info)
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


def check_size(cls: Any, info: VaeInfo) -> None:
    """Build the model on the meta device (no memory) to count the weights its config
    describes: diffusers allocates them all before reading one, so a config that describes
    more than twice the weights its files hold is refused here (a smaller mismatch is
    named key by key once loaded)."""
    config = json.loads((info.path / "config.json").read_text(encoding="utf-8"))
    try:
        with torch.device("meta"):
            skeleton = cls.from_config(config)
    except Exception as err:  # built from config.json alone: whatever fails is the config's
        raise JobError("model.path", str(info.path), f"config.json does not describe a {info.class_name} "
                       f"diffusers can build ({type(err).__name__}: {err})") from None
    wanted = sum(p.numel() for p in skeleton.parameters())
    stored = info.parameters or parameter_count(info.path)
    if wanted > 2 * stored:
        raise JobError("model.path", str(info.path), f"config.json describes {wanted:,} weights, its "
                       f"safetensors files hold {stored:,}; re-save the model with save_pretrained()")


def model_hash(path: Path) -> str:
    """Content hash of the config and weights: a frame records exactly what made it."""
    digest = hashlib.sha256()
    for file in sorted([path / "config.json", *path.glob("*.safetensors")]):
        digest.update(file.name.encode())
        with file.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()[:16]
