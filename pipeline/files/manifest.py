"""The manifest: one JSON line per published output, the basis of resume and verify.

Lines are appended with O_APPEND and fsynced after the file itself is durable, so a
record never names a file that is not whole. A crash mid-append can leave a torn last
line; readers skip lines that do not parse, and the frame is simply rendered again.
Paths in records are relative to the output root, so a render folder can be moved.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pipeline.files.publish import TEMP_SUFFIX, file_sha256

MANIFEST_NAME = "manifest.jsonl"


class Manifest:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / MANIFEST_NAME
        self._lock = threading.Lock()

    def append(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n").encode()
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)


    def has(self, relative_path: str, sha256: str) -> bool:
        """Whether a record of this exact file exists (a rare check: it reads the file)."""
        return any(r["path"] == relative_path and r.get("sha256") == sha256 for r in read_records(self.root))


def read_records(root: Path) -> list[dict[str, Any]]:
    path = root / MANIFEST_NAME
    if not path.is_file():
        return []
    records = []
    with path.open("rb") as handle:
        for raw in handle:
            try:
                record = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(record, dict) and isinstance(record.get("path"), str):
                records.append(record)
    return records


def latest_by_path(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    latest: dict[str, dict[str, Any]] = {}
    for record in records:
        latest[record["path"]] = record
    return latest


def check_record(root: Path, record: dict[str, Any]) -> str | None:
    """None when the file matches its record, else what is wrong, in a few words."""
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


def verify(root: Path) -> tuple[int, list[str]]:
    """Check every output's latest record; also report temporary files left behind."""
    latest = latest_by_path(read_records(root))
    problems = []
    for rel, record in sorted(latest.items()):
        problem = check_record(root, record)
        if problem:
            problems.append(f"{rel}: {problem}")
    for stray in sorted(root.rglob(f"*{TEMP_SUFFIX}")):
        problems.append(f"{stray.relative_to(root)}: unfinished temporary file")
    return len(latest), problems
