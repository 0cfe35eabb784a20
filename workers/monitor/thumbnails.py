"""The thumbnails the monitor shows for a job: those of its latest finished frames.

Which frames finished last, and where their files are, is what the manifest under the
job's output root records (one JSON line per published frame, newest last); each
frame's thumbnail lies beside it (pipeline/files/thumbnail.py). Only the manifest's tail
is read, so a job page polled every second costs the same at frame 10 and frame
100,000. Every path is resolved and must stay inside the output root: a manifest that
names a path outside it (edited, or a link in the folder) shows nothing from there.
A monitor on a host that does not see the output root simply shows no thumbnails.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pipeline.files.manifest import MANIFEST_NAME
from pipeline.files.thumbnail import thumbnail_path

TAIL_BYTES = 256 * 1024   # about 800 frame records: the latest frames of a shot are among them
SHOWN = 8                 # thumbnails on a job page


def _tail_records(root: Path) -> list[dict[str, Any]]:
    """The records in the last TAIL_BYTES of the manifest (the first, cut line dropped)."""
    try:
        with (root / MANIFEST_NAME).open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - TAIL_BYTES))
            data = handle.read()
    except OSError:   # no manifest yet, or the root is not mounted here
        return []
    lines = data.split(b"\n")
    if size > TAIL_BYTES:
        lines = lines[1:]
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue   # blank, torn or cut: the manifest's readers skip it too
        if isinstance(record, dict):
            records.append(record)
    return records


def _confined(root: Path, relative: Any) -> Path | None:
    """root/relative resolved, if it is a path inside root."""
    if not isinstance(relative, str) or "\0" in relative:
        return None
    path = (root / relative).resolve()
    return path if path.is_relative_to(root) else None


def latest_thumbnails(output_root: str, shot: str, count: int = SHOWN, *, frame: int | None = None
                      ) -> list[dict[str, Any]]:
    """{"frame", "time", "path"} of the `count` latest finished frames of `shot` that have a
    thumbnail (only `frame`, if given), newest first; "path" is the thumbnail's absolute
    path, inside the output root."""
    only = frame
    root = Path(output_root).resolve()
    latest: dict[int, dict[str, Any]] = {}
    for record in _tail_records(root):
        frame = record.get("frame")
        if record.get("kind") == "frame" and record.get("shot") == shot and isinstance(frame, int) \
                and not isinstance(frame, bool) and only in (None, frame):
            latest[frame] = record
    found: list[dict[str, Any]] = []
    for frame, record in sorted(latest.items(), key=lambda item: item[1].get("time") or 0, reverse=True):
        frame_file = _confined(root, record.get("path"))
        thumbnail = thumbnail_path(frame_file).resolve() if frame_file is not None else None
        if thumbnail is not None and thumbnail.is_relative_to(root) and thumbnail.is_file():
            found.append({"frame": frame, "time": record.get("time"), "path": thumbnail})
            if len(found) == count:
                break
    return found
