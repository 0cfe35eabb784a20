"""Latent files, the input of decode-only jobs: one per frame (C, h, w), or one clip
(C, T, h, w) for a video VAE. They are data: safetensors, or .npy read with
allow_pickle=False. Their headers are checked when the job is planned, so a missing
or misshapen file fails the job before anything is written, not at frame 37.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from pipeline.config import patterns
from pipeline.config.job import Source
from pipeline.errors import JobError

_FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}
_NPY_FLOAT_SIZES = (2, 4, 8)


def latent_path(source: Source, frame: int) -> Path:
    assert source.path is not None   # {shot} was filled when the job was read
    return Path(patterns.fill(source.path, shot="", frame=frame))


def check_latent_files(source: Source, frames: Iterable[int], expected: tuple[int, int, int],
                       explain: str) -> None:
    """Every frame's file exists and holds one float tensor of `expected` shape (C, h, w)."""
    for frame in frames:
        path = latent_path(source, frame)
        shape = _header_shape(path, source.tensor, frame)
        if shape[:1] == (1,) and len(shape) == 4:
            shape = shape[1:]
        if shape != expected:
            raise JobError("source.path", str(path),
                           f"frame {frame} holds latents of shape {shape}; expected {expected} "
                           f"(channels, height, width) {explain}")


def _header_shape(path: Path, tensor: str, frame: int) -> tuple[int, ...]:
    if not path.is_file():
        raise JobError("source.path", str(path), f"no latent file for frame {frame}")
    if path.suffix == ".npy":
        try:
            with path.open("rb") as handle:
                version = np.lib.format.read_magic(handle)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, _order, dtype = read_header(handle)
        except ValueError as err:
            raise JobError("source.path", str(path), f"not a valid .npy file ({err})") from None
        if dtype.kind != "f" or dtype.itemsize not in _NPY_FLOAT_SIZES:   # long double: torch has none
            raise JobError("source.path", str(path), f"holds {dtype} ({dtype.str}); expected a float16, "
                           "float32 or float64 array (either byte order)")
        return tuple(shape)
    try:
        with safe_open(str(path), framework="pt") as handle:
            if tensor not in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                raise JobError("source.tensor", tensor, f"not in {path}; it holds: "
                               + ", ".join(handle.keys()))
            piece = handle.get_slice(tensor)
            if piece.get_dtype() not in _FLOAT_DTYPES:
                raise JobError("source.path", str(path), f"tensor {tensor!r} is "
                               f"{piece.get_dtype()}; expected a float tensor")
            return tuple(piece.get_shape())
    except JobError:
        raise
    except Exception as err:
        raise JobError("source.path", str(path), f"not a valid safetensors file ({err})") from None


def check_clip_file(source: Source, expected: tuple[int, int, int, int], explain: str) -> None:
    """The clip file exists and holds one float tensor of `expected` shape (C, T, h, w)."""
    path = latent_path(source, 0)
    shape = _header_shape(path, source.tensor, 0)
    if shape[:1] == (1,) and len(shape) == 5:
        shape = shape[1:]
    if shape != expected:
        raise JobError("source.path", str(path), f"holds latents of shape {shape}; expected {expected} "
                       f"(channels, latent frames, height, width) {explain}")


def read_latents(source: Source, frame: int) -> torch.Tensor:
    latents = _read_tensor(latent_path(source, frame), source.tensor)
    return latents[0] if latents.dim() == 4 else latents


def _read_tensor(path: Path, tensor: str) -> torch.Tensor:
    if path.suffix == ".npy":
        array = np.load(path, allow_pickle=False)
        if not array.dtype.isnative:   # big-endian files (written on another machine): torch takes native only
            array = array.astype(array.dtype.newbyteorder("="))
        latents = torch.from_numpy(array)
    else:
        with safe_open(str(path), framework="pt") as handle:
            latents = handle.get_tensor(tensor)
    if not bool(torch.isfinite(latents).all()):   # it would decode to a black frame, "successfully"
        raise JobError("source.path", str(path), "holds NaN or infinite values; expected finite latents")
    return latents


def read_clip(source: Source) -> torch.Tensor:
    latents = _read_tensor(latent_path(source, 0), source.tensor)
    return latents[0] if latents.dim() == 5 else latents
