"""The monitor's JSON API under /api/: reads (jobs, a job, its tasks and their logs, the
thumbnails of its latest finished frames, workers) and actions (requeue, cancel,
priority, pause, resume, drain).

Every answer is JSON; a refusal is {"error": "..."} with a 4xx status and changes
nothing: an unknown job or worker is 404, a malformed id or body 400, a token missing
401 or wrong 403 (access.py), an action the job's state does not allow 409. Queue calls
block, so they run in Starlette's thread pool; a queue that cannot be reached is 503.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from ..status import worker_dict
from ..tasks import JobStatus, QueueUnavailable, TaskQueue, whole_number
from .access import Access, Denied
from .thumbnails import latest_thumbnails

JOB_STATES = ("active", "paused", "done", "cancelled", "failed")
JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
DEFAULT_LIMIT, MAX_LIMIT = 100, 10_000
PRIORITY_RANGE = (-100, 100)   # as `render submit --priority`
MAX_BODY_BYTES = 1024 * 1024   # an action's body is a few bytes of JSON


Handler = Callable[[Request, dict[str, Any]], Any]   # (request, JSON body of an action) -> the answer


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def job_dict(job: JobStatus) -> dict[str, Any]:
    frames = job.done + job.leased + job.pending + job.failed + job.cancelled + job.stopping
    return {**job.as_dict(), "frames": frames, "progress": job.done / frames if frames else 0.0}


class Api:
    def __init__(self, queue: TaskQueue, access: Access) -> None:
        self.queue = queue
        self.access = access

    def routes(self) -> list[Route]:
        return [
            Route("/api/jobs", self._read(self.jobs)),
            Route("/api/jobs/{job_id}", self._read(self.job)),
            Route("/api/jobs/{job_id}/tasks", self._read(self.tasks)),
            Route("/api/jobs/{job_id}/tasks/{task_id}/log", self._read(self.task_log)),
            Route("/api/jobs/{job_id}/thumbnails", self._read(self.thumbnails)),
            Route("/api/jobs/{job_id}/thumbnails/{frame}", self._thumbnail_file),
            Route("/api/workers", self._read(self.workers)),
            *(Route(f"/api/jobs/{{job_id}}/{name}", self._act(getattr(self, name)), methods=["POST"])
              for name in ("requeue", "cancel", "priority", "pause", "resume")),
            # worker names hold '/' (host/pid/device): the name is the rest of the path before /drain
            Route("/api/workers/{name:path}/drain", self._act(self.drain), methods=["POST"]),
        ]

    # -- plumbing: access, errors, the thread pool

    def _read(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        return self._endpoint(handler, action=False)

    def _act(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        return self._endpoint(handler, action=True)

    def _endpoint(self, handler: Handler, *, action: bool
                  ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                self.access.check(request, action=action)
                body = await _body(request) if action else {}
                return JSONResponse(await run_in_threadpool(handler, request, body))
            except (Denied, BadRequest) as refused:
                return error(refused.status, str(refused))
            except QueueUnavailable as err:
                return error(503, f"the queue cannot be reached: {err}")
        return endpoint

    def _known_job(self, request: Request) -> str:
        job_id = request.path_params["job_id"]
        if not JOB_ID.fullmatch(job_id):
            raise BadRequest(400, f"job id {job_id!r} is not a job id (letters, digits, '.', '_', '-'; "
                                  "at most 128 characters)")
        if self.queue.job(job_id) is None:
            raise BadRequest(404, f"no job {job_id!r} in the queue {self.queue.where}")
        return job_id

    # -- reads

    def jobs(self, request: Request, _body: dict[str, Any]) -> dict[str, Any]:
        state = request.query_params.get("state")
        if state is not None and state not in JOB_STATES:
            raise BadRequest(400, f"state = {state!r}: expected one of {', '.join(JOB_STATES)}")
        limit_text = request.query_params.get("limit", str(DEFAULT_LIMIT))
        limit = whole_number(limit_text, MAX_LIMIT)
        if not limit:   # None (not ASCII digits, or too large) or 0
            raise BadRequest(400, f"limit = {limit_text[:40]!r}: expected a whole number from 1 to {MAX_LIMIT} "
                                  "(ASCII digits)")
        # Count frames only for the jobs shown: a large queue's done jobs cost nothing here.
        # "failed" is counted (an active job with dead-lettered tasks and none left to run),
        # so "active" and "failed" look at every stored-active job.
        stored = "active" if state == "failed" else state
        candidates = [job_id for job_id, kept in reversed(self.queue.job_states()) if stored in (None, kept)]
        if state in ("active", "failed"):
            jobs = [job for job in reversed(self.queue.status(job_ids=candidates)) if job.state == state]
            total, shown = len(jobs), jobs[:limit]
        else:
            total, shown = len(candidates), list(reversed(self.queue.status(job_ids=candidates[:limit])))
        return {"queue": self.queue.where, "total": total, "jobs": [job_dict(job) for job in shown]}

    def job(self, request: Request, _body: dict[str, Any]) -> dict[str, Any]:
        job_id = self._known_job(request)
        spec = self.queue.job(job_id)
        [found] = self.queue.status(job_id)
        assert spec is not None
        return {**job_dict(found), "frame_start": spec.frame_start, "frame_end": spec.frame_end,
                "chunk": spec.chunk, "video": spec.video, "max_attempts": spec.max_attempts, "preview": spec.preview,
                "output_root": spec.output_root, "job_file": spec.toml}

    def tasks(self, request: Request, _body: dict[str, Any]) -> dict[str, Any]:
        job_id = self._known_job(request)
        return {"job_id": job_id, "tasks": [task.as_dict() for task in self.queue.tasks(job_id)]}

    def task_log(self, request: Request, _body: dict[str, Any]) -> dict[str, Any]:
        job_id = self._known_job(request)
        task_id = request.path_params["task_id"]
        if whole_number(task_id) is None:
            raise BadRequest(400, f"task id {task_id[:40]!r} is not a task id (ASCII digits, below 2**63, as "
                                  "/api/jobs/ID/tasks lists them)")
        log = self.queue.task_log(job_id, task_id)
        if log is None:
            raise BadRequest(404, f"job {job_id} has no task {task_id}")
        return {"job_id": job_id, "task_id": task_id, "log": log}

    def thumbnails(self, request: Request, _body: dict[str, Any]) -> dict[str, Any]:
        job_id = self._known_job(request)
        spec = self.queue.job(job_id)
        assert spec is not None
        found = latest_thumbnails(spec.output_root, spec.name)
        return {"job_id": job_id, "thumbnails": [
            {"frame": shown["frame"], "time": shown["time"], "url": f"/api/jobs/{job_id}/thumbnails/{shown['frame']}"}
            for shown in found]}

    async def _thumbnail_file(self, request: Request) -> Response:
        """One frame's JPEG, if it is among the job's latest finished frames (as `thumbnails`)."""
        def find(_request: Request, _body: dict[str, Any]) -> Path:
            frame = whole_number(request.path_params["frame"], 999_999_999)
            if frame is None:
                raise BadRequest(400, f"frame {request.path_params['frame'][:40]!r} is not a frame number (ASCII "
                                      "digits, as /api/jobs/ID/thumbnails lists them)")
            job_id = self._known_job(request)
            spec = self.queue.job(job_id)
            assert spec is not None
            found = latest_thumbnails(spec.output_root, spec.name, 1, frame=frame)
            if not found:
                raise BadRequest(404, f"job {job_id} has no thumbnail of frame {frame} among its latest "
                                      "finished frames")
            return Path(found[0]["path"])

        try:
            self.access.check(request, action=False)
            path = await run_in_threadpool(find, request, {})
        except (Denied, BadRequest) as refused:
            return error(refused.status, str(refused))
        except QueueUnavailable as err:
            return error(503, f"the queue cannot be reached: {err}")
        return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "no-cache"})

    def workers(self, _request: Request, _body: dict[str, Any]) -> dict[str, Any]:
        return {"workers": [worker_dict(worker) for worker in self.queue.workers()]}

    # -- actions

    def requeue(self, request: Request, body: dict[str, Any]) -> dict[str, Any]:
        failed_only = _field(body, "failed_only", bool, default=True)
        job_id = self._known_job(request)
        return {"job_id": job_id, "requeued": self.queue.requeue(job_id, failed_only=failed_only)}

    def cancel(self, request: Request, body: dict[str, Any]) -> dict[str, Any]:
        _field(body, None, object)
        job_id = self._known_job(request)
        return {"job_id": job_id, "cancelled": self.queue.cancel(job_id)}

    def priority(self, request: Request, body: dict[str, Any]) -> dict[str, Any]:
        priority = _field(body, "priority", int)
        low, high = PRIORITY_RANGE
        if not low <= priority <= high:
            raise BadRequest(400, f"priority = {priority}: expected a whole number from {low} to {high}")
        job_id = self._known_job(request)
        self.queue.set_priority(job_id, priority)
        return {"job_id": job_id, "priority": priority}

    def pause(self, request: Request, body: dict[str, Any]) -> dict[str, Any]:
        return self._switch(request, body, self.queue.pause, "active", "paused")

    def resume(self, request: Request, body: dict[str, Any]) -> dict[str, Any]:
        return self._switch(request, body, self.queue.resume, "paused", "active")

    def _switch(self, request: Request, body: dict[str, Any], step: Callable[[str], bool], before: str,
                after: str) -> dict[str, Any]:
        _field(body, None, object)
        job_id = self._known_job(request)
        if not step(job_id):
            [job] = self.queue.status(job_id)
            raise BadRequest(409, f"job {job_id} is {job.state}; only an {before} job can be made {after}")
        return {"job_id": job_id, "state": after}

    def drain(self, request: Request, body: dict[str, Any]) -> dict[str, Any]:
        _field(body, None, object)
        name = request.path_params["name"]
        if not name or len(name) > 256 or not name.isprintable():
            raise BadRequest(400, f"worker name {name[:256]!r} is not a worker name (printable, 1-256 characters)")
        if not self.queue.drain(name):
            raise BadRequest(404, f"no worker {name!r} in the queue {self.queue.where}")
        return {"worker": name, "draining": True}


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _body(request: Request) -> dict[str, Any]:
    """The request's JSON object; an empty body is {}."""
    raw = await _read_capped(request)
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadRequest(400, f"the request body is not JSON ({err})") from None
    except ValueError:   # an integer beyond Python's 4300-digit limit for converting text
        raise BadRequest(400, "the request body holds a number too long to read (over 4300 digits); "
                              "every field takes a small whole number or true/false") from None
    except RecursionError:   # arrays or objects nested deeper than the parser's recursion limit
        raise BadRequest(400, "the request body is nested too deeply to read; send a flat JSON object "
                              'such as {"priority": 5}') from None
    if not isinstance(body, dict):
        raise BadRequest(400, f"the request body must be a JSON object, not {type(body).__name__}")
    return body


async def _read_capped(request: Request) -> bytes:
    """The body, refused (413) past MAX_BODY_BYTES: by its Content-Length before reading,
    and while streaming, for a chunked body that declares none (or declares too little)."""
    declared = request.headers.get("content-length", "")   # the server (h11) has checked it is digits
    if declared.isascii() and declared.isdecimal() and (len(declared) > 12 or int(declared) > MAX_BODY_BYTES):
        raise BadRequest(413, f"the request body is {declared[:40]} bytes; at most {MAX_BODY_BYTES} (1 MiB) are "
                              "read: an action takes a small JSON object")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise BadRequest(413, f"the request body is over {MAX_BODY_BYTES} bytes (1 MiB); an action takes a "
                                  "small JSON object")
        chunks.append(chunk)
    return b"".join(chunks)


def _field(body: dict[str, Any], name: str | None, kind: type, *, default: Any = None) -> Any:
    """body[name], checked to be a `kind`; any other key is refused, naming it."""
    unknown = sorted(set(body) - {name})
    if unknown:
        allowed = f"only {name!r}" if name else "no fields"
        raise BadRequest(400, f"unknown field(s) {', '.join(map(repr, unknown))} in the request body; it takes "
                              f"{allowed}")
    if name is None:
        return None
    if name not in body:
        if default is None:
            raise BadRequest(400, f"{name} is missing from the request body")
        return default
    value = body[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        expected = "true or false" if kind is bool else "a whole number"
        raise BadRequest(400, f"{name} = {json.dumps(value)}: expected {expected}")
    return value
