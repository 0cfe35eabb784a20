"""The monitor's Starlette application: the pages (server-rendered from templates/, kept
current by static/monitor.js through the API), the API (api.py) and the static files,
all shipped in the package: nothing is fetched from elsewhere at run time."""

from __future__ import annotations

from typing import Any

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..tasks import QueueUnavailable, TaskQueue
from .access import Access, Bind
from .api import JOB_ID, Api, error, job_dict

_PAGES = jinja2.Environment(loader=jinja2.PackageLoader("workers.monitor", "templates"),
                            autoescape=True, undefined=jinja2.StrictUndefined)


def build_app(queue: TaskQueue, access: Access, bind: Bind | None = None) -> Starlette:
    api = Api(queue, access)

    def page(name: str, **context: Any) -> HTMLResponse:
        return HTMLResponse(_PAGES.get_template(name).render(queue=queue.where, access=access, **context))

    async def jobs_page(request: Request) -> Response:
        # With reads behind the token, the page comes empty and monitor.js fills it once given the token.
        if access.reads_need_token:
            return page("jobs.html", jobs=[], total=0, workers=[])
        found = await run_in_threadpool(api.jobs, request, {})
        workers = await run_in_threadpool(api.workers, request, {})
        return page("jobs.html", jobs=found["jobs"], total=found["total"], workers=workers["workers"])

    async def job_page(request: Request) -> Response:
        job_id = request.path_params["job_id"]
        if not JOB_ID.fullmatch(job_id):
            return HTMLResponse(f"not a job id: {job_id!r}", status_code=400)
        if access.reads_need_token:
            return page("job.html", job_id=job_id, job=None, tasks=[])
        found = await run_in_threadpool(queue.status, job_id)
        if not found:
            return HTMLResponse(f"no job {job_id!r} in the queue", status_code=404)
        tasks = await run_in_threadpool(queue.tasks, job_id)
        return page("job.html", job_id=job_id, job=job_dict(found[0]), tasks=[t.as_dict() for t in tasks])

    async def not_found(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        if request.url.path.startswith("/api/"):
            return error(status, f"no API path {request.method} {request.url.path} (see the README's monitor "
                                 "section for the API)")
        return HTMLResponse(f"{status}: nothing at {request.url.path}", status_code=status)

    async def unavailable(_request: Request, exc: Exception) -> Response:
        return error(503, f"the queue cannot be reached: {exc}")

    middleware = []
    if bind is not None and bind.loopback and ":" not in bind.host:
        # A page on loopback reads without a token: refuse other Host names (DNS rebinding).
        # (Starlette's check cannot read an IPv6 Host header, so [::1] goes without it.)
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=["127.0.0.1", "localhost", "[::1]",
                                                                           bind.host]))
    return Starlette(
        routes=[Route("/", jobs_page), Route("/jobs/{job_id}", job_page), *api.routes(),
                Mount("/static", StaticFiles(packages=[("workers.monitor", "static")]), name="static")],
        exception_handlers={404: not_found, 405: not_found, QueueUnavailable: unavailable},
        middleware=middleware)
