"""A job as a farm task reads it: the job file with its relative inputs resolved against
a folder of the task's choosing, and the part of the shot the task renders.

An exported OpenJD template embeds the job file, which the runtime writes into its
session folder; the task names the folder the inputs really lie in (`--base-dir`).
"""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.config.formats import FRAME_FORMATS
from pipeline.config.job import Job, load_job, parse_job
from pipeline.config.schema import read_toml
from pipeline.errors import JobError

_FRAMES = re.compile(r"(\d{1,10})(?:-(\d{1,10}))?")


def load_task_job(path: Path, *, output_root: Path | None = None, base_dir: Path | None = None) -> Job:
    """The job of `path`; relative inputs resolve against `base_dir` when given, else
    against the job file's folder (as `render run` always does)."""
    if base_dir is None:
        return load_job(path, output_root=output_root)
    if not base_dir.is_dir():
        raise JobError("--base-dir", str(base_dir), "no such folder; give the folder the job's relative "
                       "model, latents and preset paths lie under")
    return parse_job(read_toml(path, "job file"), job_dir=base_dir.resolve(), file=path, output_root=output_root)


def frame_range(job: Job, text: str) -> range:
    """`--frames FIRST-LAST` (or one frame), inclusive, within the shot. Such a run
    writes frame files only: a job that writes nothing else cannot be split."""
    shot = job.shot
    allowed = (f"expected FIRST-LAST (inclusive) or one frame, within the shot's frames "
               f"{shot.frame_start}-{shot.frame_end}")
    match = _FRAMES.fullmatch(text.strip())
    if match is None:
        raise JobError("--frames", text, allowed)
    first = int(match[1])
    last = int(match[2]) if match[2] is not None else first
    if not shot.frame_start <= first <= last <= shot.frame_end:
        raise JobError("--frames", text, allowed)
    if not any(f in FRAME_FORMATS for f in job.output.formats):
        raise JobError("--frames", text, "this job writes only a video (output.formats has no frame format), "
                       "which is made from the whole shot: leave --frames out")
    return range(first, last + 1)
