"""`render status`: what the farm is doing, for people (a table) and programs (--json)."""

from __future__ import annotations

import json
import time

from pipeline.errors import JobError

from .queue import open_queue
from .tasks import TaskQueue


def show_status(queue_url: str, job_id: str | None, *, as_json: bool) -> str:
    queue = open_queue(queue_url)
    try:
        jobs = queue.status(job_id)
        workers = queue.workers()
    finally:
        queue.close()
    if job_id is not None and not jobs:
        raise JobError("JOB", job_id, "no such job in this queue")
    if as_json:
        return json.dumps({"jobs": [job.as_dict() for job in jobs],
                           "workers": [{"name": w.name, "heartbeat": w.heartbeat, **w.info} for w in workers]},
                          indent=2)
    lines = [f"{'job':<14}{'shot':<16}{'state':<11}{'done':>7}{'leased':>8}{'pending':>9}{'failed':>8}"]
    for job in jobs:
        lines.append(f"{job.job_id:<14}{job.name:<16}{job.state:<11}{job.done:>7}{job.leased:>8}"
                     f"{job.pending:>9}{job.failed:>8}")
        for error in job.errors:
            lines.append(f"  failed frames {error['first']}-{error['last']}: {error['error']}")
    now = time.time()
    for worker in workers:
        lines.append(f"worker {worker.name}: last heartbeat {now - worker.heartbeat:.0f} s ago, "
                     f"{worker.info.get('frames_done', 0)} frame(s) done"
                     + (", draining" if worker.info.get("draining") else ""))
    return "\n".join(lines)


def existing_job(queue_url: str, job_id: str) -> TaskQueue:
    """The queue, once it is known to hold `job_id` (for requeue and cancel)."""
    queue = open_queue(queue_url)
    if queue.job(job_id) is None:
        queue.close()
        raise JobError("JOB", job_id, "no such job in this queue")
    return queue
