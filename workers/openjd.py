"""`render openjd`: a job as an Open Job Description template (jobtemplate-2023-09, YAML),
to run on the farms studios already have (AWS Deadline Cloud, or `openjd run` locally).

The template's shape:
- job parameters: OutputRoot (where frames, video and manifest go), InputRoot (the
  folder the job's relative model, latents and preset paths resolve against) and
  Device; JobFile too when the job is referenced by path rather than embedded;
- a Frames step: one task per chunk of frames (CHUNK[INT] of the TASK_CHUNKING
  extension, or a STRING range per task without it), each `render run --frames A-B
  --resume`, handed to a render process that a step environment keeps for the
  session, so that the model is loaded once a session rather than once a task;
- a Video step, after the Frames step, when the job makes an MP4: `render run
  --resume` over the whole shot, which finds every frame published and encodes
  the video from their files (the same run builds the video after a farm's chunks).

Frames are published atomically and the first writer wins, so chunks on different
hosts never collide, and a task run again skips what an earlier attempt published.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
import yaml

from pipeline.config.formats import frame_format
from pipeline.config.job import Job, load_job
from pipeline.errors import JobError
from pipeline.plan import make_plan

SPECIFICATION = "jobtemplate-2023-09"
RENDER = "render"              # the command on the farm's hosts (framefarm installed there)
MAX_LISTED_CHUNKS = 1024       # a STRING task parameter lists at most this many values
SESSION_DIR = "{{Session.WorkingDirectory}}"
STOP_GRACE_S = 120             # SIGTERM to SIGKILL: frames in flight finish whole meanwhile


def export_template(job_file: Path, *, chunk: int, gpus: int, gpu_memory_gib: float | None,
                    chunk_extension: bool = True, saved_in: Path | None = None) -> str:
    """The template as YAML text. The job is checked as `render submit` checks it (the
    model, the latents, the outputs; each host checks its own memory), so a bad job is
    refused before anything is written.

    OpenJD joins a PATH parameter's default to the template's folder, so defaults are
    written, relative to it, only for a template to be saved in `saved_in`; without one
    the paths are given at submission."""
    job = load_job(job_file)
    plan = make_plan(job, torch.device("cpu"), check_memory=False)
    if frame_format(job.output.formats) is None:
        raise JobError("output.formats", list(job.output.formats),
                       'an OpenJD job renders chunks of frames on several hosts and encodes the MP4 from their '
                       'files; add "png", "png16" or "exr"')
    if plan.clip_frames:
        chunk = len(job.shot.frames)   # a clip decodes from its first latent frame: one task
    text = job_file.read_text(encoding="utf-8")
    # A template's embedded text is a format string, with no escape for "{{": a job
    # holding one is referenced by path instead.
    embedded = "{{" not in text
    template = _template(job, job_file.resolve(), text if embedded else None, chunk=chunk, gpus=gpus,
                         gpu_memory_gib=job.tuning.vram_budget_gib if gpu_memory_gib is None else gpu_memory_gib,
                         chunk_extension=chunk_extension, saved_in=saved_in)
    how = ("its text is embedded (the Frames and Video steps' file Job)" if embedded else
           "it is referenced by path (parameter JobFile): its text holds '{{', which a template reads as an "
           "expression")
    defaults = ("the PATH parameters' defaults are relative to this file's folder" if saved_in is not None else
                "the PATH parameters have no defaults: give them at submission")
    header = (f"# Open Job Description template of the framefarm job {job_file.resolve()}, written by "
              f"`render openjd`;\n# {how};\n# {defaults}.\n")
    return header + yaml.dump(template, Dumper=_Dumper, sort_keys=False, width=110, allow_unicode=True)


def _template(job: Job, job_file: Path, text: str | None, *, chunk: int, gpus: int, gpu_memory_gib: float,
              chunk_extension: bool, saved_in: Path | None) -> dict[str, Any]:
    shot = job.shot
    job_arg = "{{Task.File.Job}}" if text is not None else "{{Param.JobFile}}"
    common = ["--base-dir", "{{Param.InputRoot}}", "--output-root", "{{Param.OutputRoot}}",
              "--device", "{{Param.Device}}"]
    files = [{"name": "Job", "type": "TEXT", "filename": "job.toml", "data": text}] if text is not None else []
    requirements = _host_requirements(gpus, gpu_memory_gib)
    frames_step: dict[str, Any] = {
        "name": "Frames",
        "description": "Renders a chunk of frames a task into OUTPUT_ROOT and its manifest (frames only, never "
                       "the video), skipping frames an earlier attempt published.",
        "parameterSpace": {"taskParameterDefinitions": [_frames_parameter(job, chunk, chunk_extension)]},
        "stepEnvironments": [_session_environment()],
        "script": {
            **({"embeddedFiles": files} if files else {}),
            "actions": {"onRun": _action(["run", job_arg, "--frames", "{{Task.Param.Frames}}", "--resume",
                                          "--session", SESSION_DIR, *common])},
        },
        "hostRequirements": requirements,
    }
    steps = [frames_step]
    if job.output.videos:
        steps.append({
            "name": "Video",
            "description": "Encodes the videos from the published frames (a resumed run of the whole shot: it "
                           "renders only a frame that is missing).",
            "dependencies": [{"dependsOn": "Frames"}],
            "script": {
                **({"embeddedFiles": files} if files else {}),
                "actions": {"onRun": _action(["run", job_arg, "--resume", *common])},
            },
            "hostRequirements": requirements,
        })
    return {
        "specificationVersion": SPECIFICATION,
        **({"extensions": ["TASK_CHUNKING"]} if chunk_extension else {}),
        "name": f"framefarm {shot.name}",
        "description": f"framefarm shot {shot.name}: frames {shot.frame_start}-{shot.frame_end}, "
                       f"{shot.width}x{shot.height}, {', '.join(job.output.formats)}. Exported from {job_file}.",
        "parameterDefinitions": _parameters(job, job_file, referenced=text is None, gpus=gpus, saved_in=saved_in),
        "steps": steps,
    }


def _parameters(job: Job, job_file: Path, *, referenced: bool, gpus: int,
                saved_in: Path | None) -> list[dict[str, Any]]:
    def default(path: Path) -> dict[str, str]:
        return {} if saved_in is None else {"default": os.path.relpath(path, saved_in.resolve())}

    parameters: list[dict[str, Any]] = []
    if referenced:
        parameters.append({
            "name": "JobFile", "type": "PATH", "objectType": "FILE", "dataFlow": "IN", **default(job_file),
            "description": "The framefarm job file (TOML), as the render hosts see it.",
            "userInterface": {"control": "CHOOSE_INPUT_FILE", "label": "Job file"},
        })
    parameters += [
        {"name": "InputRoot", "type": "PATH", "objectType": "DIRECTORY", "dataFlow": "IN",
         **default(job_file.parent),
         "description": "The folder the job's relative model.path, source.path and preset resolve against "
                        "(the job file's folder at export). Absolute paths in the job are used as written.",
         "userInterface": {"control": "CHOOSE_DIRECTORY", "label": "Input root"}},
        {"name": "OutputRoot", "type": "PATH", "objectType": "DIRECTORY", "dataFlow": "OUT",
         **default(job.output.root),
         "description": "Where the frames, the video and manifest.jsonl are written (the job's output.root).",
         "userInterface": {"control": "CHOOSE_DIRECTORY", "label": "Output root"}},
        {"name": "Device", "type": "STRING", "default": "cuda" if gpus else "cpu", "minLength": 1,
         "maxLength": 32, "description": "The render device on each host: cuda, cuda:N or cpu."},
    ]
    return parameters


def _frames_parameter(job: Job, chunk: int, chunk_extension: bool) -> dict[str, Any]:
    shot = job.shot
    if chunk_extension:
        whole = (f"{shot.frame_start}-{shot.frame_end}" if shot.frame_end > shot.frame_start
                 else str(shot.frame_start))
        return {"name": "Frames", "type": "CHUNK[INT]", "range": whole,
                "chunks": {"defaultTaskCount": chunk, "rangeConstraint": "CONTIGUOUS"}}
    starts = range(shot.frame_start, shot.frame_end + 1, chunk)
    if len(starts) > MAX_LISTED_CHUNKS:
        raise JobError("--chunk", chunk, f"without the TASK_CHUNKING extension each task's frames are listed, "
                       f"at most {MAX_LISTED_CHUNKS} tasks; use --chunk "
                       f"{math.ceil(len(shot.frames) / MAX_LISTED_CHUNKS)} or more")
    ranges = [(first, min(first + chunk - 1, shot.frame_end)) for first in starts]
    return {"name": "Frames", "type": "STRING",
            "range": [f"{first}-{last}" if last > first else str(first) for first, last in ranges]}


def _session_environment() -> dict[str, Any]:
    """Keeps one render process (and the model in it) for the session's tasks: OpenJD
    lets an environment's onEnter start what the session's tasks then use, and runs
    its onExit however the session ends."""
    return {
        "name": "RenderSession",
        "description": "A render process kept for the session: the model is loaded once, not once a task.",
        "script": {"actions": {
            "onEnter": {"command": RENDER, "args": ["session", "start", "--dir", SESSION_DIR], "timeout": 600},
            "onExit": {"command": RENDER, "args": ["session", "stop", "--dir", SESSION_DIR], "timeout": 600},
        }},
    }


def _action(args: list[str]) -> dict[str, Any]:
    # Cancelling sends SIGTERM first: the run stops at a frame boundary, frames in flight finish whole.
    return {"command": RENDER, "args": args,
            "cancelation": {"mode": "NOTIFY_THEN_TERMINATE", "notifyPeriodInSeconds": STOP_GRACE_S}}


def _host_requirements(gpus: int, gpu_memory_gib: float) -> dict[str, Any]:
    """What a fleet's hosts must offer (OpenJD's standard capability names): Linux, and
    the GPUs with their memory. Host memory and vCPUs are left to the fleet."""
    requirements: dict[str, Any] = {
        "attributes": [{"name": "attr.worker.os.family", "anyOf": ["linux"] if gpus else ["linux", "macos"]}]}
    if gpus:
        requirements["amounts"] = [
            {"name": "amount.worker.gpu", "min": gpus},
            {"name": "amount.worker.gpu.memory", "min": math.ceil(gpu_memory_gib * 1024)},   # MiB
        ]
    return requirements


class _Dumper(yaml.SafeDumper):
    """Multi-line text (the embedded job file) as a literal block, readable as written;
    each step's copy written out in full, not as a YAML alias of the other's."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _text)
