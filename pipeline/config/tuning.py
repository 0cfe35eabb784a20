"""Tuning knobs: read from a TOML preset under ``configs/`` and the job's [tuning] table.

`configs/default.toml` holds every knob with its documented default; another preset
lists only what it changes, and a job's [tuning] table overrides the preset.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config.schema import Table, read_toml
from pipeline.errors import JobError

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
PRIORITIES = ("highest", "lowest")   # CUDA stream priorities, of those the device offers
ALL_GPUS = 0                         # tuning.decode_gpus = "all"
MAX_DECODE_GPUS = 64
VIDEO_CODECS = ("libx264", "libx265", "h264_nvenc", "hevc_nvenc", "mpeg4")


@dataclass(frozen=True)
class Tuning:
    channel_depth: int      # items buffered between two stages (bounded: 0-4)
    pinned_buffers: int     # host frame buffers in the ring, allocated once per run
    writer_threads: int     # PNG encoders working at once; 0 = one per core, at most 8
    decode: str             # "whole" or "tiles" (the micro-task decode)
    tile_size: int          # latent cells per tile side
    tile_overlap: int       # latent cells shared with each neighbour
    vram_budget_gib: float  # device memory for the decode: weights, whole-frame part, one batch of tiles
    norm_proxy: int         # GroupNorm statistics from the frame subsampled this much; 0 = per tile
    whole_up_blocks: int    # decoder up blocks whose resnets run on the whole frame before tiling
    tiling: bool            # diffusers' enable_tiling() for frames too large to decode whole
    png_compression: int    # zlib level 0-9; 1 is about 3x faster than 6 for ~10% more bytes
    png_encoder: str        # "fpng", "isal" or "ffmpeg" (files.png)
    video_codec: str
    video_crf: int
    video_preset: str
    compute_priority: str   # CUDA stream priority of decode: highest or lowest the device offers
    watermark_priority: str  # of the watermark stream
    cuda_graphs: bool       # generation: replay the denoiser's forward from CUDA graphs
    video_segment_frames: int = 0   # videos in closed-GOP segments of this many frames (0: one piece)
    video_rgb_to_yuv: str = "auto"  # where the videos' Y'CbCr is made: "device", "host" (swscale), "auto"
    decode_gpus: int = 1    # devices that decode each frame or clip together; ALL_GPUS: every visible one

    def writers(self) -> int:
        return self.writer_threads or max(1, min(8, os.cpu_count() or 1))


def preset_path(name: str, job_dir: Path) -> Path:
    """A preset is a name under configs/ or a path to a .toml file (relative to the job)."""
    if name.endswith(".toml"):
        path = Path(name)
        return path if path.is_absolute() else job_dir / path
    if not name.replace("-", "").replace("_", "").isalnum():
        raise JobError("preset", name, "expected a preset name from configs/ or a path to a .toml file")
    return CONFIG_DIR / f"{name}.toml"


def available_presets() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))


def load_tuning(preset: str, job_dir: Path, overrides: dict[str, Any],
                check_file: Callable[[str, Path], None] | None = None) -> Tuning:
    """The default preset, then `preset`, then the job's overrides. A preset given as a
    path is shown to `check_file` (which may refuse it) before it is read. Values read
    from a preset file are never quoted in an error: the file may not be the job's
    (a farm worker's), and its contents must not reach a log or the queue."""
    default_path = CONFIG_DIR / "default.toml"
    merged = dict(read_toml(default_path, "configs/default.toml"))
    from_file: set[str] = set()
    if preset != "default":
        path = preset_path(preset, job_dir)
        if check_file is not None and preset.endswith(".toml"):
            check_file("preset", path)
        if not path.is_file():
            raise JobError("preset", preset, "no such preset; available: " + ", ".join(available_presets()))
        layer = read_toml(path, "preset")
        for key in layer:
            if key not in merged:
                raise JobError("preset", preset, f"unknown field {_key(key)} in the preset file; allowed: "
                               + ", ".join(sorted(merged)))
        merged.update(layer)
        from_file = set(layer) - set(overrides)
    for key, value in overrides.items():
        if key not in merged:
            raise JobError(f"tuning.{key}", value, "unknown field; allowed: " + ", ".join(sorted(merged)))
    merged.update(overrides)
    try:
        return _parse(Table(merged, "tuning"))
    except JobError as err:
        key = err.field.removeprefix("tuning.")
        if key in from_file:   # the value came from the preset file: name where, not what
            raise JobError("preset", preset, f"its {key}: {err.allowed}") from None
        raise


def _key(key: str) -> str:
    """A key read from a file, shown short and printable."""
    return repr(key) if len(key) <= 40 and key.isprintable() else "(a long or unprintable name)"


def _decode_gpus(t: Table) -> int:
    """An integer from 1 to MAX_DECODE_GPUS, or "all" (ALL_GPUS)."""
    value = t.data.get("decode_gpus", 1)
    t.used.add("decode_gpus")
    if value == "all":
        return ALL_GPUS
    if type(value) is int and 1 <= value <= MAX_DECODE_GPUS:
        return value
    raise JobError(t.name("decode_gpus"), value, f'expected an integer from 1 to {MAX_DECODE_GPUS} or "all"')


def _parse(t: Table) -> Tuning:
    tuning = Tuning(
        channel_depth=t.integer("channel_depth", lo=0, hi=4),
        pinned_buffers=t.integer("pinned_buffers", lo=1, hi=64),
        writer_threads=t.integer("writer_threads", lo=0, hi=64),
        decode=t.string("decode", choices=("whole", "tiles")),
        tile_size=t.integer("tile_size", lo=8, hi=4096),
        tile_overlap=t.integer("tile_overlap", lo=0, hi=4095),
        vram_budget_gib=t.number("vram_budget_gib", lo=0.01),
        norm_proxy=t.integer("norm_proxy", lo=0, hi=64),
        whole_up_blocks=t.integer("whole_up_blocks", lo=0, hi=3),
        tiling=t.boolean("tiling"),
        png_compression=t.integer("png_compression", lo=0, hi=9),
        png_encoder=t.string("png_encoder", choices=("fpng", "isal", "ffmpeg")),
        video_codec=t.string("video_codec", choices=VIDEO_CODECS),
        video_crf=t.integer("video_crf", lo=0, hi=51),
        video_preset=t.string(
            "video_preset",
            choices=("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow"),
        ),
        video_segment_frames=t.integer("video_segment_frames", 0, lo=0, hi=1_000_000),
        video_rgb_to_yuv=t.string("video_rgb_to_yuv", "auto", choices=("auto", "device", "host")),
        compute_priority=t.string("compute_priority", choices=PRIORITIES),
        watermark_priority=t.string("watermark_priority", choices=PRIORITIES),
        cuda_graphs=t.boolean("cuda_graphs"),
        decode_gpus=_decode_gpus(t),
    )
    t.done()
    if tuning.decode == "tiles" and tuning.tile_overlap >= tuning.tile_size:
        raise JobError("tuning.tile_overlap", tuning.tile_overlap,
                       f"expected less than tuning.tile_size ({tuning.tile_size})")
    if tuning.decode_gpus != 1 and (tuning.decode == "tiles" or tuning.tiling):
        raise JobError("tuning.decode_gpus", "all" if tuning.decode_gpus == ALL_GPUS else tuning.decode_gpus,
                       'decodes whole frames split across GPUs; it excludes decode = "tiles" and tiling = true')
    if tuning.decode == "tiles" and tuning.tiling:
        raise JobError("tuning.tiling", True, 'diffusers\' tiling and decode = "tiles" exclude each '
                       "other; set one of them")
    return tuning
