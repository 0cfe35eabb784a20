"""Source stage: latents per frame, read from files or drawn as seeded noise.

Latent files are data: safetensors, or .npy read with allow_pickle=False. Their
headers are checked when the job is planned, so a missing or misshapen file fails the
job before anything is written, not at frame 37.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import trio
from safetensors import safe_open

from .. import patterns
from ..errors import JobError, StageFailed
from ..frames import ClipChunk, LatentFrame
from ..job import Source
from ..seeds import frame_seed
from ..stats import StageStats
from ..wan_chunks import chunk_frames

_FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}


def latent_path(source: Source, frame: int) -> Path:
    assert source.path is not None   # {shot} was filled when the job was read
    return Path(patterns.fill(source.path, shot="", frame=frame))


def check_latent_files(source: Source, frames: range, expected: tuple[int, int, int],
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
        if dtype.kind != "f":
            raise JobError("source.path", str(path), f"holds {dtype}; expected a float array")
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
        return torch.from_numpy(np.load(path, allow_pickle=False))
    with safe_open(str(path), framework="pt") as handle:
        return handle.get_tensor(tensor)


def read_clip(source: Source) -> torch.Tensor:
    latents = _read_tensor(latent_path(source, 0), source.tensor)
    return latents[0] if latents.dim() == 5 else latents


def noise_latents(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


async def source_stage(source: Source, frames: list[int], job_seed: int,
                       shape: tuple[int, int, int], stats: StageStats,
                       tx: trio.MemorySendChannel, stop: trio.Event | None = None) -> None:
    """Emit each frame's latents in order; once `stop` is set, emit no more (frames
    already on their way still finish: a draining farm worker)."""
    def load(frame: int) -> LatentFrame:
        seed = frame_seed(job_seed, frame)
        if source.kind == "noise":
            return LatentFrame(frame, seed, noise_latents(seed, shape))
        return LatentFrame(frame, seed, read_latents(source, frame))

    async with tx:
        for frame in frames:
            if stop is not None and stop.is_set():
                return
            try:
                with stats.busy():
                    item = await trio.to_thread.run_sync(load, frame)
            except Exception as err:
                raise StageFailed("source", frame, err) from err
            await stats.send(tx, item)


async def clip_source_stage(source: Source, frames: list[int], job_seed: int, shape: tuple[int, int, int, int],
                            temporal_scale: int, stats: StageStats, tx: trio.MemorySendChannel) -> None:
    """Emit the shot's clip one latent frame at a time, in order, with the frames each
    decodes to. A clip decodes from its first latent frame (the cache is causal), so
    a clip job renders every frame or none."""
    def load() -> torch.Tensor:
        if source.kind == "noise":
            return noise_latents(job_seed, shape)
        return read_clip(source)

    async with tx:
        if not frames:  # every frame finished (a resumed run, the farm's video task): nothing to decode
            return
        try:
            with stats.busy():
                clip = await trio.to_thread.run_sync(load)
        except Exception as err:
            raise StageFailed("source", frames[0], err) from err
        for chunk in clip_chunks(clip, frames, job_seed, temporal_scale):
            await stats.send(tx, chunk)


def clip_chunks(clip: torch.Tensor, frames: list[int], job_seed: int, temporal_scale: int) -> Iterator[ClipChunk]:
    """A (C, T, h, w) clip as its latent frames, each with the shot frames it decodes to."""
    for index in range(clip.shape[1]):
        numbers = tuple(frames[i] for i in chunk_frames(index, temporal_scale))
        yield ClipChunk(index, numbers, tuple(frame_seed(job_seed, f) for f in numbers),
                        clip[:, index:index + 1], index == clip.shape[1] - 1)
