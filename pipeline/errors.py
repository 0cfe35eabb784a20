"""Every error framefarm reports, worded for the person who must act on it.

The CLI turns a `FramefarmError` into one line on stderr and its `exit_code`; nothing
else reaches the user as a traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


class FramefarmError(Exception):
    """Base class: `str(err)` is the one line the user sees."""

    exit_code = EXIT_FAILED


class JobError(FramefarmError):
    """Bad input: a job field, CLI option or file that cannot be used as given.

    Raised before anything is written, so a rejected job leaves no trace on disk.
    """

    exit_code = EXIT_BAD_INPUT

    def __init__(self, field: str, value: Any, allowed: str) -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"{field} = {_show(value)}: {allowed}")


class MissingField(JobError):
    def __init__(self, field: str, allowed: str) -> None:
        self.field = field
        self.value = None
        self.allowed = allowed
        FramefarmError.__init__(self, f"{field} is missing: {allowed}")


class StageFailed(FramefarmError):
    """A stage raised while working on a frame; the run was cancelled."""

    def __init__(self, stage: str, frame: int | None, cause: BaseException) -> None:
        self.stage = stage
        self.frame = frame
        self.cause = cause
        where = f"stage '{stage}'" + (f" on frame {frame}" if frame is not None else "")
        detail = f"{type(cause).__name__}: {cause}".rstrip(": ")
        super().__init__(
            f"{where} failed: {detail}. Finished frames are kept; rerun with --resume."
        )


class BadFrame(FramefarmError):
    """A frame decoded to something that is not a picture; it is not published."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what}; check the latents and the model's scaling_factor and shift_factor")


class PublishRefused(FramefarmError):
    """The caller's publish gate said no: the output is no longer this render's to publish."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} not published: the render was told to stop publishing "
                         "(a farm task cancelled, requeued or taken over)")


class RunInterrupted(FramefarmError):
    """Ctrl-C or SIGTERM stopped the run; in-flight files were finished or removed."""

    def __init__(self, signal_name: str, frames_done: int) -> None:
        self.signal_name = signal_name
        self.frames_done = frames_done
        self.exit_code = 143 if signal_name == "SIGTERM" else 130
        super().__init__(
            f"stopped by {signal_name} after {frames_done} finished frame(s); "
            "no partial file was left. Rerun with --resume to render the rest."
        )


class Relayed(FramefarmError):
    """An error another render process reported (a session's render server): its line
    and exit status, passed on as they were."""

    def __init__(self, message: str, exit_code: int) -> None:
        self.exit_code = exit_code
        super().__init__(message)


class TraceNotWritten(FramefarmError):
    """The run finished and its outputs are published, but its timeline (`--trace`)
    could not be written (a full disk, the folder removed meanwhile)."""

    def __init__(self, path: Any, cause: OSError) -> None:
        super().__init__(f"--trace {path}: the timeline could not be written ({cause.strerror or cause}); "
                         f"the frames are rendered and published, nothing else is lost")


class SessionUnavailable(FramefarmError):
    """No render server answers in a session folder (`render session start` did not run
    there, or it stopped)."""


class UnreadableInputs(FramefarmError):
    """Some of the files a command was given could not be read; each was reported on its
    own line, the others were still checked."""

    exit_code = EXIT_BAD_INPUT


class VerifyFailed(FramefarmError):
    """`render verify` found outputs that do not match their manifest records."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"{len(problems)} output(s) do not match the manifest")


def leaves(error: BaseException) -> Iterator[BaseException]:
    """The single exceptions inside (possibly nested) exception groups, in order."""
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            yield from leaves(inner)
    else:
        yield error


def describe(error: BaseException) -> str:
    """One line for a failure: our own errors as worded, anything else with its type."""
    if isinstance(error, BaseExceptionGroup):
        error = next(iter(leaves(error)), error)
    if isinstance(error, FramefarmError):
        return str(error)
    return f"{type(error).__name__}: {error}"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."
