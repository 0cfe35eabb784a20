"""`render submit`: check a job exactly as `render run` would, then queue it as data."""

from __future__ import annotations

import uuid
from pathlib import Path

import torch

from pipeline.config.formats import frame_format
from pipeline.config.job import load_job
from pipeline.errors import JobError
from pipeline.plan import make_plan

from .queue import open_queue
from .tasks import JobSpec


def submit_job(job_file: Path, queue_url: str, *, chunk: int, priority: int, max_attempts: int) -> str:
    job = load_job(job_file)
    plan = make_plan(job, torch.device("cpu"))  # the model, latents and output checks of `render run`
    if plan.clip_frames:
        chunk = len(job.shot.frames)  # a clip decodes from its first latent frame: one task
    if frame_format(job.output.formats) is None:
        raise JobError("output.formats", list(job.output.formats),
                       'the farm publishes one file per frame and encodes the MP4 from them; '
                       'add "png", "png16" or "exr"')
    spec = JobSpec(job_id=uuid.uuid4().hex[:12], name=job.shot.name, toml=job_file.read_text(encoding="utf-8"),
                   base_dir=str(job_file.resolve().parent), output_root=str(job.output.root),
                   frame_start=job.shot.frame_start, frame_end=job.shot.frame_end, priority=priority,
                   chunk=chunk, video="mp4" in job.output.formats, max_attempts=max_attempts)
    queue = open_queue(queue_url)
    try:
        queue.submit(spec)
    finally:
        queue.close()
    return spec.job_id
