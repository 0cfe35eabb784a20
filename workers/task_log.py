"""Each task's log, as `render monitor` shows it: the log lines emitted while a worker
works on the task (the worker's and the pipeline's, in the task's trio tasks and the
threads they start), kept bounded in memory and stored in the queue when the task
ends, after the logs of its earlier attempts; the queue keeps the last LOG_CHARS."""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Iterator
from contextvars import ContextVar

from .tasks import LOG_CHARS


class TaskLog:
    def __init__(self, header: str) -> None:
        self._lines: deque[str] = deque([header])
        self._chars = len(header) + 1

    def add(self, line: str) -> None:
        self._lines.append(line)
        self._chars += len(line) + 1
        while self._chars > LOG_CHARS and len(self._lines) > 1:
            self._chars -= len(self._lines.popleft()) + 1

    def text(self) -> str:
        return "".join(line + "\n" for line in self._lines)[-LOG_CHARS:]


_current: ContextVar[TaskLog | None] = ContextVar("framefarm_task_log", default=None)


class TaskLogHandler(logging.Handler):
    """Copies each record emitted in a task's context into that task's log."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        log = _current.get()
        if log is not None:
            log.add(self.format(record))


def install() -> None:
    """Once per worker process: the root logger feeds every task's log."""
    root = logging.getLogger()
    if not any(isinstance(handler, TaskLogHandler) for handler in root.handlers):
        root.addHandler(TaskLogHandler())


@contextlib.contextmanager
def capturing(header: str) -> Iterator[TaskLog]:
    """The log of the task run inside this block (and in what it starts from here)."""
    log = TaskLog(header)
    token = _current.set(log)
    try:
        yield log
    finally:
        _current.reset(token)
