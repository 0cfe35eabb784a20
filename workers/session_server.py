"""The long-lived render process of an OpenJD session (`render session serve`).

It listens on a Unix socket in the session folder and renders the runs tasks hand it
(`render run --session DIR`), one at a time, with the same plan and pipeline as
`render run`, keeping models loaded between them (as a farm worker does). It stops at
a frame boundary (frames in flight finish whole) when the run's client asks or goes
away, and exits when asked (`render session stop`, the environment's onExit), on
SIGTERM or Ctrl-C, when the session folder is removed, or after `idle_exit_s` without
a run, so that a session that ended without its onExit frees the GPU all the same.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import trio

from pipeline.config.task import frame_range, load_task_job
from pipeline.errors import FramefarmError, RunInterrupted, describe
from pipeline.gpu.device import pick_device
from pipeline.models.cache import ModelCache
from pipeline.plan import make_plan
from pipeline.run import import_model_code, render
from pipeline.summary import format_summary

from .session import socket_path

log = logging.getLogger("framefarm.session")

WATCH_S = 2.0   # how often the server looks for its session folder and its idle time


@dataclass
class Server:
    folder: Path
    idle_exit_s: float
    models: ModelCache = field(default_factory=ModelCache)
    lock: trio.Lock = field(default_factory=trio.Lock)        # one run at a time
    stopping: trio.Event = field(default_factory=trio.Event)
    run_stop: trio.Event | None = None                         # the run in progress's
    runs: int = 0
    idle_since: float = field(default_factory=time.monotonic)

    def stop(self, why: str) -> None:
        if not self.stopping.is_set():
            log.info("stopping: %s", why)
        self.stopping.set()
        if self.run_stop is not None:
            self.run_stop.set()

    def status(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "runs": self.runs,
                "model_loads": self.models.loads + self.models.pipelines.loads}


def serve(folder: Path, idle_exit_s: float) -> None:
    import diffusers  # noqa: F401  (imported now, as the session starts, not in its first task)

    trio.run(_serve, Server(folder.resolve(), idle_exit_s))


async def _serve(server: Server) -> None:
    path = socket_path(server.folder, "--dir")
    path.unlink(missing_ok=True)   # a killed server's; `render session start` asked it first
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(str(path))
    sock.listen(8)
    log.info("render session server pid %d listening on %s", os.getpid(), path)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_signals, server)
            nursery.start_soon(_watch, server, path)
            nursery.start_soon(partial(trio.serve_listeners, partial(_handle, server),
                                       [trio.SocketListener(sock)]))
            await server.stopping.wait()
            async with server.lock:   # the run in progress stops at a frame boundary first
                nursery.cancel_scope.cancel()
    finally:
        path.unlink(missing_ok=True)
    log.info("stopped after %d run(s), %d model load(s)", server.runs, server.status()["model_loads"])


async def _signals(server: Server) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            server.stop(signal.Signals(signum).name)


async def _watch(server: Server, path: Path) -> None:
    while True:
        await trio.sleep(WATCH_S)
        if not path.exists():
            server.stop(f"{path} is gone (the session ended)")
        elif not server.lock.locked() and time.monotonic() - server.idle_since > server.idle_exit_s:
            server.stop(f"no run for {server.idle_exit_s:.0f} s")


class Lines:
    """JSON objects, one a line, read from a stream; None at its end."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream, self.buffer = stream, b""

    async def next(self) -> dict[str, Any] | None:
        while b"\n" not in self.buffer:
            try:
                data = await self.stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                return None
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\n")
        message = json.loads(line)
        return message if isinstance(message, dict) else {}


async def _send(stream: trio.SocketStream, message: dict[str, Any]) -> None:
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await stream.send_all(json.dumps(message).encode() + b"\n")


async def _handle(server: Server, stream: trio.SocketStream) -> None:
    async with stream:
        lines = Lines(stream)
        try:
            request = await lines.next()
        except ValueError:
            request = {}
        if request is None:
            return
        op = request.get("op")
        if op == "run":
            await _run(server, stream, lines, request)
        elif op in ("ping", "stop"):
            await _send(stream, server.status())
            if op == "stop":   # after the answer: stopping cancels this handler once no run is left
                server.stop("asked by render session stop")
        else:
            await _send(stream, {"exit": 2, "error": f"unknown request {op!r}"})


async def _run(server: Server, stream: trio.SocketStream, lines: Lines, request: dict[str, Any]) -> None:
    """One run, its events relayed to the client as they come; the client going away
    or asking to stop stops it at the next frame boundary."""
    stop = trio.Event()
    events_tx, events_rx = trio.open_memory_channel[dict[str, Any]](math.inf)
    relayed = trio.Event()

    async def relay() -> None:
        async for event in events_rx:
            await _send(stream, event)
        relayed.set()

    async def watch_client() -> None:
        while True:
            try:
                message = await lines.next()
            except ValueError:
                continue
            if message is None or message.get("op") == "stop":
                stop.set()
                return

    code: int = 1
    error: str | None = "the run did not finish"
    async with server.lock:
        server.run_stop = stop
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(relay)
                nursery.start_soon(watch_client)
                if server.stopping.is_set():
                    code, error = 1, "the render session server is stopping; the session is ending"
                else:
                    code, error = await _render_request(server, request, stop, events_tx.send_nowait)
                events_tx.send_nowait({"exit": code, "error": error})
                events_tx.close()
                await relayed.wait()
                nursery.cancel_scope.cancel()
        finally:
            server.run_stop = None
            server.runs += 1
            server.idle_since = time.monotonic()
            log.info("run %d: %s frames %s: %s", server.runs, request.get("job"), request.get("frames") or "all",
                     "done" if code == 0 else f"exit {code}: {error}")


async def _render_request(server: Server, request: dict[str, Any], stop: trio.Event,
                          emit: Callable[[dict[str, Any]], None]) -> tuple[int, str | None]:
    """What `render run` does in its own process, here with the server's models."""
    started = time.perf_counter()
    try:
        # Runs take turns, so each can have the client's folder as its own: a job's relative
        # output.root resolves where the task runs, as in `render run` without --session.
        os.chdir(request.get("cwd") or server.folder)
        job = load_task_job(Path(request["job"]), output_root=_path(request.get("output_root")),
                            base_dir=_path(request.get("base_dir")))
        frames = frame_range(job, request["frames"]) if request.get("frames") else None
        device = pick_device(request.get("device"))
        plan = await trio.to_thread.run_sync(partial(make_plan, job, device, resume=bool(request.get("resume")),
                                                     frames=frames, video=frames is None))
        if not plan.todo and not plan.videos_to_write:
            count = len(frames if frames is not None else job.shot.frames)
            emit({"out": f"nothing to render: all {count} frame(s) of {job.shot.name} are finished and match "
                         f"the manifest in {plan.root}"})
            return 0, None
        import_model_code(plan)
        loads = server.status()["model_loads"]
        emit({"todo": len(plan.todo), "name": job.shot.name})
        report = await render(plan, lambda frame: emit({"frame": frame}), server.models, handle_signals=False,
                              stop=stop, pipelines=server.models.pipelines)
        if report.frames < len(plan.todo):
            raise RunInterrupted("SIGTERM", report.frames)
        emit({"out": format_summary(plan, report, time.perf_counter() - started)})
        kept = server.status()["model_loads"] == loads
        emit({"out": f"render session server pid {os.getpid()}, run {server.runs + 1}: the model was "
                     + ("kept loaded from an earlier run" if kept else "loaded in this run")})
        return 0, None
    except FramefarmError as err:
        return err.exit_code, str(err)
    except Exception as err:   # a bug or an environment fault: the task fails with it, the server serves on
        log.exception("run failed")
        return 1, describe(err)


def _path(value: Any) -> Path | None:
    return None if value is None else Path(value)
