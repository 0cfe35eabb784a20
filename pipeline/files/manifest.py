"""The manifest: one JSON line per published output, the basis of resume and verify.

Lines are appended with O_APPEND and fsynced after the file itself is durable, so a
record never names a file that is not whole. An append is whole or it fails: a write
that stops short (a full disk, a file-size limit) raises, and the next append starts
on a fresh line, so a torn record never swallows the one after it. Readers skip lines
that do not parse (the frame is simply rendered again); `verify` reports them, and
every output file under the root that no record names. Paths in records are relative
to the output root, so a render folder can be moved.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pipeline.files.publish import TEMP_SUFFIX, file_sha256
from pipeline.files.thumbnail import THUMBNAILS_DIR

MANIFEST_NAME = "manifest.jsonl"


class Manifest:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / MANIFEST_NAME
        self._lock = threading.RLock()

    def append(self, record: dict[str, Any]) -> None:
        """Append one record, durably; raises OSError if it could not be written whole."""
        line = (json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n").encode()
        with self._lock:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    line = b"\n" + line   # a torn record before this one: it stays a line of its own
                written = os.write(fd, line)
                if written != len(line):
                    raise OSError(f"manifest {self.path}: wrote {written} of {len(line)} bytes of a record "
                                  "(disk full or a file-size limit?)")
                os.fsync(fd)
            finally:
                os.close(fd)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Alone with the manifest: this thread, and any process of any run that asks the
        same (an flock on the file), so that publishing an output and recording it is one
        step; two runs on one root that publish the same file record it once."""
        with self._lock:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)   # releases the flock

    def record_unless_recorded(self, record: dict[str, Any], kept_existing: bool) -> bool:
        """Append `record` of a file just published, unless the file was already there
        with this content and a record of it exists (another writer published and
        recorded it first). Call inside `exclusive()`. Returns whether it appended."""
        if kept_existing and self.has(record["path"], record["sha256"]):
            return False
        self.append(record)
        return True

    def has(self, relative_path: str, sha256: str) -> bool:
        """Whether a record of this exact file exists (a rare check: it reads the file)."""
        return any(r["path"] == relative_path and r.get("sha256") == sha256 for r in read_records(self.root))


def read_records(root: Path) -> list[dict[str, Any]]:
    return _read(root)[0]


def _read(root: Path) -> tuple[list[dict[str, Any]], list[int]]:
    """The records, and the numbers of the lines that are not records (blank lines aside)."""
    path = root / MANIFEST_NAME
    if not path.is_file():
        return [], []
    records, bad = [], []
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                bad.append(number)
                continue
            if isinstance(record, dict) and isinstance(record.get("path"), str) and _file_name(record["path"]):
                records.append(record)
            elif not (isinstance(record, dict) and record.get("kind") == "run"):   # a run's figures: no file
                bad.append(number)
    return records, bad


def read_runs(root: Path) -> list[dict[str, Any]]:
    """The records of runs (kind "run": what each run measured and cost), oldest first."""
    path = root / MANIFEST_NAME
    if not path.is_file():
        return []
    runs = []
    with path.open("rb") as handle:
        for raw in handle:
            try:
                record = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(record, dict) and record.get("kind") == "run":
                runs.append(record)
    return runs


def _file_name(path: str) -> bool:
    """Whether a recorded path can name a file: no NUL, no lone surrogate (JSON allows both)."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\0" not in path


def latest_by_path(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    latest: dict[str, dict[str, Any]] = {}
    for record in records:
        latest[record["path"]] = record
    return latest


def check_record(root: Path, record: dict[str, Any]) -> str | None:
    """None when the file matches its record, else what is wrong, in a few words."""
    try:
        return _check_file(root, record)
    except (OSError, ValueError, RuntimeError) as err:
        # a name no file can have (too long, a lone surrogate), a symlink loop (RuntimeError
        # before Python 3.13), an unreadable file: a mismatch to report, not a crash
        reason = err.strerror if isinstance(err, OSError) and err.strerror else (
            "symlink loop" if isinstance(err, RuntimeError) else "not a valid file name")
        return f"cannot be checked: {reason}"


def _check_file(root: Path, record: dict[str, Any]) -> str | None:
    path = root / record["path"]
    if not path.resolve().is_relative_to(root.resolve()):
        return "path leaves the output root"
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if size != record.get("size"):
        return f"size {size} != recorded {record.get('size')}"
    if file_sha256(path) != record.get("sha256"):
        return "content hash differs from the record"
    return None


def _check_frame_count(path: Path, frames: Any) -> str | None:
    """A video (or segment) holds the frames its record says: its packets counted, one a
    frame, without decoding."""
    import av

    if not (isinstance(frames, list) and len(frames) == 2 and all(isinstance(f, int) for f in frames)):
        return "record has no frame range"
    try:
        with av.open(str(path)) as container:
            count = sum(1 for packet in container.demux(video=0) if packet.dts is not None)
    except (av.FFmpegError, IndexError) as err:
        return f"not a readable video: {err}"
    want = frames[1] - frames[0] + 1
    return None if count == want else f"{count} frames, the record says {want}"


def verify(root: Path) -> tuple[int, list[str]]:
    """Check every output's latest record; also report lines that are not records,
    output files no record names, and temporary files left behind."""
    records, bad = _read(root)
    latest = latest_by_path(records)
    problems = [f"{MANIFEST_NAME} line {number}: not a manifest record" for number in bad]
    for rel, record in sorted(latest.items()):
        problem = check_record(root, record)
        if problem is None and record.get("kind") in ("video", "segment"):
            problem = _check_frame_count(root / rel, record.get("frames"))
        if problem:
            problems.append(f"{rel}: {problem}")
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if THUMBNAILS_DIR in path.relative_to(root).parts[:-1]:
            continue   # views of frames for the monitor, not outputs (files/thumbnail.py)
        if path.name.endswith(TEMP_SUFFIX):
            problems.append(f"{rel}: unfinished temporary file")
        elif rel != MANIFEST_NAME and rel not in latest:
            problems.append(f"{rel}: no manifest record")
    return len(latest), problems
