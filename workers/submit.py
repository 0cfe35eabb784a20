"""`render submit`: check a job exactly as `render run` would, then queue it as data."""

from __future__ import annotations

import getpass
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path

import fileseq
import torch

from pipeline.config.formats import frame_format
from pipeline.config.job import load_job
from pipeline.config.task import frame_range
from pipeline.config.video import segments
from pipeline.errors import FramefarmError, JobError
from pipeline.plan import Plan, make_plan

from .queue import open_queue
from .tasks import JobSpec, QueueUnavailable


@dataclass(frozen=True)
class Submitted:
    job_id: str
    queue: str                # where it went: the absolute sqlite:/// URL, or the redacted Redis URL
    frames: int
    tasks: int
    existing: bool = False    # the idempotency key was seen: this is the job queued then, nothing was queued now


IDEMPOTENCY_KEY_CHARS = 200
SUBMITTED_BY_CHARS = 64


def submitter(name: str | None) -> tuple[str | None, str]:
    """(who, host) to store with a job: `--submitted-by`, else the OS user (None where the
    system knows none, e.g. a container's bare uid), and this host's name."""
    if name is None:
        try:
            name = getpass.getuser()
        except (KeyError, OSError):   # no login name and no passwd entry for the uid
            return None, socket.gethostname()
    elif not (0 < len(name) <= SUBMITTED_BY_CHARS and name.isprintable()):
        raise JobError("--submitted-by", name[:SUBMITTED_BY_CHARS],
                       f"expected 1 to {SUBMITTED_BY_CHARS} printable characters")
    return name, socket.gethostname()


def video_segments(plan: Plan) -> tuple[tuple[int, int], ...]:
    """The frame ranges of the segments of the plan's segmented videos, each once (two
    videos cut alike share a segment task, which encodes both)."""
    shot = plan.job.shot.frames
    return tuple(sorted({(part.start, part.stop - 1) for video in plan.videos if video.spec.segment_frames
                         for part in segments(shot, video.spec.segment_frames)}))


def submit_job(job_file: Path, queue_url: str, *, chunk: int, priority: int, max_attempts: int) -> str:
    """Queue the job; its id."""
    return submit(job_file, queue_url, chunk=chunk, priority=priority, max_attempts=max_attempts).job_id


def submit(job_file: Path, queue_url: str, *, chunk: int, priority: int, max_attempts: int,
           idempotency_key: str | None = None, frames_text: str | None = None, submitted_by: str | None = None,
           preview: int = 0) -> Submitted:
    who, host = submitter(submitted_by)
    if idempotency_key is not None and not (
            0 < len(idempotency_key) <= IDEMPOTENCY_KEY_CHARS and idempotency_key.isprintable()):
        raise JobError("--idempotency-key", idempotency_key[:IDEMPOTENCY_KEY_CHARS],
                       f"expected 1 to {IDEMPOTENCY_KEY_CHARS} printable characters")
    job = load_job(job_file)
    # `--frames` as `render run` reads it: frames only, never the video (it needs the whole shot)
    frames = None if frames_text is None else frame_range(job, frames_text)
    # the model, latents and output checks of `render run`; memory is each worker's to check
    plan = make_plan(job, torch.device("cpu"), check_memory=False, frames=frames, video=frames is None)
    if plan.clip_frames:
        if preview:
            raise JobError("--preview", preview, "this job renders a clip, which decodes from its first latent "
                           "frame as one task; leave --preview out")
        chunk = len(job.shot.frames)  # a clip decodes from its first latent frame: one task
    if frame_format(job.output.formats) is None:
        raise JobError("output.formats", list(job.output.formats),
                       'the farm publishes one file per frame and encodes the videos from them; '
                       'add "png", "png16" or "exr"')
    spec = JobSpec(job_id=uuid.uuid4().hex[:12], name=job.shot.name, toml=job_file.read_text(encoding="utf-8"),
                   base_dir=str(job_file.resolve().parent), output_root=str(job.output.root),
                   frame_start=job.shot.frame_start, frame_end=job.shot.frame_end, priority=priority,
                   chunk=chunk, video=bool(job.output.videos) and frames is None, max_attempts=max_attempts,
                   frames=None if frames is None else str(fileseq.FrameSet(frames)), submitted_by=who,
                   submitted_host=host, preview=preview, segments=video_segments(plan))
    try:
        queue = open_queue(queue_url)
        try:
            job_id = queue.submit(spec, idempotency_key)
        finally:
            queue.close()
    except QueueUnavailable as err:
        raise FramefarmError(f"the queue cannot be reached, nothing was queued: {err}") from None
    return Submitted(job_id, queue.where, len(frames or job.shot.frames), len(spec.chunks()),
                     existing=job_id != spec.job_id)
