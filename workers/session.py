"""The client side of a session's render server: start it, hand it runs, stop it.

An OpenJD session runs many tasks of one job on one host, one after another. Each task
started as its own `render run` would import torch and diffusers and load the model
again (about 8 s a task on a 2-core CPU machine, before its first frame). Instead the
session's environment starts one long-lived render process (`render session start`,
its onEnter), each task's `render run --session DIR` hands it the run over a Unix
socket in the session folder, and the environment's onExit stops it.

Standard library only: a task's `render run --session` must start in a fraction of a
second, so nothing here imports torch. The server is workers/session_server.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.errors import FramefarmError, JobError, Relayed, SessionUnavailable

SOCKET_NAME = "render-session.sock"
LOG_NAME = "render-session.log"
MAX_SOCKET_PATH = 107            # bytes of a Unix socket's path on Linux (sun_path less its NUL)


def socket_path(folder: Path, option: str = "--session") -> Path:
    path = folder.resolve() / SOCKET_NAME
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise JobError(option, str(folder), f"too long a path for a Unix socket: {path} has "
                       f"{len(os.fsencode(path))} bytes, at most {MAX_SOCKET_PATH}; use a shorter folder")
    return path


class Connection:
    """One connection to the server: JSON objects, one a line, each way."""

    def __init__(self, folder: Path, timeout_s: float | None = None) -> None:
        self.folder = folder
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout_s)
        try:
            self.sock.connect(str(socket_path(folder)))
        except (FileNotFoundError, ConnectionRefusedError) as err:
            self.sock.close()
            raise SessionUnavailable(f"no render session server in {folder} ({err.strerror})") from None
        self.reader = self.sock.makefile("rb")

    def send(self, message: dict[str, Any]) -> None:
        self.sock.sendall(json.dumps(message).encode() + b"\n")

    def messages(self) -> Iterator[dict[str, Any]]:
        for line in self.reader:
            yield json.loads(line)

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def ask(folder: Path, op: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """The server's answer to `ping` or `stop`: its pid, runs served and model loads."""
    connection = Connection(folder, timeout_s)
    try:
        connection.send({"op": op})
        for message in connection.messages():
            return message
    except OSError as err:
        raise SessionUnavailable(f"the render session server in {folder} did not answer ({err})") from None
    finally:
        connection.close()
    raise SessionUnavailable(f"the render session server in {folder} closed the connection without answering")


def run_in_session(folder: Path, request: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Hand a run to the server and pass on what it reports: {"todo", "name"} once the
    plan is made, {"frame"} per frame published, {"out"} text for stdout. Returns when
    it succeeded; raises its error (Relayed) when not. SIGTERM or Ctrl-C here asks the
    server to stop the run at a frame boundary (frames in flight finish whole); a
    client killed outright stops it the same way, as the server sees the socket close.
    Raises SessionUnavailable when no server answers, before anything is rendered."""
    connection = Connection(folder)
    asked_to_stop = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal asked_to_stop
        if not asked_to_stop:
            asked_to_stop = True
            with contextlib.suppress(OSError):   # the server is gone: the read below ends
                connection.send({"op": "stop"})

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        connection.send({"op": "run", **request})
        for message in connection.messages():
            if "exit" in message:
                if message["exit"]:
                    raise Relayed(message["error"], int(message["exit"]))
                return
            yield message
    except OSError as err:
        raise FramefarmError(f"lost the render session server in {folder} ({err}); see {folder / LOG_NAME}") from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        connection.close()
    raise FramefarmError(f"the render session server in {folder} stopped in the middle of the run (killed?); "
                         f"see {folder / LOG_NAME}. Frames it published are kept; rerun with --resume")


def start_server(folder: Path, *, idle_exit_s: float, timeout_s: float) -> str:
    """Start the server for `folder` in the background, detached from this process, and
    wait until it answers; a message saying so. One already serving is kept."""
    if not folder.is_dir():
        raise JobError("--dir", str(folder), "no such folder; give the session's working directory")
    socket_path(folder, "--dir")
    try:
        status = ask(folder, "ping")
        return f"a render session server already serves {folder} (pid {status['pid']})"
    except SessionUnavailable:
        pass
    log_path = folder / LOG_NAME
    with open(log_path, "ab") as log:
        # Its own session: the signals a runtime sends this action's process group
        # (a cancelled onEnter, Ctrl-C) are not meant for the server, which onExit stops.
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "session", "serve", "--dir", str(folder.resolve()),
             "--idle-exit", str(idle_exit_s)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise FramefarmError(f"the render session server exited with status {process.returncode} before it "
                                 f"was ready: {_last_line(log_path)} (log: {log_path})")
        try:
            status = ask(folder, "ping")
            return f"render session server pid {status['pid']} serves {folder} (log: {log_path})"
        except SessionUnavailable:
            time.sleep(0.1)
    process.kill()
    raise FramefarmError(f"the render session server was not ready after {timeout_s:.0f} s; "
                         f"stopped it (log: {log_path})")


def stop_server(folder: Path, *, timeout_s: float) -> str:
    """Ask the server to stop (a run in progress stops at a frame boundary) and wait until
    it has exited; killed if it has not within `timeout_s`. A message saying so."""
    socket_path(folder, "--dir")
    try:
        status = ask(folder, "stop")
    except SessionUnavailable as why:
        return f"nothing to stop: {why}"
    pid = int(status["pid"])
    deadline = time.monotonic() + timeout_s
    while _running(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)   # a frame it was writing stays a hidden temporary file, swept later
            return (f"the render session server pid {pid} did not stop within {timeout_s:.0f} s; killed it. "
                    "Its unfinished frames were not published; a resumed run renders them")
        time.sleep(0.1)
    return (f"render session server pid {pid} stopped after {status['runs']} run(s), "
            f"{status['model_loads']} model load(s)")


def _running(pid: int) -> bool:
    """Whether `pid` still runs; a zombie does not (the server is no child of ours, and
    not every init reaps at once)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:   # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def _last_line(path: Path) -> str:
    lines = path.read_text(errors="replace").strip().splitlines()
    return lines[-1] if lines else "(it wrote nothing)"
