"""The one place the stages are wired: one trio nursery, bounded channels between them.

    source | generate -> decode -> [watermark] -> transfer -> write (N writers, ordered video)

Every stage has one shape, `stage(..., stats, rx, tx)` (the first has no rx, the last
no tx), so a run is a list of stages joined in order. The first error cancels the
rest and comes back as a `StageFailed` naming the stage and frame; Ctrl-C or SIGTERM
comes back as `RunInterrupted`. In-flight writes finish (threads are never abandoned)
and an unfinished video is removed, so no partial file is left either way.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import trio

from pipeline.colour.ocio import CHROMATICITIES, bake
from pipeline.colour.ycbcr import PLANAR, planes_dtype, planes_size
from pipeline.config.cost import price
from pipeline.config.job import Job
from pipeline.config.video import segment_path, segments
from pipeline.decode.patches.group import decode_group
from pipeline.errors import FramefarmError, RunInterrupted, StageFailed, TraceNotWritten, leaves
from pipeline.files.exr import COLOUR_TRANSFER
from pipeline.files.formats import pixel_dtype, read_frame
from pipeline.files.manifest import Manifest
from pipeline.files.publish import make_folders, remove_empty_folders, sweep_stale_temps
from pipeline.files.thumbnail import THUMBNAILS_DIR
from pipeline.files.video import SegmentedVideo, VideoFile
from pipeline.flow.stats import StageStats
from pipeline.flow.trace import Trace
from pipeline.gpu.device import DeviceContext
from pipeline.gpu.energy import EnergyMeter
from pipeline.gpu.ring import HostRing
from pipeline.gpu.turns import GpuTurn, TurnHold
from pipeline.models.cache import ModelCache, PipelineCache
from pipeline.models.dtypes import DTYPES
from pipeline.models.generation import Pipeline
from pipeline.models.vae import Vae, import_model_classes
from pipeline.plan import Plan
from pipeline.stages.decode import Decoder, decode_stage
from pipeline.stages.generate import generate_clip_stage, generate_stage
from pipeline.stages.source import clip_source_stage, source_stage
from pipeline.stages.transfer import transfer_stage
from pipeline.stages.watermark import offsets_for, watermark_stage
from pipeline.stages.write import (
    FrameOutputs,
    VideoSequencer,
    publish_segment,
    publish_video,
    read_back,
    write_stage,
)


@dataclass
class RunReport:
    frames: int = 0                   # frames rendered and written in this run
    skipped: int = 0                  # frames a resumed run found finished
    load_s: float = 0.0               # model load
    render_s: float = 0.0             # first frame in to last frame out
    wall_s: float = 0.0               # everything, load included
    device: str = ""
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    energy_j: float | None = None     # the GPU's, over the run (load included); None: not measured
    gpu_s: float | None = None        # seconds the run held its GPU; None on the CPU

    @property
    def fps(self) -> float:
        return self.frames / self.render_s if self.render_s > 0 else 0.0


def run_plan(plan: Plan, *, on_frame: Callable[[int], None] = lambda frame: None,
             trace_path: Path | None = None) -> RunReport:
    """Render a plan; blocking. Raises StageFailed or RunInterrupted. With `trace_path`,
    the run's timeline is written there (a failed run's too: up to where it stopped)."""
    import_model_code(plan)
    trace = Trace() if trace_path is not None else None
    try:
        report = trio.run(partial(render, plan, on_frame, trace=trace))
    except BaseException:
        if trace is not None and trace_path is not None:
            with suppress(OSError):   # the run's own error is the one to report
                _write_trace(trace, trace_path, plan)
        raise
    if trace is not None and trace_path is not None:
        try:
            _write_trace(trace, trace_path, plan)
        except OSError as err:
            raise TraceNotWritten(trace_path, err) from None
    return report


def _write_trace(trace: Trace, path: Path, plan: Plan) -> None:
    trace.write(path, {"shot": plan.job.shot.name, "job_hash": plan.job_hash, "device": str(plan.device)})


def import_model_code(plan: Plan) -> None:
    """Import the model classes (diffusers imports them lazily) and the kernels here, in
    the main thread, before the loader thread needs them: a Ctrl-C that landed while a
    loader thread was importing broke diffusers' lazy import with a 108-line traceback
    (RecursionError) instead of stopping the run."""
    import_model_classes(plan.vae.class_name, *([plan.pipeline.class_name] if plan.pipeline is not None else []))


async def render(plan: Plan, on_frame: Callable[[int], None], models: ModelCache | None = None,
                 *, handle_signals: bool = True, stop: trio.Event | None = None,
                 pipelines: PipelineCache | None = None, gpu_turn: GpuTurn | None = None,
                 may_publish: Callable[[], bool] | None = None, trace: Trace | None = None,
                 run_fields: dict[str, Any] | None = None) -> RunReport:
    """Render a plan inside a trio run: load the model, prepare the outputs, wire the
    stages and run them, report. `models` and `pipelines` keep VAEs and generation
    pipelines loaded across calls (farm workers); `handle_signals=False` leaves Ctrl-C
    and SIGTERM to the caller; setting `stop` lets the frames in flight finish and
    starts no more; renders given one `gpu_turn` take turns at the GPU; `may_publish`,
    asked in a writer thread before each output is published, stops the render with
    PublishRefused when it says no; `trace` collects the run's timeline; `run_fields`
    go into the run's manifest record besides its figures (a farm task's job). Ctrl-C and
    SIGTERM are watched from the start: one landing while the model loads stops the run
    once the load returns."""
    kwargs: dict[str, Any] = dict(stop=stop, pipelines=pipelines, gpu_turn=gpu_turn, may_publish=may_publish,
                                  trace=trace, run_fields=run_fields)
    if not (handle_signals and threading.current_thread() is threading.main_thread()):
        return await _render(plan, on_frame, models, **kwargs)
    done = 0

    def counted(frame: int) -> None:
        nonlocal done
        done += 1
        on_frame(frame)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_signal)
            report = await _render(plan, counted, models, **kwargs)
            nursery.cancel_scope.cancel()   # the signal watcher is all that is left
    except BaseException as group:
        raise _one_error(group, done) from None
    return report


async def _render(plan: Plan, on_frame: Callable[[int], None], models: ModelCache | None,
                  *, stop: trio.Event | None, pipelines: PipelineCache | None, gpu_turn: GpuTurn | None,
                  may_publish: Callable[[], bool] | None, trace: Trace | None,
                  run_fields: dict[str, Any] | None) -> RunReport:
    if not plan.todo:
        return await _videos_from_files(plan, may_publish, trace, run_fields)
    started = time.perf_counter()
    ctx = DeviceContext(plan.device, compute_priority=plan.job.tuning.compute_priority,
                        watermark_priority=plan.job.tuning.watermark_priority)
    report = RunReport(skipped=len(plan.skipped), device=ctx.describe())
    meter = EnergyMeter(plan.device)
    energy_start = meter.joules()

    decoder, pipe = await _load(plan, ctx, models, pipelines)
    report.load_s = time.perf_counter() - started

    def frame_written(frame: int) -> None:
        report.frames += 1
        on_frame(frame)

    made: list[Path] = []   # folders this run created: removed again, where still empty, if it fails
    outputs: _Outputs | None = None
    turn = TurnHold(gpu_turn)
    try:
        outputs = await _prepare_outputs(plan, ctx, decoder.pixel_dtype, made)
        outputs.files.may_publish = may_publish
        stages = _stages(plan, ctx, decoder, pipe, outputs, turn, stop, frame_written)
        if trace is not None:
            for stage in stages:
                stage.stats.trace = trace
            if ctx.compute is not None:
                trace.align_gpu(ctx.compute)
                decoder.busy.spans = ("GPU compute stream (decode)", trace)
        render_start = time.perf_counter()
        await _run_stages(stages, render_start)
    except BaseException as group:
        for video in outputs.videos if outputs is not None else ():
            video.abort()
        remove_empty_folders(made)
        raise _one_error(group, report.frames) from None
    finally:
        turn.give()  # a stage cancelled just after taking the turn, before the decode ended
        with trio.CancelScope(shield=True):   # a cancelled run too: the decode's helper processes stop
            await trio.to_thread.run_sync(decoder.close)
    report.render_s = time.perf_counter() - render_start
    report.wall_s = time.perf_counter() - started
    energy_end = meter.joules()
    if energy_start is not None and energy_end is not None:
        report.energy_j = round(energy_end - energy_start, 3)
    if ctx.is_cuda:
        report.gpu_s = round(report.wall_s, 3)

    report.stages = {stage.name: stage.stats.as_dict() for stage in stages}
    report.stages["decode"].update(await trio.to_thread.run_sync(decoder.statistics))
    if gpu_turn is not None:
        report.stages["decode"]["gpu_turn_wait_s"] = round(turn.waited_s, 3)
    report.stages["transfer"].update(ctx.statistics())
    report.stages["transfer"].update({f"ring_{k}": v for k, v in outputs.ring.statistics().items()})
    if report.frames or plan.videos_to_write:
        await trio.to_thread.run_sync(outputs.files.manifest.append, {**run_record(plan, report), **(run_fields or {})})
    return report


def per_frame(value: float | None, frames: int) -> float | None:
    return None if value is None or not frames else value / frames


def run_record(plan: Plan, report: RunReport) -> dict[str, Any]:
    """What a run measured and cost, for the manifest (kind "run"): None is "not measured"."""
    cost = plan.job.cost
    money = price(cost, report.gpu_s, report.energy_j) if cost is not None else None
    return {
        "kind": "run", "shot": plan.job.shot.name, "job_hash": plan.job_hash, "model_hash": plan.model_hash,
        "device": report.device, "frames": report.frames, "skipped": report.skipped,
        "load_s": round(report.load_s, 3), "render_s": round(report.render_s, 3), "wall_s": round(report.wall_s, 3),
        "energy_j": report.energy_j, "gpu_s": report.gpu_s,
        "stages": {name: {k: figures[k] for k in ("busy_s", "waiting_s", "blocked_s")}
                   for name, figures in report.stages.items()},
        "j_per_frame": per_frame(report.energy_j, report.frames),
        "gpu_s_per_frame": per_frame(report.gpu_s, report.frames),
        **({"cost": money, "cost_per_frame": per_frame(money, report.frames), "currency": cost.currency}
           if cost is not None else {}),
        "time": time.time(),
    }


async def _load(plan: Plan, ctx: DeviceContext, models: ModelCache | None,
                pipelines: PipelineCache | None) -> tuple[Decoder, Pipeline | None]:
    """The decoder, and the generation pipeline when the job generates (its own VAE
    decodes, in the VAE's dtype). Off the trio thread: loading reads weights, and a
    dtype change copies them."""
    job = plan.job
    pipe = None
    if plan.pipeline is not None:
        assert job.source.generation is not None
        pipeline_cache, pipeline_info = pipelines or PipelineCache(), plan.pipeline
        scheduler = job.source.generation.scheduler

        def load_generation() -> tuple[Pipeline, Vae]:
            pipe = pipeline_cache.get(pipeline_info, plan.pipeline_dtype, plan.device, scheduler,
                                      job.tuning.cuda_graphs)
            vae = pipe.vae.to(DTYPES[plan.dtype])
            if job.tuning.tiling:
                vae.enable_tiling()
            return pipe, vae

        pipe, vae = await trio.to_thread.run_sync(load_generation)
    elif plan.decode_devices:   # the decode's processes each load the model on their own device
        vae = None
    else:
        vae_cache = models or ModelCache(capacity=1)
        vae = await trio.to_thread.run_sync(vae_cache.get, plan.vae, plan.model_hash, plan.dtype, plan.device,
                                            job.tuning.tiling)
    colour_lut = None
    if job.colour is not None:   # baked on OCIO's CPU processor once, applied on the device per frame
        lut = await trio.to_thread.run_sync(bake, job.colour)
        colour_lut = torch.from_numpy(lut).to(plan.device)
    strategy = None
    if plan.decode_devices:
        strategy = await trio.to_thread.run_sync(decode_group, plan.vae, plan.dtype, list(plan.decode_devices))
    decoder = Decoder(vae, plan.vae, plan.dtype, ctx, pixel_dtype(job.output), plan.tiles, colour_lut, strategy)
    return decoder, pipe


def _exr_colour(job: Job) -> dict[str, Any]:
    """What EXR frames say of a [colour] transform: its values stored as they are, the
    target's primaries where known, and the transform by name."""
    if job.colour is None:
        return {"exr_transfer": job.output.exr_transfer}
    colour = job.colour
    return {"exr_transfer": COLOUR_TRANSFER, "exr_chromaticities": CHROMATICITIES.get(colour.target),
            "exr_extra": (("framefarm.colour", "string",
                           f"{colour.config}: {colour.source} -> {colour.target}".encode()),)}


def _device_planes(plan: Plan, ctx: DeviceContext) -> dict[str, tuple[int, torch.dtype]]:
    """The videos' Y'CbCr formats converted on the device (tuning.video_rgb_to_yuv), with
    each one's samples and dtype: the ring keeps a buffer of each beside every slot."""
    where = plan.job.tuning.video_rgb_to_yuv
    if where == "host" or (where == "auto" and not ctx.is_cuda):
        return {}
    shot = plan.job.shot
    formats = sorted({v.spec.pixel_format for v in plan.videos_to_write if v.spec.pixel_format in PLANAR})
    return {fmt: (planes_size(fmt, shot.height, shot.width), planes_dtype(fmt)) for fmt in formats}


@dataclass
class _Outputs:
    files: FrameOutputs
    ring: HostRing                     # pinned host buffers, one frame each
    videos: list[VideoFile | SegmentedVideo]   # the videos still to write (a resumed run may have none)
    watermark: torch.Tensor | None     # the run's mark, drawn once; None: no watermark


async def _prepare_outputs(plan: Plan, ctx: DeviceContext, pixel_dtype: torch.dtype, made: list[Path]) -> _Outputs:
    """Folders made (those that did not exist appended to `made`) and swept of temporary
    files a killed run left, the host ring, the open videos, and the watermark's pattern."""
    job, shot = plan.job, plan.job.shot
    files, videos = _open_outputs(plan, made)
    try:
        ring = HostRing(ctx, job.tuning.pinned_buffers, (shot.height, shot.width, 3), pixel_dtype,
                        planes=_device_planes(plan, ctx))
        mark = None
        if job.watermark.enabled:  # a 4K pattern takes ~0.5 s to draw: off the trio thread
            mark = await trio.to_thread.run_sync(offsets_for, job.watermark, shot.height, shot.width, ctx)
    except BaseException:
        for opened in videos:
            opened.abort()
        raise
    return _Outputs(files, ring, videos, mark)


def _open_outputs(plan: Plan, made: list[Path]) -> tuple[FrameOutputs, list[VideoFile | SegmentedVideo]]:
    """The frame outputs and the videos still to write, their folders made (those that did
    not exist appended to `made`) and swept of temporary files a killed run left."""
    shot = plan.job.shot
    make_folders([plan.root], made)
    for folder in {p.parent for p in plan.frame_paths.values()}:
        make_folders([folder], made)
        sweep_stale_temps(folder)
        sweep_stale_temps(folder / THUMBNAILS_DIR)   # a worker killed while writing a thumbnail
    files = _frame_outputs(plan)
    videos: list[VideoFile | SegmentedVideo] = []
    try:
        for planned in plan.videos_to_write:
            make_folders([planned.path.parent], made)
            sweep_stale_temps(planned.path.parent)
            if not planned.spec.segment_frames:
                videos.append(VideoFile(planned.path, planned.spec, width=shot.width, height=shot.height,
                                        fps=shot.fps))
                continue
            parts = segment_path(planned.path, 0).parent
            make_folders([parts], made)
            sweep_stale_temps(parts)
            videos.append(SegmentedVideo(planned.path, planned.spec, width=shot.width, height=shot.height,
                                         fps=shot.fps, frames=shot.frames, done=planned.segments_done,
                                         on_segment=partial(publish_segment, files, planned.path)))
    except BaseException:
        for opened in videos:
            opened.abort()
        raise
    return files, videos


async def _videos_from_files(plan: Plan, may_publish: Callable[[], bool] | None, trace: Trace | None,
                             run_fields: dict[str, Any] | None) -> RunReport:
    """A run with no frame to render (a resumed run, or a farm's video task, once every
    frame is published): its videos are encoded or joined from the frame files and the
    segments on disk, with no model loaded and no GPU held."""
    started = time.perf_counter()
    report = RunReport(skipped=len(plan.skipped), device="host (videos from the published frames)",
                       gpu_s=0.0 if plan.device.type == "cuda" else None)
    made: list[Path] = []
    files, videos = _open_outputs(plan, made)
    files.may_publish = may_publish
    stats = StageStats("write")
    stats.origin, stats.trace = started, trace
    try:
        with stats.busy(None, "videos"):
            for video in videos:
                await publish_video(files, VideoSequencer(video, plan.job.shot.frames, plan.skipped,
                                                           read_back(files)))
    except BaseException as group:
        for video in videos:
            video.abort()
        remove_empty_folders(made)
        raise _one_error(group, 0) from None
    report.render_s = report.wall_s = time.perf_counter() - started
    report.stages = {"write": stats.as_dict()}
    if plan.videos_to_write:
        await trio.to_thread.run_sync(files.manifest.append, {**run_record(plan, report), **(run_fields or {})})
    return report


def _frame_outputs(plan: Plan) -> FrameOutputs:
    job, shot = plan.job, plan.job.shot
    return FrameOutputs(root=plan.root, frame_format=plan.frame_format, frame_paths=plan.frame_paths,
                        png_compression=job.tuning.png_compression, manifest=Manifest(plan.root),
                        png_encoder=job.tuning.png_encoder,
                        exr_compression=job.output.exr_compression, fps=shot.fps, thumbnails=plan.thumbnails,
                        **_exr_colour(job),
                        record_base={"shot": shot.name, "model_hash": plan.model_hash,
                                     "job_hash": plan.job_hash, "device": str(plan.device)})


def encode_segments(plan: Plan, frames: range, may_publish: Callable[[], bool] | None = None) -> list[Path]:
    """A farm segment task: encode, from the published frame files, the segment that
    covers exactly `frames` of each segmented video that lacks it, and publish each with
    its manifest record (`SegmentedVideo` and `publish_segment`, as `render run` does).
    `plan` covers those frames, with its videos (`pipeline.plan.with_videos`) and its
    finished frames found (resume). A segment already recorded is not encoded again, so a
    task run twice records each segment once; one stopped mid-encode leaves only its
    temporary file: removed at once after an error, or (kill -9) swept by the video task.
    Returns the segments published."""
    missing = [f for f in frames if f not in plan.skipped]
    if missing:
        raise FramefarmError(f"frame {missing[0]} is not published, or differs from its manifest record: the "
                             f"video segment of frames {frames.start}-{frames.stop - 1} is encoded from the frame "
                             "files")
    files = _frame_outputs(plan)
    files.may_publish = may_publish
    shot = plan.job.shot
    published = []
    for planned in plan.videos_to_write:
        parts = segments(shot.frames, planned.spec.segment_frames)
        if not planned.spec.segment_frames or frames not in parts or parts.index(frames) in planned.segments_done:
            continue
        index = parts.index(frames)
        # no sweep of stale temporary files here: other workers, perhaps on other hosts
        # (whose process ids this host cannot check), encode the video's other segments
        # in this folder now; the video task's run sweeps it once they are done
        segment_path(planned.path, index).parent.mkdir(parents=True, exist_ok=True)
        video = SegmentedVideo(planned.path, planned.spec, width=shot.width, height=shot.height, fps=shot.fps,
                               frames=shot.frames, done=frozenset(range(len(parts))) - {index},
                               on_segment=partial(publish_segment, files, planned.path))
        try:
            for frame in frames:
                video.add(read_frame(plan.frame_paths[frame]))
        except BaseException:
            video.abort()
            raise
        published.append(segment_path(planned.path, index))
    return published


@dataclass
class _Stage:
    """One stage as wired here: `work(stats, rx, tx)` with its other arguments bound;
    `depth` bounds the channel to the next stage."""
    name: str
    work: Callable[[StageStats, Any, Any], Awaitable[None]]
    depth: int
    stats: StageStats = field(init=False)

    def __post_init__(self) -> None:
        self.stats = StageStats(self.name)


def _stages(plan: Plan, ctx: DeviceContext, decoder: Decoder, pipe: Pipeline | None, outputs: _Outputs, turn: TurnHold,
            stop: trio.Event | None, frame_written: Callable[[int], None]) -> list[_Stage]:
    """The run's stages in order, each with its arguments."""
    job, shot = plan.job, plan.job.shot
    todo, depth = list(plan.todo), job.tuning.channel_depth
    # A clip's decode hands on a chunk of frames at once; while the transfer waits for
    # the first of them, the rest must fit in the channel, or the decode cannot queue
    # the next chunk until this one has finished on the GPU.
    chunk_depth = max(depth, plan.vae.temporal_scale) if plan.clip_frames else depth
    size, scale = (shot.width, shot.height), plan.vae.temporal_scale
    generation = job.source.generation
    if pipe is not None and generation is not None and plan.clip_frames:
        first = _Stage("generate", partial(generate_clip_stage, pipe, generation, ctx, todo, job.seed, size, scale,
                                           turn), depth)
    elif pipe is not None and generation is not None:
        first = _Stage("generate", partial(generate_stage, pipe, generation, ctx, todo, job.seed, size, stop,
                                           turn), depth)
    elif plan.clip_frames:
        first = _Stage("source", partial(clip_source_stage, job.source, todo, job.seed, plan.clip_shape, scale),
                       depth)
    else:
        first = _Stage("source", partial(source_stage, job.source, todo, job.seed, plan.latent_shape, stop), depth)
    stages = [first, _Stage("decode", partial(decode_stage, decoder, turn), chunk_depth)]
    if outputs.watermark is not None:
        stages.append(_Stage("watermark", partial(watermark_stage, outputs.watermark, ctx), chunk_depth))
    stages.append(_Stage("transfer", partial(transfer_stage, outputs.ring, ctx), depth))
    videos = [VideoSequencer(video, shot.frames, plan.skipped, read_back(outputs.files))
              for video in outputs.videos]
    stages.append(_Stage("write", partial(write_stage, outputs.files, videos, outputs.ring, job.tuning.writers(),
                                          frame_written), 0))
    return stages


async def _run_stages(stages: list[_Stage], origin: float) -> None:
    """Every stage in one nursery, each joined to the next by a bounded channel; returns
    when the last stage has finished."""
    for stage in stages:
        stage.stats.origin = origin
    async with trio.open_nursery() as nursery:
        rx = None
        for stage in stages[:-1]:
            tx, next_rx = trio.open_memory_channel[Any](stage.depth)
            nursery.start_soon(stage.work, stage.stats, rx, tx)
            rx = next_rx
        await stages[-1].work(stages[-1].stats, rx, None)


class _Stop(Exception):
    def __init__(self, signal_name: str) -> None:
        self.signal_name = signal_name


async def _stop_on_signal() -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            raise _Stop(signal.Signals(signum).name)


def _one_error(error: BaseException, frames_done: int) -> BaseException:
    """The error to report from whatever the nursery raised: a stage's failure first,
    then a signal, then anything else as it came."""
    found = list(leaves(error))
    for leaf in found:
        if isinstance(leaf, StageFailed):
            return leaf
    for leaf in found:
        if isinstance(leaf, _Stop):
            return RunInterrupted(leaf.signal_name, frames_done)
        if isinstance(leaf, KeyboardInterrupt):
            return RunInterrupted("SIGINT", frames_done)
    return found[0] if found else error
