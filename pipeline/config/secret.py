"""The watermark key, read from where a person keeps a secret: an environment variable or
a file (text in a job file travels in the farm's queue). Errors name the variable or the
file, never the key."""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.errors import JobError

MAX_KEY = 4096


def key_from_env(name: str, field: str) -> str:
    key = os.environ.get(name, "")
    if not key:
        raise JobError(field, name, "no such environment variable, or it is empty")
    return _checked(key, field)


def key_from_file(path: Path, field: str) -> str:
    try:
        key = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        raise JobError(field, str(path), f"cannot be read as a UTF-8 text file ({type(err).__name__})") from None
    if not key:
        raise JobError(field, str(path), "the file is empty")
    return _checked(key, field)


def _checked(key: str, field: str) -> str:
    if len(key) > MAX_KEY:
        raise JobError(field, "(not shown)", f"the key is over {MAX_KEY} characters")
    return key
