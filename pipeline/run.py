"""The one place the stages are wired: one trio nursery, bounded channels between them.

    source -> decode -> [watermark] -> transfer -> write (N writers, ordered video)

Load the model, open the outputs, start every stage; the first error cancels the rest
and comes back as a `StageFailed` naming the stage and frame; Ctrl-C or SIGTERM comes
back as `RunInterrupted`. In-flight writes finish (threads are never abandoned) and
an unfinished video is removed, so no partial file is left either way.
"""

from __future__ import annotations

import functools
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from .device import DeviceContext
from .errors import RunInterrupted, StageFailed, leaves
from .formats import pixel_dtype
from .generate import PipelineCache
from .gpu_turn import GpuTurn, TurnHold
from .manifest import Manifest
from .model import DTYPES, ModelCache
from .plan import Plan
from .publish import sweep_stale_temps
from .ring import HostRing
from .stages.decode import Decoder, decode_stage
from .stages.generate import generate_clip_stage, generate_stage
from .stages.source import clip_source_stage, source_stage
from .stages.transfer import transfer_stage
from .stages.watermark import offsets_for, watermark_stage
from .stages.write import FrameOutputs, VideoSequencer, read_back, write_stage
from .stats import StageStats
from .video import VideoFile


@dataclass
class RunReport:
    frames: int = 0                   # frames rendered and written in this run
    skipped: int = 0                  # frames a resumed run found finished
    load_s: float = 0.0               # model load
    render_s: float = 0.0             # first frame in to last frame out
    wall_s: float = 0.0               # everything, load included
    device: str = ""
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def fps(self) -> float:
        return self.frames / self.render_s if self.render_s > 0 else 0.0


def run_plan(plan: Plan, *, on_frame: Callable[[int], None] = lambda frame: None) -> RunReport:
    """Render a plan; blocking. Raises StageFailed or RunInterrupted."""
    return trio.run(render, plan, on_frame)


async def render(plan: Plan, on_frame: Callable[[int], None], models: ModelCache | None = None,
                 *, handle_signals: bool = True, stop: trio.Event | None = None,
                 pipelines: PipelineCache | None = None, gpu_turn: GpuTurn | None = None) -> RunReport:
    """Render a plan inside a trio run. `models` and `pipelines` keep VAEs and
    generation pipelines loaded across calls (farm workers); `handle_signals=False`
    leaves Ctrl-C and SIGTERM to the caller; setting `stop` lets the frames in flight
    finish and starts no more; renders given one `gpu_turn` take turns at the GPU
    (pipeline.gpu_turn)."""
    started = time.perf_counter()
    report = RunReport(skipped=len(plan.skipped))
    job, shot = plan.job, plan.job.shot
    ctx = DeviceContext(plan.device, compute_priority=job.tuning.compute_priority,
                        watermark_priority=job.tuning.watermark_priority)
    report.device = ctx.describe()

    load_start = time.perf_counter()
    pipe = None
    if plan.pipeline is not None:  # the pipeline's own VAE decodes, in the VAE's dtype
        assert job.source.generation is not None
        cache, generation = pipelines or PipelineCache(), job.source.generation

        def load_generation() -> tuple[Any, Any]:  # off the trio thread: a dtype change copies weights
            pipe = cache.get(plan.pipeline, plan.pipeline_dtype, plan.device, generation.scheduler,
                             job.tuning.cuda_graphs)
            vae = pipe.vae.to(DTYPES[plan.dtype])
            if job.tuning.tiling:
                vae.enable_tiling()
            return pipe, vae

        pipe, vae = await trio.to_thread.run_sync(load_generation)
    else:
        models = models or ModelCache(capacity=1)
        vae = await trio.to_thread.run_sync(models.get, plan.vae, plan.model_hash, plan.dtype, plan.device,
                                            job.tuning.tiling)
    decoder = Decoder(vae, plan.vae, plan.dtype, ctx, pixel_dtype(job.output.formats), plan.tiles)
    report.load_s = time.perf_counter() - load_start

    plan.root.mkdir(parents=True, exist_ok=True)
    for folder in {p.parent for p in plan.frame_paths.values()}:
        folder.mkdir(parents=True, exist_ok=True)
        sweep_stale_temps(folder)
    outputs = FrameOutputs(root=plan.root, frame_format=plan.frame_format, frame_paths=plan.frame_paths,
                           png_compression=job.tuning.png_compression, manifest=Manifest(plan.root),
                           record_base={"shot": shot.name, "model_hash": plan.model_hash,
                                        "job_hash": plan.job_hash, "device": str(plan.device)})
    names = ["generate" if pipe is not None else "source", "decode",
             *(["watermark"] if job.watermark.enabled else []), "transfer", "write"]
    stats = {name: StageStats(name) for name in names}
    ring = HostRing(ctx, job.tuning.pinned_buffers, (shot.height, shot.width, 3), decoder.pixel_dtype)
    offsets = None
    if job.watermark.enabled:  # a 4K pattern takes ~0.5 s to draw: off the trio thread
        offsets = await trio.to_thread.run_sync(offsets_for, job.watermark, shot.height, shot.width, ctx)
    video = None
    if plan.video_path is not None:
        sweep_stale_temps(plan.video_path.parent)
        video = VideoFile(plan.video_path, width=shot.width, height=shot.height, fps=shot.fps,
                          codec=job.tuning.video_codec, crf=job.tuning.video_crf,
                          preset=job.tuning.video_preset)

    def frame_written(frame: int) -> None:
        report.frames += 1
        on_frame(frame)

    depth = job.tuning.channel_depth
    # A clip's decode hands on a chunk of frames at once; while the transfer waits for
    # the first of them, the rest must fit in the channel, or the decode cannot queue
    # the next chunk until this one has finished on the GPU (which then waits for the
    # host to start it).
    depth_after_decode = max(depth, plan.vae.temporal_scale) if plan.clip_frames else depth
    turn = TurnHold(gpu_turn)
    render_start = time.perf_counter()
    for stage_stats in stats.values():
        stage_stats.origin = render_start
    try:
        async with trio.open_nursery() as nursery:
            if handle_signals and threading.current_thread() is threading.main_thread():
                nursery.start_soon(_stop_on_signal)
            if pipe is not None and plan.clip_frames:
                tx, rx = trio.open_memory_channel[Any](depth)
                nursery.start_soon(turn.after_taking(functools.partial(
                    generate_clip_stage, pipe, job.source.generation, ctx, list(plan.todo), job.seed,
                    (shot.width, shot.height), plan.vae.temporal_scale, stats["generate"], tx)))
            elif pipe is not None:
                tx, rx = trio.open_memory_channel[Any](depth)
                nursery.start_soon(turn.after_taking(functools.partial(
                    generate_stage, pipe, job.source.generation, ctx, list(plan.todo), job.seed,
                    (shot.width, shot.height), stats["generate"], tx, stop)))
            else:
                rx = _chain_source(nursery, plan, stats, depth, stop)
                if gpu_turn is not None:
                    rx = _chain(nursery, depth, rx, turn.gate)
            rx = _chain(nursery, depth_after_decode, rx,
                        lambda r, t: turn.giving_back(decode_stage(decoder, stats["decode"], r, t)))
            if offsets is not None:
                rx = _chain(nursery, depth_after_decode, rx,
                            lambda r, t: watermark_stage(offsets, ctx, stats["watermark"], r, t))
            rx = _chain(nursery, depth, rx, lambda r, t: transfer_stage(ring, ctx, stats["transfer"], r, t))
            sequencer = None if video is None else VideoSequencer(
                video, shot.frames, plan.skipped, read_back(outputs))
            await write_stage(outputs, sequencer, ring, job.tuning.writers(), stats["write"],
                              frame_written, rx)
            nursery.cancel_scope.cancel()  # the signal watcher is all that is left
    except BaseException as group:
        if video is not None:
            video.abort()
        raise _one_error(group, report.frames) from None
    finally:
        turn.give()  # a stage cancelled just after taking the turn, before the decode ended
    report.render_s = time.perf_counter() - render_start
    report.wall_s = time.perf_counter() - started
    report.stages = {name: s.as_dict() for name, s in stats.items()}
    report.stages["decode"].update(await trio.to_thread.run_sync(decoder.statistics))
    if gpu_turn is not None:
        report.stages["decode"]["gpu_turn_wait_s"] = round(turn.waited_s, 3)
    report.stages["transfer"].update(ctx.statistics())
    report.stages["transfer"].update({f"ring_{k}": v for k, v in ring.statistics().items()})
    return report


def _chain_source(nursery: trio.Nursery, plan: Plan, stats: dict[str, StageStats],
                  depth: int, stop: trio.Event | None) -> trio.MemoryReceiveChannel:
    tx, rx = trio.open_memory_channel[Any](depth)
    job = plan.job
    if plan.clip_frames:
        nursery.start_soon(clip_source_stage, job.source, list(plan.todo), job.seed, plan.clip_shape,
                           plan.vae.temporal_scale, stats["source"], tx)
        return rx
    nursery.start_soon(source_stage, job.source, list(plan.todo), job.seed, plan.latent_shape,
                       stats["source"], tx, stop)
    return rx


def _chain(nursery: trio.Nursery, depth: int, rx: trio.MemoryReceiveChannel,
           stage: Callable[[trio.MemoryReceiveChannel, trio.MemorySendChannel], Any]
           ) -> trio.MemoryReceiveChannel:
    tx, next_rx = trio.open_memory_channel[Any](depth)
    nursery.start_soon(stage, rx, tx)
    return next_rx


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
