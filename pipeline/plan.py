"""From a job to a plan: every check that needs the model, the latents or the disk, and
the list of frames to render (all, or those a resumed run still lacks).

Planning writes nothing. A resolution the VAE cannot produce is rejected with the
nearest sizes it can (no silent pad and crop: the frame you asked for is the frame
you get).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.colour.ocio import check as colour_check
from pipeline.config import patterns
from pipeline.config.formats import FrameFormat, frame_format
from pipeline.config.job import Job
from pipeline.config.video import VideoOutput, segment_path, segments
from pipeline.decode.budget import TilePlan, host_memory_available, layered_peak, plan_decode, run_memory
from pipeline.decode.patches.devices import decode_devices
from pipeline.errors import JobError
from pipeline.files.latents import check_clip_file, check_latent_files
from pipeline.files.manifest import check_record, latest_by_path, read_records
from pipeline.models.generation import PipelineInfo, check_scheduler, inspect_pipeline, size_multiple
from pipeline.models.vae import VIDEO_CLASSES, VaeInfo, effective_dtype, inspect_vae, model_hash


@dataclass(frozen=True)
class PlannedVideo:
    spec: VideoOutput
    path: Path
    done: bool = False                # a resumed run found it finished
    segments_done: frozenset[int] = frozenset()   # segments a resumed run found published


@dataclass(frozen=True)
class Plan:
    job: Job
    vae: VaeInfo
    device: torch.device
    dtype: str                        # what the VAE runs in (float16 may be upcast)
    latent_shape: tuple[int, int, int]
    todo: tuple[int, ...]             # frames to render, in order
    skipped: frozenset[int]           # frames a resumed run found finished
    frame_format: FrameFormat | None  # None: a video-only job
    frame_paths: dict[int, Path]
    videos: tuple[PlannedVideo, ...]  # the job's videos (none when the plan leaves them out)
    model_hash: str
    job_hash: str
    tiles: TilePlan | None = None     # tiled decode: the grid and batch of every frame
    clip_frames: int = 0              # a video VAE's job: latent frames in the shot's clip
    pipeline: PipelineInfo | None = None  # source kind "diffusers": the pipeline that generates
    pipeline_dtype: str = ""          # what the pipeline runs in (its VAE runs in `dtype`)
    decode_devices: tuple[torch.device, ...] = ()   # several: they decode each frame together
    thumbnails: bool = False          # a thumbnail beside each frame (farm workers, for the monitor)

    @property
    def clip_shape(self) -> tuple[int, int, int, int]:
        c, h, w = self.latent_shape
        return c, self.clip_frames, h, w

    @property
    def root(self) -> Path:
        return self.job.output.root

    @property
    def videos_to_write(self) -> tuple[PlannedVideo, ...]:
        return tuple(v for v in self.videos if not v.done)

    def tiles_per_frame(self) -> int:
        """Tiles of one frame's decode: 1 untiled; diffusers' grid with tiling on."""
        if self.tiles is not None:
            return len(self.tiles.grid.tiles)
        if not self.job.tuning.tiling:
            return 1
        _, h, w = self.latent_shape
        tile = max(1, self.vae.sample_size // self.vae.scale)
        if h <= tile and w <= tile:
            return 1
        stride = max(1, int(tile * 0.75))  # diffusers' AutoencoderKL overlap factor: 0.25
        return len(range(0, h, stride)) * len(range(0, w, stride))

    def _source_line(self) -> str:
        job, gen = self.job, self.job.source.generation
        if self.pipeline is not None and gen is not None:
            return (f"source: {self.pipeline.class_name} at {self.pipeline.path} ({self.pipeline_dtype}), "
                    f"{gen.steps} step(s), guidance {gen.guidance_scale:g}, "
                    f"scheduler {gen.scheduler or 'of the pipeline'}, batches of up to {gen.batch_size} frame(s), "
                    f"{len(gen.overrides)} prompt override(s); seeds per frame from seed {job.seed}")
        return f"source: {job.source.kind}" + (f" from {job.source.path}" if job.source.path else
                                                f" (seeded per frame from seed {job.seed})")

    def _layered_peak(self) -> float | None:
        return None if self.job.tuning.tiling else layered_peak(self.vae, self.latent_shape, self.dtype)

    def _layered_line(self) -> str:
        peak = self._layered_peak() or 0.0
        return (f"decode: whole frames, layer by layer over bands of rows (every GroupNorm with the "
                f"statistics of the whole frame), ~{peak / 2**30:.2f} GiB modelled within "
                f"{self.job.tuning.vram_budget_gib:.2f} GiB; {len(self.todo)} frame(s)")

    def describe(self) -> str:
        job, shot = self.job, self.job.shot
        c, h, w = self.latent_shape
        tiles = self.tiles_per_frame()
        lines = [
            f"shot {shot.name}: frames {shot.frame_start}-{shot.frame_end} "
            f"({len(shot.frames)}), {shot.width}x{shot.height} at {shot.fps} fps",
            self._source_line(),
            f"model: {self.vae.class_name} at {self.vae.path} ({self.dtype}, hash {self.model_hash}), "
            f"latents {c}x{h}x{w} -> x{self.vae.scale}",
            f"device: {self.device}",
            (f"decode: a clip of {self.clip_frames} latent frame(s), one at a time with the causal cache "
             f"kept (1 frame, then {self.vae.temporal_scale} a latent frame), each chunk's frames sent on "
             "at once" + (f"; {self.tiles.describe(len(self.todo))}" if self.tiles is not None else "")
             if self.vae.is_video else
             self.tiles.describe(len(self.todo)) if self.tiles is not None else
             self._layered_line() if self._layered_peak() is not None else
             f"decode: {tiles} tile(s) per frame"
             + (" (diffusers enable_tiling)" if job.tuning.tiling else " (whole frame)")
             + f", batches of 1 frame, {len(self.todo)} batch(es)"),
            *([f"decode across {len(self.decode_devices)} devices ("
               + ", ".join(map(str, self.decode_devices)) + "), one process each, each a band of every "
               "frame's rows"] if self.decode_devices else []),
            f"to render: {len(self.todo)} frame(s)"
            + (f"; {len(self.skipped)} already finished (resume)" if self.skipped else ""),
            f"outputs under {self.root}:",
        ]
        if self.frame_format is not None and self.frame_paths:
            first, last = min(self.frame_paths), max(self.frame_paths)
            lines.append(f"  {self.frame_format.name}: {self.frame_paths[first].relative_to(self.root)} .. "
                         f"{self.frame_paths[last].relative_to(self.root)}")
        for video in self.videos:
            lines.append(f"  video: {video.path.relative_to(self.root)}, {video.spec.describe()}"
                         + (": already finished (resume)" if video.done else ""))
            if video.segments_done and not video.done:
                lines.append(f"    {len(video.segments_done)} segment(s) already finished (resume)")
        lines.append(f"  manifest: {self.root / 'manifest.jsonl'}")
        lines.append("watermark: " + (f"on, payload {job.watermark.payload!r}"
                                        if job.watermark.enabled else "off"))
        lines.append(f"preset: {job.preset}; writers {job.tuning.writers()}, ring "
                     f"{job.tuning.pinned_buffers} buffers, channel depth {job.tuning.channel_depth}")
        return "\n".join(lines)


def make_plan(job: Job, device: torch.device, *, resume: bool = False,
              frames: Sequence[int] | None = None, video: bool = True, check_memory: bool = True,
              across_devices: bool = False) -> Plan:
    """`frames` narrows the plan to part of the shot (a farm task) and `video=False`
    leaves the video out (the farm encodes it once every frame is published).
    `check_memory=False` skips the memory check (`render submit`: the workers' machines
    render, and each checks its own). `across_devices` lets the decode take the GPUs
    `tuning.decode_gpus` asks for (`render run`; a farm worker keeps to its own GPU, as
    the farm runs one worker per GPU)."""
    shot = job.shot
    whole = frames is None or tuple(frames) == tuple(shot.frames)
    frames = frames if frames is not None else shot.frames
    if video and job.output.videos and not whole:
        raise ValueError("a plan that writes the videos must cover the whole shot")
    pipeline = None
    if job.source.kind == "diffusers":  # the pipeline first: its folder holds the VAE
        assert job.source.path is not None and job.source.generation is not None
        pipeline = inspect_pipeline(Path(job.source.path))
        check_scheduler(job.source.generation.scheduler)
        generation = job.source.generation
        if pipeline.is_video and generation.overrides:
            raise JobError("source.prompts", f"{len(generation.overrides)} override(s)",
                           f"a {pipeline.class_name} makes the whole shot in one call, with one prompt")
        if pipeline.class_name == "FluxPipeline" and (generation.negative_prompt or any(
                r.negative_prompt for r in generation.overrides)):
            raise JobError("source.negative_prompt", generation.negative_prompt or "(in source.prompts)",
                           "FluxPipeline takes no negative prompt (its guidance_scale is distilled guidance)")
        if pipeline.is_video and generation.batch_size != 1:
            raise JobError("source.batch_size", generation.batch_size,
                           f"a {pipeline.class_name} makes the whole shot in one call: leave it at 1")
    vae = inspect_vae(job.model.path)
    multiple = max(vae.scale, size_multiple(pipeline, vae.scale) if pipeline else 1)
    _check_resolution(shot.width, shot.height, multiple, "this pipeline" if pipeline else "this VAE")
    if pipeline is not None and vae.is_video != pipeline.is_video:
        raise JobError("model.path", str(job.model.path), f"a {vae.class_name} cannot decode the latents of a "
                       f"{pipeline.class_name}; leave model.path out to use the pipeline's own VAE")
    shape = (vae.latent_channels, shot.height // vae.scale, shot.width // vae.scale)
    clip_frames = _check_clip(job, vae, shape, frames) if vae.is_video or job.source.kind == "clip" else 0
    if job.source.kind == "latents":
        check_latent_files(job.source, frames, shape,
                           f"for {shot.width}x{shot.height} with this VAE "
                           f"({vae.latent_channels} channels, {vae.scale}x upscale)")
    if job.colour is not None:
        colour_check(job.colour)   # names the config lacks: refused before anything is written
    _check_writable(job.output.root)
    dtype = effective_dtype(vae, job.model.dtype, device)
    m_hash = model_hash(vae.path)
    pipeline_dtype = ""
    if pipeline is not None:
        pipeline_dtype = "float32" if device.type == "cpu" and job.model.dtype == "float16" else job.model.dtype
        m_hash = hashlib.sha256(f"{m_hash}/{pipeline.fingerprint}/{pipeline_dtype}".encode()).hexdigest()[:16]
    devices = decode_devices(job.tuning, vae, shape, device, pipeline is not None) if across_devices else ()
    # bands of whole frames across devices, not tiles (decode_gpus excludes decode = "tiles")
    tiles = plan_decode(job.tuning, vae, shape, dtype) if not devices else None
    if check_memory:
        _check_memory(job, vae, shape, dtype, tiles, clip_frames, device)
    j_hash = job_hash(job, m_hash, dtype, tiled=tiles is not None)

    root = job.output.root
    fmt = frame_format(job.output.formats)
    frame_paths = {}
    if fmt is not None:
        frame_paths = {frame: patterns.confined(root, patterns.fill(job.output.frames, shot=shot.name,
                                                                    frame=frame) + fmt.suffix)
                       for frame in frames}
    videos = _planned_videos(job) if video else ()
    skipped: set[int] = set()
    if resume:
        skipped, videos = _finished(root, j_hash, frame_paths, videos, shot.frames)   # videos: the whole shot
        if not frame_paths:   # videos only: a frame is needed again unless every video has it
            skipped = set(frames)
            for planned in videos:
                if not planned.done:
                    skipped &= {f for i in planned.segments_done
                                for f in segments(shot.frames, planned.spec.segment_frames)[i]}
    pending_video = any(not v.done for v in videos)
    todo = tuple(f for f in frames if f not in skipped) if (frame_paths or pending_video) else ()
    if clip_frames and todo:  # a clip decodes from its first latent frame: all of it, or none
        todo, skipped = tuple(frames), set()
    return Plan(job=job, vae=vae, device=device, dtype=dtype, latent_shape=shape, todo=todo, tiles=tiles,
                skipped=frozenset(skipped), frame_format=fmt, frame_paths=frame_paths, videos=videos,
                model_hash=m_hash, job_hash=j_hash, clip_frames=clip_frames, pipeline=pipeline,
                pipeline_dtype=pipeline_dtype, decode_devices=devices)


def with_videos(plan: Plan) -> Plan:
    """`plan`, made for some of the shot's frames without the videos, with the job's
    videos as a resumed run finds them (which segments are published): a farm segment
    task encodes from the frame files its plan checked, and hashes no other frame."""
    _, videos = _finished(plan.root, plan.job_hash, {}, _planned_videos(plan.job), plan.job.shot.frames)
    return dataclasses.replace(plan, videos=videos)


def _planned_videos(job: Job) -> tuple[PlannedVideo, ...]:
    return tuple(PlannedVideo(spec, patterns.confined(job.output.root, patterns.fill(spec.path, shot=job.shot.name)))
                 for spec in job.output.videos)


def job_hash(job: Job, m_hash: str, dtype: str, *, tiled: bool) -> str:
    """What decides the pixels (not the frame range, paths or threads): resume and the
    farm use it to tell a finished frame of this job from a stale one. tuning.decode_gpus
    is not in it: bands decoded across GPUs give the one-GPU decode up to rounding."""
    shot, source, mark = job.shot, job.source, job.watermark
    identity = {
        "shot": shot.name, "size": [shot.width, shot.height], "fps": shot.fps,
        "source": [source.kind, source.path, source.tensor], "seed": job.seed,
        "generation": dataclasses.asdict(source.generation) if source.generation else None,
        "model": m_hash, "dtype": dtype, "tiling": job.tuning.tiling,
        "decode": [job.tuning.decode, job.tuning.tile_size, job.tuning.tile_overlap, job.tuning.norm_proxy,
                   job.tuning.whole_up_blocks]
        if tiled else "whole",
        "frames": getattr(frame_format(job.output.formats), "name", None),  # the file format
        **({"exr_transfer": job.output.exr_transfer} if "exr" in job.output.formats else {}),
        "watermark": [mark.enabled, mark.payload, hashlib.sha256(mark.key.encode()).hexdigest()],
        **({"colour": dataclasses.asdict(job.colour)} if job.colour is not None else {}),
        "video": [job.tuning.video_codec, job.tuning.video_crf, job.tuning.video_preset],
        # the editorial videos, when a job names any (jobs without keep their earlier hash)
        **({"videos": [{**dataclasses.asdict(v), "segment_frames": None}   # cut, not content
                       for v in job.output.videos if v.codec != "review"]}
           if any(v.codec != "review" for v in job.output.videos) else {}),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def _finished(root: Path, j_hash: str, frame_paths: dict[int, Path], videos: tuple[PlannedVideo, ...],
              frames: range) -> tuple[set[int], tuple[PlannedVideo, ...]]:
    latest = latest_by_path(r for r in read_records(root) if r.get("job_hash") == j_hash)

    def done(path: Path) -> bool:
        record = latest.get(path.relative_to(root).as_posix())
        return record is not None and check_record(root, record) is None

    def segments_done(video: PlannedVideo) -> frozenset[int]:
        if not video.spec.segment_frames:
            return frozenset()
        found = set()
        for index, part in enumerate(segments(frames, video.spec.segment_frames)):
            record = latest.get(segment_path(video.path, index).relative_to(root).as_posix())
            if (record is not None and record.get("frames") == [part.start, part.stop - 1]
                    and check_record(root, record) is None):
                found.add(index)
        return frozenset(found)

    skipped = {frame for frame, path in frame_paths.items() if done(path)}
    return skipped, tuple(dataclasses.replace(v, done=done(v.path), segments_done=segments_done(v)) for v in videos)


def _check_clip(job: Job, vae: VaeInfo, shape: tuple[int, int, int], frames: Sequence[int]) -> int:
    """A video VAE decodes a clip (C, T, h, w) of 1 + temporal_scale * (T - 1) frames;
    an image VAE decodes frames. Returns T."""
    shot, kind = job.shot, job.source.kind
    if not vae.is_video:
        raise JobError("source.kind", kind, f"a clip needs a video VAE ({', '.join(VIDEO_CLASSES)}); "
                       f"{vae.class_name} decodes frames: use \"latents\" (one file per frame) or \"noise\"")
    if kind == "latents":
        raise JobError("source.kind", kind, f"a {vae.class_name} decodes whole clips: use \"clip\" (one file "
                       "of shape (channels, latent frames, height, width)) or \"noise\"")
    count, scale = len(shot.frames), vae.temporal_scale
    if (count - 1) % scale:
        lower = shot.frame_end - (count - 1) % scale
        raise JobError("shot.frame_end", shot.frame_end,
                       f"a {vae.class_name} clip has 1 + {scale}k frames; nearest: {lower} or {lower + scale}")
    if tuple(frames) != tuple(shot.frames):
        raise JobError("shot", f"frames {frames[0]}-{frames[-1]}",
                       "a clip decodes from its first latent frame: render the whole shot as one task")
    if job.tuning.tiling:  # diffusers' tiling works on whole clips; this decodes them chunk by chunk
        raise JobError("tuning.tiling", True, f"diffusers' tiling does not apply to a {vae.class_name}'s "
                       'chunked decode; use decode = "tiles" (tiled chunk by chunk) and tiling = false')
    clip = (shape[0], 1 + (count - 1) // scale, *shape[1:])
    if kind == "clip":
        check_clip_file(job.source, clip, f"for {count} frames at {shot.width}x{shot.height} with this VAE "
                        f"({vae.latent_channels} channels, {vae.scale}x upscale, {scale}x in time)")
    return clip[1]


def _check_resolution(width: int, height: int, scale: int, maker: str = "this VAE") -> None:
    for field, value in (("shot.width", width), ("shot.height", height)):
        if value % scale:
            lower, upper = value - value % scale, value - value % scale + scale
            nearest = f"{lower} or {upper}" if lower else f"{upper}"
            raise JobError(field, value, f"{maker} makes sizes in multiples of {scale}; "
                           f"nearest allowed: {nearest}")


def _check_memory(job: Job, vae: VaeInfo, shape: tuple[int, int, int], dtype: str, tiles: TilePlan | None,
                  clip_frames: int, device: torch.device) -> None:
    """Refuse a run whose modelled host memory (all of it on the CPU: the decode too) is
    more than the machine has available, before it allocates and dies halfway."""
    available = host_memory_available()
    frame_bytes = job.shot.width * job.shot.height * 3 * getattr(torch, job.output.pixels()).itemsize
    use = run_memory(job.tuning, vae, shape, dtype, tiles, frame_bytes, watermark=job.watermark.enabled,
                     clip_frames=clip_frames)
    on_cpu = device.type == "cpu"
    if available is None or use.host(on_cpu) <= available:
        return
    raise JobError("shot.width x shot.height", f"{job.shot.width}x{job.shot.height}",
                   f"a run needs ~{use.host(on_cpu) / 2**30:.1f} GiB of host memory ({use.describe(on_cpu)}; "
                   f"modelled), more than the {available / 2**30:.1f} GiB this machine has available; lower "
                   + ("tuning.vram_budget_gib or tuning.whole_up_blocks (the decode), " if on_cpu else "")
                   + "tuning.pinned_buffers, tuning.channel_depth or tuning.writer_threads, or render a smaller frame")


def _check_writable(root: Path) -> None:
    probe = root
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise JobError("output.root", str(root), f"cannot be created: {probe} is a file")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise JobError("output.root", str(root), f"not writable: no write permission on {probe}")
