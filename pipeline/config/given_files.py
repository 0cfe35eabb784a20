"""Files a person names (a key file, a job or trace file given to a report, a picture to
check): read only when they are regular files, and never more than a bound.

A FIFO would block the read forever and /dev/zero would fill memory; a directory is
named as one, not as "no such file". Errors are one-line `JobError`s naming the field
and the path, never the content.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from pipeline.errors import JobError


def not_a_regular_file(path: Path) -> str | None:
    """Why `path` cannot be read as a file, in a few words; None when it is a regular file
    (symlinks followed)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "no such file"
    except NotADirectoryError:
        return "no such file (a folder on its path is a file)"
    except OSError as err:
        return err.strerror or type(err).__name__
    return _kind_problem(mode)


def read_regular(path: Path, field: str, limit: int) -> bytes:
    """The bytes of the regular file `path`, at most `limit` of them; JobError otherwise."""
    problem = not_a_regular_file(path)
    if problem is not None:
        raise JobError(field, str(path), f"cannot be read: {problem}")
    try:
        # O_NONBLOCK: should the path become a FIFO after the check, open must not wait for a writer
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as err:
        raise JobError(field, str(path), f"cannot be read: {err.strerror or type(err).__name__}") from None
    try:
        problem = _kind_problem(os.fstat(fd).st_mode)   # what was opened, not what was checked
        if problem is not None:
            raise JobError(field, str(path), f"cannot be read: {problem}")
        data = _read_up_to(fd, limit + 1)
    except OSError as err:
        raise JobError(field, str(path), f"cannot be read: {err.strerror or type(err).__name__}") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise JobError(field, str(path), f"the file is over {_size(limit)}, the most {field} reads")
    return data


def _kind_problem(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a directory, not a file"
    return "is not a regular file (a FIFO, device or socket); give a file"


def _read_up_to(fd: int, count: int) -> bytes:
    chunks, left = [], count
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _size(limit: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if limit >= scale and limit % scale == 0:
            return f"{limit // scale} {unit}"
    return f"{limit} bytes"
