"""`render status`: what the farm is doing, for people (a table) and programs (--json);
and the queue opener of `requeue` and `cancel`.

These commands read an existing queue: a SQLite file that does not exist is refused
(exit 2, one line naming the absolute path), never created. Each names the queue it
read (the absolute sqlite:/// URL, or the Redis URL with its credentials masked).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.errors import FramefarmError, JobError
from pipeline.files.manifest import read_runs

from .queue import open_queue
from .tasks import JobSpec, JobStatus, QueueUnavailable, TaskQueue, WorkerStatus, worker_gone_after


def open_existing(queue_url: str) -> TaskQueue:
    """The queue, which must exist already; an unreachable one is one line, exit 1."""
    try:
        return open_queue(queue_url, create=False)
    except QueueUnavailable as err:
        raise FramefarmError(f"the queue cannot be reached: {err}") from None


def show_status(queue_url: str, job_id: str | None, *, as_json: bool) -> str:
    queue = open_existing(queue_url)
    try:
        jobs = queue.status(job_id)
        workers = queue.workers()
        figures = {job.job_id: run_figures(queue.job(job.job_id), job.job_id) for job in jobs} if as_json else {}
    except QueueUnavailable as err:
        raise FramefarmError(f"the queue cannot be reached: {err}") from None
    finally:
        queue.close()
    if job_id is not None and not jobs:
        raise JobError("JOB", job_id, f"no such job in the queue {queue.where}")
    if as_json:
        return json.dumps({"queue": queue.where, "jobs": [{**job.as_dict(), **figures[job.job_id]} for job in jobs],
                           "workers": [worker_dict(w) for w in workers]}, indent=2)
    lines = [f"queue {queue.where}" + ("" if jobs else ": no jobs")]
    if jobs:
        lines.append(f"{'job':<14}{'shot':<16}{'state':<11}{'done':>7}{'leased':>8}{'pending':>9}{'failed':>8}"
                     f"{'cancelled':>11}")
    for job in jobs:
        lines.append(f"{job.job_id:<14}{job.name:<16}{job.state:<11}{job.done:>7}{job.leased:>8}"
                     f"{job.pending:>9}{job.failed:>8}{job.cancelled:>11}")
        lines += _job_notes(job)
    for worker in workers:
        lines.append(_worker_line(worker))
    return "\n".join(lines)


def _job_notes(job: JobStatus) -> list[str]:
    notes = []
    if job.stopping:
        notes.append(f"  stopping: {job.stopping} frame(s) of tasks cancelled while rendering; their workers "
                     "stop at the next frame and report what they published")
    if job.segments:
        counts = job.segments
        shown = [f"{counts.get(state, 0)} {label}" for state, label in (
            ("leased", "encoding"), ("pending", "queued"), ("waiting", "waiting for their frames"),
            ("failed", "failed"), ("cancelled", "cancelled"), ("stopping", "stopping")) if counts.get(state)]
        notes.append(f"  video segments: {counts.get('done', 0)} of {sum(counts.values())} encoded"
                     + "".join(f", {part}" for part in shown))
    if job.video in ("pending", "leased"):
        notes.append(f"  video: {'being written' if job.video == 'leased' else 'queued'} (the segments joined by "
                     "a remux; videos without segments encoded from the frames)")
    for error in job.errors:
        what = {"video": "video of frames", "segment": "video segment of frames"}.get(error.get("kind", ""), "frames")
        notes.append(f"  failed {what} {error['first']}-{error['last']}: {error['error']}")
    if job.blocked:
        who = ", ".join(f"{b['worker']} ({b['failures']} failures)" for b in job.blocked)
        notes.append(f"  blocklisted by worker(s) {who}: they no longer take this job; "
                     f"`render requeue {job.job_id}` lifts it")
    return notes


def run_figures(spec: JobSpec | None, job_id: str) -> dict[str, Any]:
    """What a job's tasks measured, from the run records its workers appended to its
    manifest: energy and GPU-seconds, summed, and per frame. None where nothing was
    measured (CPU workers) or where this host cannot read the job's output root."""
    runs = [r for r in read_runs(Path(spec.output_root)) if r.get("farm_job") == job_id] if spec else []
    frames = sum(r.get("frames", 0) for r in runs)

    def total(key: str) -> float | None:
        values = [r[key] for r in runs if r.get(key) is not None]
        return round(sum(values), 3) if values else None

    energy, gpu_s = total("energy_j"), total("gpu_s")
    return {"energy_j": energy, "gpu_s": gpu_s,
            "j_per_frame": None if energy is None or not frames else round(energy / frames, 3),
            "gpu_s_per_frame": None if gpu_s is None or not frames else round(gpu_s / frames, 4)}


def worker_dict(worker: WorkerStatus) -> dict[str, Any]:
    return {"name": worker.name, "heartbeat": worker.heartbeat, **worker.info,
            "age_s": round(worker.age, 1), "state": worker.state}


def _worker_line(worker: WorkerStatus) -> str:
    if worker.gone:
        return (f"worker {worker.name}: gone (no heartbeat for {worker.age:.0f} s, expected every "
                f"{worker.info.get('heartbeat_s', 5):g} s; gone after {worker_gone_after(worker.info):.0f} s), "
                f"{worker.info.get('frames_done', 0)} frame(s) done")
    refused = worker.info.get("refused_jobs") or []
    return (f"worker {worker.name}: {worker.state}, last heartbeat {worker.age:.0f} s ago, "
            f"{worker.info.get('frames_done', 0)} frame(s) done"
            + (f", refuses job(s) {', '.join(refused)} (its --output-root / --model-root / --input-root)"
               if refused else ""))


def existing_job(queue_url: str, job_id: str) -> TaskQueue:
    """The queue, once it is known to hold `job_id` (for requeue and cancel)."""
    queue = open_existing(queue_url)
    try:
        found = queue.job(job_id)
    except QueueUnavailable as err:
        queue.close()
        raise FramefarmError(f"the queue cannot be reached: {err}") from None
    if found is None:
        queue.close()
        raise JobError("JOB", job_id, f"no such job in the queue {queue.where}")
    return queue


@contextlib.contextmanager
def guarded(queue: TaskQueue) -> Iterator[None]:
    """Queue calls of one command: an unreachable queue is one line (exit 1); closed after."""
    try:
        yield
    except QueueUnavailable as err:
        raise FramefarmError(f"the queue cannot be reached: {err}") from None
    finally:
        queue.close()
