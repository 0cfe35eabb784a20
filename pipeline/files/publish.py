"""Atomic publishing: a file appears whole under its final name, or not at all.

Bytes go to a hidden temporary file in the destination folder, are fsynced, and are
linked into place. `os.link` fails when the name exists, which makes the first writer
win: a second writer with the same content hash drops its copy, and one with other
content (a changed job rendered again) replaces the file atomically. The folder is
fsynced so the new name survives a power cut.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import JobError

TEMP_SUFFIX = ".part"
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.part$")


@dataclass(frozen=True)
class Published:
    path: Path
    size: int
    sha256: str
    kept_existing: bool    # an identical file was already there (first writer won)


def temp_path(dest: Path) -> Path:
    return dest.parent / f".{dest.name}.{os.getpid()}.{os.urandom(4).hex()}{TEMP_SUFFIX}"


def publish_bytes(dest: Path, data: bytes | memoryview, *, then: Callable[[Published], None] | None = None,
                  lock: AbstractContextManager[Any] | None = None) -> Published:
    """Write `data` to a temporary file, fsync it, and move it into place; inside `lock`,
    the move and `then` (the manifest record) as one step."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(dest)
    try:
        with tmp.open("xb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        with lock or contextlib.nullcontext():
            published = commit(tmp, dest, hashlib.sha256(data).hexdigest(), len(data))
            if then is not None:
                then(published)
        return published
    except OSError as err:
        if failed_write(err, tmp):
            raise OSError(err.errno, err.strerror, str(dest)) from err
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def check_destination(dest: Path, field: str) -> None:
    """Refuse, before any work is done, a file name that a file cannot be published to:
    a directory, a FIFO or device (a rename would replace /dev/null), a folder that does
    not exist or cannot be written. A probe file is made and removed to find out."""
    try:
        mode: int | None = dest.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        mode = None
    except OSError as err:   # a name too long, a symlink loop
        raise JobError(field, str(dest), f"cannot be written there ({err.strerror or type(err).__name__})") from None
    if mode is not None and stat.S_ISDIR(mode):
        raise JobError(field, str(dest), "is a directory; give a file name")
    if mode is not None and not stat.S_ISREG(mode):
        raise JobError(field, str(dest), "is not a regular file (a FIFO, device or socket); give a file name")
    folder = dest.parent
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise JobError(field, str(dest), f"its folder {folder} {what}; give a file in an existing folder")
    probe = folder / f".{dest.name}.{os.getpid()}.{os.urandom(4).hex()}.probe"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        probe.unlink()
    except OSError as err:
        raise JobError(field, str(dest), f"cannot be written there ({err.strerror or type(err).__name__})") from None


def failed_write(err: OSError, tmp: Path) -> bool:
    """Whether `err` is a write to `tmp` that failed (a full disk): it is then reported
    naming the file being published, not its temporary file (hidden, and already
    removed by the time the message is read)."""
    return err.errno is not None and err.filename in (None, str(tmp))


def commit(tmp: Path, dest: Path, sha256: str, size: int) -> Published:
    """Move a finished, fsynced temporary file to `dest`; the caller removes `tmp` after."""
    try:
        os.link(tmp, dest)
        kept = False
    except FileExistsError:
        kept = file_sha256(dest) == sha256
        if not kept:
            os.replace(tmp, dest)
    fsync_dir(dest.parent)
    return Published(path=dest, size=size, sha256=sha256, kept_existing=kept)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_folders(folders: list[Path], made: list[Path]) -> None:
    """mkdir -p each folder, appending every folder it creates (outermost first) to `made`."""
    for folder in folders:
        missing = [p for p in (folder, *folder.parents) if not p.exists()][::-1]
        folder.mkdir(parents=True, exist_ok=True)
        made.extend(p for p in missing if p not in made)


def remove_empty_folders(made: list[Path]) -> None:
    """Undo make_folders where nothing was put in the folders (a run that failed or was
    interrupted before its first output): innermost first; a folder with anything in it stays."""
    for folder in reversed(made):
        with contextlib.suppress(OSError):
            folder.rmdir()


def sweep_stale_temps(folder: Path) -> int:
    """Remove temporary files left by processes of this host that no longer run (kill -9)."""
    removed = 0
    if not folder.is_dir():
        return 0
    for entry in folder.iterdir():
        match = _TEMP_NAME.match(entry.name)
        if match and not _alive(int(match["pid"])):
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
                removed += 1
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
