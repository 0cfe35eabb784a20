"""A job as a farm task reads it: the job file with its relative inputs resolved against
a folder of the task's choosing, and the part of the shot the task renders.

An exported OpenJD template embeds the job file, which the runtime writes into its
session folder; the task names the folder the inputs really lie in (`--base-dir`).
"""

from __future__ import annotations

import re
from pathlib import Path

import fileseq

from pipeline.config.formats import FRAME_FORMATS
from pipeline.config.job import Job, load_job, parse_job
from pipeline.config.schema import read_toml
from pipeline.errors import JobError

_BACKWARDS = re.compile(r"(\d+)-(\d+)(?:[xy:]\d+)?")   # FIRST-LAST with FIRST > LAST: refused


def load_task_job(path: Path, *, output_root: Path | None = None, base_dir: Path | None = None) -> Job:
    """The job of `path`; relative inputs resolve against `base_dir` when given, else
    against the job file's folder (as `render run` always does)."""
    if base_dir is None:
        return load_job(path, output_root=output_root)
    if not base_dir.is_dir():
        raise JobError("--base-dir", str(base_dir), "no such folder; give the folder the job's relative "
                       "model, latents and preset paths lie under")
    return parse_job(read_toml(path, "job file"), job_dir=base_dir.resolve(), file=path, output_root=output_root)


def frame_range(job: Job, text: str) -> tuple[int, ...]:
    """`--frames` as studios write them, within the shot: `1001-1100` (inclusive),
    `1001-1100x4` (every 4th), `1001,1010,1020-1030` (a list), or one frame; parsed by
    fileseq, the VFX sequence library. The frames come back sorted, each once. A range
    written backwards (`1100-1001`) is refused rather than guessed at. Such a run writes
    frame files only: a job that writes nothing else cannot be split."""
    shot = job.shot
    allowed = (f"expected FIRST-LAST (inclusive), FIRST-LASTxSTEP or a comma list of those and single frames "
               f"(e.g. {shot.frame_start}-{shot.frame_end}, {shot.frame_start}-{shot.frame_end}x2, "
               f"{shot.frame_start},{shot.frame_end}), within the shot's frames {shot.frame_start}-{shot.frame_end}")
    if any((m := _BACKWARDS.fullmatch(part.strip())) and int(m[1]) > int(m[2]) for part in text.split(",")):
        raise JobError("--frames", text, allowed)
    try:
        frames = fileseq.FrameSet(text.strip())
    except (fileseq.ParseException, fileseq.MaxSizeException, ValueError):
        raise JobError("--frames", text, allowed) from None
    if not frames or any(not float(f).is_integer() for f in frames):   # fileseq also reads subframes: 1-2x0.5
        raise JobError("--frames", text, allowed)
    chosen = tuple(sorted({int(f) for f in frames}))
    if not shot.frame_start <= chosen[0] <= chosen[-1] <= shot.frame_end:
        raise JobError("--frames", text, allowed)
    if not any(f in FRAME_FORMATS for f in job.output.formats):
        raise JobError("--frames", text, "this job writes only a video (output.formats has no frame format), "
                       "which is made from the whole shot: leave --frames out")
    return chosen
